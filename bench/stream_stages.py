"""The worker's batch logic alone (no Kafka): what each stage costs, before and after #24.

Runs `stream.worker.pipeline.process_batch` in batches of 16 over the stream bench's frames
(`bench/stream_frames.py`) with the bundle the worker would serve, for several pipeline
configurations, interleaved and repeated so a busy machine slows them all alike. Reported per
configuration: images/s (wall), CPU ms per image (all threads of this process: what decides
throughput on a machine of its own), and milliseconds per image in each stage.

Usage: python bench/stream_stages.py [--images 160] [--bundle DIR|test] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from bench.machine import describe_machine  # noqa: E402
from bench.stream_frames import BenchFrame, bench_frames  # noqa: E402
from bench.stream_kafka import image_message  # noqa: E402
from bench.stream_runs import STAGES  # noqa: E402
from snowtrap.models.bundle import ModelBundle  # noqa: E402
from snowtrap.stream.worker.batch_types import (  # noqa: E402
    CLASSIFIER_DECODE_COVER,
    InboundMessage,
    PipelineConfig,
    SourceRef,
)

BATCH = 16
VARIANTS: dict[str, dict[str, object]] = {
    "decode before #24 (analysis size, 1 thread)": {
        "decode_for_classifier": False,
        "decode_threads": 1,
    },
    "now (gate on)": {},
    "now, gate off (detect_all)": {"detect_all": True},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--leopard-rate", type=float, default=0.1)
    parser.add_argument("--bundle", default=None, help="bundle directory, or 'test'")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.chdir(REPO_ROOT)

    from rich.console import Console
    from rich.table import Table

    from bench.stream_throughput import resolve_bundle
    from snowtrap.models.bundle import load_bundle
    from snowtrap.stream.topics import TopicNames
    from snowtrap.stream.worker.cli import pipeline_config
    from snowtrap.stream.worker.pipeline import process_batch
    from snowtrap.stream.worker.settings import WorkerSettings

    console = Console(width=130)
    bundle_dir, bundle_source = resolve_bundle(args.bundle, console)
    bundle = load_bundle(bundle_dir)
    frame_set = bench_frames(args.images, args.width, args.height, args.leopard_rate, 0.25, 1)
    messages = [
        InboundMessage(*image_message(frame, time.time()), SourceRef("bench", 0, i))
        for i, frame in enumerate(frame_set.frames)
    ]
    configs = {
        name: pipeline_config(
            WorkerSettings(bundle_dir=bundle_dir, topics=TopicNames(), **overrides),
            bundle.manifest,
        )
        for name, overrides in VARIANTS.items()
    }

    def no_claim_checks(uri: str) -> bytes:
        raise RuntimeError("no claim checks in this bench")

    process_batch(messages[:BATCH], bundle, configs["now (gate on)"], no_claim_checks)  # warm
    wall: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    stage_s: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    outcomes: dict[str, tuple[int, int, int]] = {}
    for repeat in range(args.repeats):
        for name, config in configs.items():
            console.print(f"repeat {repeat + 1}/{args.repeats}: {name}")
            leopards = detector_runs = crops = 0
            began, began_cpu = time.perf_counter(), time.process_time()
            for start in range(0, len(messages), BATCH):
                batch = process_batch(
                    messages[start : start + BATCH], bundle, config, no_claim_checks
                )
                for stage, seconds in batch.stage_seconds.items():
                    stage_s[name][stage] += seconds
                for result in batch.results:
                    leopards += result.outcome == "leopard"
                    crops += len(result.crops)
                    detector_runs += bool(result.record and result.record.detector_ran)
            wall[name].append(time.perf_counter() - began)
            cpu[name].append(time.process_time() - began_cpu)
            outcomes[name] = (leopards, detector_runs, crops)

    count = len(messages)
    table = Table(title="worker batch logic alone (stream.worker.pipeline.process_batch)")
    table.add_column("configuration", style="bold")
    table.add_column("images/s", justify="right")
    table.add_column("CPU ms/image", justify="right")
    for stage in STAGES[:-1]:
        table.add_column(f"{stage} ms/img", justify="right")
    table.add_column("leopards / detector runs / crops", justify="right")
    for name in configs:
        seconds = statistics.median(wall[name])
        per_stage = {k: v * 1000 / (count * args.repeats) for k, v in stage_s[name].items()}
        table.add_row(
            name,
            f"{count / seconds:.1f}",
            f"{statistics.median(cpu[name]) * 1000 / count:.1f}",
            *(f"{per_stage.get(stage, 0.0):.1f}" for stage in STAGES[:-1]),
            " / ".join(str(v) for v in outcomes[name]),
        )
    console.print(table)
    names = list(configs)
    base, now, gate_off = (statistics.median(wall[n]) for n in names)
    console.print(
        f"now / before: {base / now:.2f}x   gate on / gate off: {gate_off / now:.2f}x   "
        f"bundle: {bundle.manifest.name} {bundle.manifest.version} ({bundle_source}); "
        f"frames: {count} x {args.width}x{args.height}, {frame_set.leopard_frames} with leopards; "
        f"ONNX Runtime threads: default (the CPUs usable); repeats: {args.repeats}"
    )
    console.print(score_drift(bundle, frame_set.frames, configs["now (gate on)"]))
    console.print("; ".join(f"{k} {v}" for k, v in describe_machine().items()))
    return 0


def score_drift(bundle: ModelBundle, frames: list[BenchFrame], config: PipelineConfig) -> str:
    """How far the classifier's scores move with each decode, against a full decode."""
    import numpy as np

    from snowtrap.models.decode import decode_trap_image

    def scores(**size: object) -> np.ndarray:
        rgbs = [decode_trap_image(frame.jpeg, **size).rgb for frame in frames]  # type: ignore[arg-type]
        batches = [bundle.classify(rgbs[i : i + BATCH]) for i in range(0, len(rgbs), BATCH)]
        return np.concatenate(batches)

    full = scores()
    assert config.classifier_size is not None
    width, height = config.classifier_size
    now = scores(min_size=(width * CLASSIFIER_DECODE_COVER, height * CLASSIFIER_DECODE_COVER))
    before = scores(max_side=config.analysis_max_side)
    gate = config.gate_threshold
    parts = []
    for name, served in (("now (first decode)", now), ("before #24", before)):
        flips = int(np.sum((served >= gate) != (full >= gate)))
        parts.append(
            f"{name}: mean |score - full decode| {np.mean(np.abs(served - full)):.4f}, "
            f"max {np.max(np.abs(served - full)):.3f}, gate decisions changed {flips}"
        )
    return "classifier scores vs a full-resolution decode: " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
