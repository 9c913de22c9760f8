"""Individual re-identification on the synthetic survey: rank-1/rank-5, open set, query time.

    .venv/bin/python bench/reid_eval.py [--known 30] [--unknown 10] [--images 400]
                                        [--enroll 2] [--db-chips 1000] [--seed 7]

1. A synthetic survey (`training.synthetic.write_dataset`: trap JPEGs + COCO Camera Traps
   JSON) where every burst shows snow leopards: `--known` individuals to enroll and
   `--unknown` ones that are never enrolled. Day and night (IR) frames, several cameras,
   random poses (facing left or right), scales and partial occlusion.
2. Chips are cut from the JPEGs by the annotation boxes plus the worker's 15 % margin.
3. Each known individual gets `--enroll` chips, each from a different burst; every chip from
   the *other* bursts is a query (a query never shares a burst with an enrolled chip).
4. The database is padded with chips of extra individuals (rendered frames) until it holds at
   least `--db-chips` chips, so query time and rank are measured against a realistic size.
5. Known queries: rank-1 (decision `known` with the right individual first) and rank-5 (the
   right individual among the top 5). Unknown queries: share flagged `new_candidate`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine_line
from snowtrap.models.reid.matching import (
    DEFAULT_CONFIG,
    Decision,
    extract_features,
    match_image,
)
from snowtrap.stream.matcher.database import IndividualDB
from snowtrap.training.synthetic import AnimalSpec, FrameSpec, render_trap_frame, write_dataset

MARGIN = 0.15


def cut(rgb: np.ndarray, box: list[float] | tuple[int, ...], margin: float = MARGIN) -> np.ndarray:
    x, y, w, h = (float(v) for v in box)
    mx, my = margin * w, margin * h
    height, width = rgb.shape[:2]
    x0, y0 = max(0, int(x - mx)), max(0, int(y - my))
    x1, y1 = min(width, int(np.ceil(x + w + mx))), min(height, int(np.ceil(y + h + my)))
    return rgb[y0:y1, x0:x1]


def survey_chips(folder: Path, args: argparse.Namespace) -> list[dict]:
    known = [f"SL-{i:03d}" for i in range(args.known)]
    unknown = [f"UN-{i:03d}" for i in range(args.unknown)]
    dataset = write_dataset(
        folder,
        args.images,
        args.seed,
        individuals=known + unknown,
        n_cameras=8,
        empty_fraction=0.0,
        leopard_fraction=1.0,
        pair_fraction=0.1,
        max_burst=2,
        night_fraction=0.35,
    )
    document = json.loads(dataset.annotations_path.read_text())
    images = {image["id"]: image for image in document["images"]}
    chips = []
    for entry in document["annotations"]:
        if "individual_id" not in entry or entry.get("visible_fraction", 1.0) < 0.3:
            continue
        image = images[entry["image_id"]]
        bgr = cv2.imread(str(folder / image["file_name"]))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        chips.append(
            {
                "individual": entry["individual_id"],
                "known": entry["individual_id"] in known,
                "sequence": image["seq_id"],
                "camera": image["location"],
                "night": image["night"],
                "flipped": entry.get("flipped", False),
                "crop": cut(rgb, entry["bbox"]),
            }
        )
    return chips


def padding_chips(count: int, seed: int):
    """`count` chips of extra individuals (two chips each, different frames)."""
    for i in range(count):
        individual = f"PAD-{i // 2:04d}"
        spec = FrameSpec(
            camera_id=f"P{(i * 7) % 13:02d}",
            sequence_seed=seed * 100_003 + i,
            night=i % 3 == 0,
            animals=(AnimalSpec("snow_leopard", individual),),
        )
        frame = render_trap_frame(spec)
        yield individual, cut(frame.rgb, frame.animals[0].box)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--known", type=int, default=30)
    parser.add_argument("--unknown", type=int, default=10)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--enroll", type=int, default=2, help="chips enrolled per individual")
    parser.add_argument("--db-chips", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    console = Console(width=max(120, Console().width))
    config = DEFAULT_CONFIG

    with tempfile.TemporaryDirectory(prefix="reid-eval-") as tmp:
        work = args.work_dir or Path(tmp)
        started = time.perf_counter()
        chips = survey_chips(work / "survey", args)
        synth_s = time.perf_counter() - started

        by_individual: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, chip in enumerate(chips):
            by_individual[chip["individual"]][chip["sequence"]].append(i)
        enrolled: set[int] = set()
        enrolled_sequences: set[str] = set()
        db = IndividualDB(work / "individuals.sqlite")
        started = time.perf_counter()
        for individual, sequences in sorted(by_individual.items()):
            if not individual.startswith("SL-"):
                continue
            picks = [members[0] for members in list(sequences.values())[: args.enroll]]
            features = [extract_features(chips[i]["crop"], config) for i in picks]
            db.enroll(individual, features, [f"survey#{i}" for i in picks], config)
            enrolled.update(picks)
            enrolled_sequences.update(chips[i]["sequence"] for i in picks)
        missing = max(0, args.db_chips - db.chip_count())
        pad_by_id: dict[str, list] = defaultdict(list)
        for individual, crop in padding_chips(missing, args.seed):
            pad_by_id[individual].append(extract_features(crop, config))
        for individual, features in pad_by_id.items():
            db.enroll(individual, features, ["padding"] * len(features), config)
        enroll_s = time.perf_counter() - started
        started = time.perf_counter()
        index = db.build_index(config)
        index_s = time.perf_counter() - started

        known_rows, unknown_rows, times = [], [], []
        for i, chip in enumerate(chips):
            if i in enrolled or (chip["sequence"] in enrolled_sequences and chip["known"]):
                continue
            result = match_image(chip["crop"], index, config)
            times.append(result.seconds)
            ids = [c.individual_id for c in result.candidates]
            row = {**chip, "decision": result.decision, "ids": ids, "score": result.top_score}
            (known_rows if chip["known"] else unknown_rows).append(row)

    def share(rows: list[dict], test) -> float:
        return sum(1 for r in rows if test(r)) / max(1, len(rows))

    def rank1(r: dict) -> bool:
        return r["decision"] is Decision.KNOWN and r["ids"][:1] == [r["individual"]]

    def rank5(r: dict) -> bool:
        return r["individual"] in r["ids"][:5]

    def flagged_new(r: dict) -> bool:
        return r["decision"] is not Decision.KNOWN

    table = Table(title="snowtrap re-identification on synthetic individuals")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row("database: chips / individuals / descriptors",
                  f"{db.chip_count()} / {len(db.individual_ids())} / {index.n_descriptors}",
                  ">= 1000 chips")  # fmt: skip
    table.add_row("known individuals, chips enrolled each", f"{args.known}, {args.enroll}", "")
    table.add_row("known queries (day / night / flipped)",
                  f"{len(known_rows)} ({sum(not r['night'] for r in known_rows)} / "
                  f"{sum(r['night'] for r in known_rows)} / "
                  f"{sum(r['flipped'] for r in known_rows)})", "")  # fmt: skip
    table.add_row("rank-1 (decision known, right individual first)",
                  f"{share(known_rows, rank1):.3f}", ">= 0.90")  # fmt: skip
    table.add_row("  rank-1 day / night",
                  f"{share([r for r in known_rows if not r['night']], rank1):.3f} / "
                  f"{share([r for r in known_rows if r['night']], rank1):.3f}", "")  # fmt: skip
    table.add_row("rank-5", f"{share(known_rows, rank5):.3f}", "")
    table.add_row("known queries wrongly flagged new", f"{share(known_rows, flagged_new):.3f}", "")
    table.add_row(f"unknown queries ({args.unknown} individuals, {len(unknown_rows)} chips) "
                  "flagged new", f"{share(unknown_rows, flagged_new):.3f}", ">= 0.80")  # fmt: skip
    table.add_row("median / mean query time",
                  f"{statistics.median(times):.3f} s / {statistics.mean(times):.3f} s",
                  "median <= 0.5 s")  # fmt: skip
    table.add_row("p95 query time", f"{float(np.percentile(times, 95)):.3f} s", "")
    table.add_row("synthesis / enrolment / index build",
                  f"{synth_s:.0f} s / {enroll_s:.0f} s / {index_s:.1f} s", "")  # fmt: skip
    table.add_row("matcher", config.version, "")
    table.add_row("machine", machine_line(OpenCV=cv2.__version__, numpy=np.__version__), "")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
