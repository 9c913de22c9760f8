"""The worker's batch logic of an earlier commit against this checkout's, on the same frames.

Checks the earlier commit out into a temporary git worktree and runs the same measurement in
a fresh process for each tree, alternately (rounds), so a busy machine slows both alike:
`process_batch` over the stream bench's frames (`bench/stream_frames.py`) in batches of 16
with the trained demo bundle, gate on and gate off (`detect_all`). Reported per tree and
round: images/s, CPU ms per image, and ms per image in each stage.

Usage: python bench/stream_before_after.py [--rev 2caa96e] [--rounds 2] [--images 160]
       [--bundle DIR]   (default: the trained demo bundle under runs/demo/bundle/)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO_ROOT / "runs" / "demo" / "bundle" / "snowtrap-leopard-demo"
BATCH = 16


def measure(tree: Path, bundle_dir: Path, images: int) -> dict[str, dict[str, float]]:
    """In this process: import snowtrap from `tree` (not the editable install) and time it."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, str(tree))
    for name in [m for m in sys.modules if m.startswith("snowtrap")]:
        del sys.modules[name]
    import snowtrap.stream.worker.pipeline as pipeline

    assert Path(pipeline.__file__).is_relative_to(tree), pipeline.__file__
    sys.path.insert(1, str(REPO_ROOT))  # this checkout's bench frames (files only)
    from bench.stream_frames import bench_frames
    from snowtrap.models.bundle import load_bundle
    from snowtrap.stream.contracts import TrapImage, build_image_message, image_id_of
    from snowtrap.stream.topics import TopicNames
    from snowtrap.stream.worker.batch_types import InboundMessage, SourceRef
    from snowtrap.stream.worker.cli import pipeline_config
    from snowtrap.stream.worker.settings import WorkerSettings

    bundle = load_bundle(bundle_dir)
    messages = []
    for offset, frame in enumerate(bench_frames(images, 1280, 960, 0.1, 0.25, 1).frames):
        image = TrapImage(
            image_id_of(frame.jpeg), "bench", "bench", frame.path.name, "image/jpeg", None,
            time.time(), frame.jpeg,
        )  # fmt: skip
        key, value, headers = build_image_message(image)
        messages.append(InboundMessage(key, value, dict(headers), SourceRef("bench", 0, offset)))

    def no_claim_checks(uri: str) -> bytes:
        raise RuntimeError("no claim checks here")

    out: dict[str, dict[str, float]] = {}
    for name, extra in (("gate on", {}), ("gate off", {"detect_all": True})):
        settings = WorkerSettings(bundle_dir=bundle_dir, topics=TopicNames(), **extra)
        config = pipeline_config(settings, bundle.manifest)
        pipeline.process_batch(messages[:BATCH], bundle, config, no_claim_checks)  # warm up
        stages: dict[str, float] = {}
        began, began_cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(messages), BATCH):
            batch = pipeline.process_batch(
                messages[start : start + BATCH], bundle, config, no_claim_checks
            )
            for stage, seconds in batch.stage_seconds.items():
                stages[stage] = stages.get(stage, 0.0) + seconds
        count = len(messages)
        out[name] = {
            "images/s": count / (time.perf_counter() - began),
            "CPU ms": (time.process_time() - began_cpu) * 1000 / count,
            **{f"{stage} ms": seconds * 1000 / count for stage, seconds in stages.items()},
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", default="2caa96e", help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.bundle.resolve(), args.images)))
        return 0
    if not (args.bundle / "manifest.json").is_file():
        print(
            f"no bundle at {args.bundle}: run `snowtrap train configs/demo.yaml`", file=sys.stderr
        )
        return 2

    sys.path.insert(0, str(REPO_ROOT))
    from rich.console import Console
    from rich.table import Table

    from bench.machine import machine_line

    console = Console(width=130)
    with tempfile.TemporaryDirectory(prefix="snowtrap-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.rev],
            cwd=REPO_ROOT, check=True, capture_output=True,
        )  # fmt: skip
        try:
            rows = []
            for round_number in range(1, args.rounds + 1):
                for label, tree in ((f"{args.rev}", before), ("this checkout", REPO_ROOT)):
                    console.print(f"round {round_number}: {label} ...")
                    child = subprocess.run(
                        [sys.executable, __file__, "--measure", str(tree),
                         "--images", str(args.images), "--bundle", str(args.bundle)],
                        check=True, capture_output=True, text=True, cwd=tmp,
                    )  # fmt: skip
                    rows.append((round_number, label, json.loads(child.stdout.splitlines()[-1])))
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)],
                cwd=REPO_ROOT, check=False, capture_output=True,
            )  # fmt: skip

    table = Table(title=f"worker batch logic: {args.rev} vs this checkout ({args.images} frames)")
    for column in ("round", "tree", "mode", "images/s", "CPU ms/image", "decode", "classify",
                   "detect", "crop"):  # fmt: skip
        table.add_column(column, justify="right")
    for round_number, label, result in rows:
        for mode, figures in result.items():
            table.add_row(
                str(round_number), label, mode,
                f"{figures['images/s']:.1f}", f"{figures['CPU ms']:.1f}",
                *(f"{figures.get(f'{stage} ms', 0.0):.1f}"
                  for stage in ("decode", "classify", "detect", "crop")),
            )  # fmt: skip
    console.print(table)
    console.print(f"bundle {args.bundle}; {machine_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
