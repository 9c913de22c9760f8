"""LIME's per-group boxes on frames with two or more leopards: how often both are found.

The acceptance bar (both animals found in >= 60% of two-animal frames) is judged on a run's
12 or so held-out two-animal frames, too few to tune on. This bench synthesises a fresh survey
(its own seed, most frames with leopards, half of those with two), explains its multi-animal
frames with a finished run's classifier and explain settings (or `--set KEY=VALUE` changes to
them), and prints the share found, the box IoUs and, for every animal missed, why
(`training.evaluate.miss_reasons`: one box over two animals, a fragment, a box too big, one
offset, or no box at all). It also explains `--singles` single-leopard frames of the survey and
counts the stray boxes (mostly off every animal, `training.evaluate.stray_boxes`) on both kinds
of frame: a change that finds more second animals by boxing more rock is no gain, as the
detector learns from every box. A contact sheet of the frames with a miss is written next to the
survey: truth in green, LIME's boxes in red, the refined crops in yellow.

Usage: python bench/lime_two_animals.py [--run runs/synthetic] [--seed 8] [--images 150]
       [--singles 20] [--set search_rounds=1 --set positive_share=0.6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine_line
from bench.run_inputs import missing_run_inputs, run_explain_config
from snowtrap.training.classify import read_coco_camera_traps
from snowtrap.training.drawing import draw_boxes
from snowtrap.training.evaluate import enclosing_box, matched_ious, miss_reasons, stray_boxes
from snowtrap.training.image_files import read_rgb
from snowtrap.training.lime import LimeSettings
from snowtrap.training.lime_dataset import LimeJob, explain_dataset
from snowtrap.training.synthetic import write_dataset

TRUTH, LIME, REGION = (0, 220, 0), (230, 30, 30), (240, 220, 0)


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """`KEY=VALUE` pairs (VALUE as JSON) for `LimeSettings` fields; unknown keys are errors."""
    known = {f.name for f in fields(LimeSettings)}
    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        overrides[key] = json.loads(value)
    return overrides


def contact_sheet(frames: list, records: list[dict], path: Path, columns: int = 3) -> None:
    """The frames side by side, each with truth, LIME's boxes and the refined crops drawn."""
    tiles = []
    for frame, record in zip(frames, records, strict=True):
        image = Image.fromarray(read_rgb(frame.path))
        image = draw_boxes(image, np.asarray(record["regions"]).reshape(-1, 4), REGION, 1)
        image = draw_boxes(image, np.asarray(frame.boxes), TRUTH, 3)
        image = draw_boxes(image, np.asarray(record["group_boxes"]).reshape(-1, 4), LIME, 2)
        tiles.append(image.resize((480, 360)))
    if not tiles:
        return
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (480 * columns, 360 * rows))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * 480, (i // columns) * 360))
    sheet.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/synthetic"))
    parser.add_argument("--seed", type=int, default=8, help="the survey's seed (not a run's)")
    parser.add_argument("--images", type=int, default=150, help="frames in the survey")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN/../two-animals-SEED")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--singles", type=int, default=20, help="single-leopard frames explained for stray boxes"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    classifier = args.run / "classify" / "classifier.onnx"
    config_path = args.run / "config.json"
    if missing_run_inputs({str(classifier): classifier, str(config_path): config_path}):
        return 2
    explain = run_explain_config(args.run)
    assert explain is not None  # config.json exists
    settings = replace(explain.lime_settings(), **parse_overrides(args.overrides))

    out = args.out or args.run.parent / f"two-animals-{args.seed}"
    annotations = out / "annotations.json"
    if not annotations.is_file():
        write_dataset(
            out, args.images, args.seed, progress=True, leopard_fraction=0.9, pair_fraction=0.5
        )
    leopards = [
        f for f in read_coco_camera_traps(annotations) if f.label == 1 and f.boxes is not None
    ]
    frames = [f for f in leopards if len(f.boxes) >= 2]
    singles = [f for f in leopards if len(f.boxes) == 1][: args.singles]
    started = time.perf_counter()
    all_records = explain_dataset(
        [LimeJob(i, str(f.path)) for i, f in enumerate(frames + singles)],
        classifier,
        settings,
        workers=args.workers,
    )
    wall = time.perf_counter() - started
    records, single_records = all_records[: len(frames)], all_records[len(frames) :]

    scored = list(zip(frames, records, strict=True))
    pairs = [(f, r) for f, r in scored if len(f.boxes) == 2]
    # One verdict per animal; a frame's both are found when every verdict is "found".
    verdicts = [miss_reasons(np.asarray(r["group_boxes"]), f.boxes) for f, r in pairs]
    missed = [pair for pair, v in zip(pairs, verdicts, strict=True) if set(v) != {"found"}]
    both = len(pairs) - len(missed)
    reasons = Counter(reason for v in verdicts for reason in v if reason != "found")
    group_ious = np.concatenate(
        [matched_ious(np.asarray(r["group_boxes"]), f.boxes) for f, r in scored]
    )
    single_ious = [
        0.0
        if r["single_box"] is None
        else float(matched_ious(np.asarray(r["single_box"]), enclosing_box(f.boxes))[0])
        for f, r in scored
    ]
    strays = {
        kind: [stray_boxes(np.asarray(r["group_boxes"]), f.boxes) for f, r in kind_pairs]
        for kind, kind_pairs in (
            ("two", pairs),
            ("single", list(zip(singles, single_records, strict=True))),
        )
    }
    sheet = out / "misses.png"
    contact_sheet([f for f, _ in missed], [r for _, r in missed], sheet)

    print("## LIME per-group boxes on multi-animal frames\n")
    print(f"machine: {machine_line()}")
    print(
        f"survey: {out} (seed {args.seed}, {args.images} frames); {len(frames)} frames with 2+ "
        f"leopards, {len(pairs)} with exactly two; classifier {classifier}; explain settings "
        f"of {config_path}"
        + (f" with {', '.join(args.overrides)}" if args.overrides else "")
        + f"; {len(singles)} single-leopard frames for stray boxes"
    )
    explained = len(frames) + len(singles)
    print(f"workers {args.workers}; wall {wall:.0f} s ({wall / max(explained, 1):.2f} s/frame)\n")
    print(
        "| both found (two-animal frames) | single-box IoU | per-group IoU | share IoU >= 0.5 "
        "| stray boxes: two-animal frames | single-leopard frames |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")

    def stray_cell(counts: list[int]) -> str:
        frames_with = sum(c > 0 for c in counts)
        return f"{sum(counts)} ({frames_with} of {len(counts)} frames)"

    print(
        f"| {both}/{len(pairs)} = {both / max(len(pairs), 1):.2f} | {np.mean(single_ious):.3f} "
        f"| {group_ious.mean():.3f} | {np.mean(group_ious >= 0.5):.2f} "
        f"| {stray_cell(strays['two'])} | {stray_cell(strays['single'])} |"
    )
    print(f"\nanimals missed in two-animal frames ({sum(reasons.values())} of {2 * len(pairs)}):")
    for reason, count in reasons.most_common():
        print(f"- {reason}: {count}")
    print(f"\nframes with a miss: {sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
