"""The stream bench's one table: machine, inputs, every scenario, ratios, stage costs, and the
acceptance lines of issue #24 (met or not, with the figure)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from bench.machine import describe_machine
from bench.stream_frames import FrameSet
from bench.stream_runs import STAGES, ScenarioResult

WORKER_SATURATION_BAR = 60.0
END_TO_END_BAR = 45.0
P99_BAR_MS = 250.0
GATE_GAIN_BAR = 3.0


def _by_prefix(results: list[ScenarioResult], prefix: str) -> ScenarioResult | None:
    return next((r for r in results if r.scenario.name.startswith(prefix)), None)


def _ratio(top: ScenarioResult | None, bottom: ScenarioResult | None) -> float | None:
    if top is None or bottom is None or not bottom.rate:
        return None
    return top.rate / bottom.rate


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def print_report(
    console: Any,
    results: list[ScenarioResult],
    *,
    frame_set: FrameSet,
    args: argparse.Namespace,
    bundle: Path,
    bundle_source: str,
    broker: str,
    seconds: float,
) -> None:
    import onnxruntime
    import PIL
    from rich.markup import escape
    from rich.table import Table

    manifest = json.loads((bundle / "manifest.json").read_text())
    table = Table(title="snowtrap stream speed (trap.images -> worker -> trap.detections)")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    machine = describe_machine(onnxruntime=onnxruntime.__version__, Pillow=PIL.__version__)
    for name, value in machine.items():
        table.add_row(name, value)
    table.add_section()
    table.add_row("broker", broker)
    table.add_row("bundle", f"{manifest.get('name')} {manifest.get('version')}: {bundle_source}")
    table.add_row("bundle path", str(bundle))
    frames = frame_set.frames
    table.add_row(
        "frames",
        f"{len(frames)} x {args.width}x{args.height} JPEG (training.synthetic), "
        f"{frame_set.megabytes / len(frames):.2f} MB each, "
        f"{'cached' if frame_set.cached else 'rendered'}",
    )
    table.add_row(
        "leopard frames (truth) / night rate",
        f"{frame_set.leopard_frames} ({frame_set.leopard_frames / len(frames):.0%}) / "
        f"{args.night_rate:.2f}",
    )
    table.add_row("worker batch size / images partitions", "16 / 2")

    for result in results:
        s = result.scenario
        table.add_section()
        table.add_row(escape(s.name), f"{result.images} outcomes, {result.deadletters} dead")
        table.add_row("  throughput (steady state)", f"{result.rate:.1f} images/s")
        if s.feed == "uploader":
            table.add_row(
                "  end to end (first send -> last visible)",
                f"{result.end_to_end_rate:.1f} images/s",
            )
        if s.feed == "steady":
            table.add_row("  sent at", f"{result.sent_rate:.1f} images/s")
        table.add_row(
            "  latency p50 / p95 / p99",
            " / ".join(f"{result.latency_s(q) * 1000:.0f}" for q in (50, 95, 99)) + " ms",
        )
        crops_per_s = result.crops / result.images * result.rate if result.images else 0.0
        table.add_row(
            "  leopard outcomes / detector runs / crops",
            f"{result.leopard_outcomes} / {result.detector_runs} / {result.crops} "
            f"({crops_per_s:.1f} crops/s)",
        )
        cores = os.cpu_count() or 1
        cpu_ms = result.cpu_ms_per_image
        table.add_row(
            f"  worker CPU per image (-> ceiling on {cores} free cores)",
            f"{cpu_ms:.1f} ms ({cores * 1000 / cpu_ms:.0f} images/s)",
        )
        stages = result.stage_ms_per_image()
        table.add_row(
            "  worker ms per image: " + " / ".join(k for k in STAGES if k in stages),
            " / ".join(f"{stages[k]:.1f}" for k in STAGES if k in stages)
            + f" (mean batch {result.mean_batch:.1f})",
        )

    gate_on = _by_prefix(results, "1 worker, gate on")
    gate_off = _by_prefix(results, "1 worker, gate off")
    before = _by_prefix(results, "1 worker, decode before")
    two = _by_prefix(results, "2 workers")
    steady = _by_prefix(results, "steady")
    end_to_end = _by_prefix(results, "end to end")
    gate_gain = _ratio(gate_on, gate_off)
    table.add_section()
    for label, value in (
        ("gate on / gate off (detect_all)", gate_gain),
        ("decode now / decode before #24", _ratio(gate_on, before)),
        ("2 workers / 1 worker", _ratio(two, gate_on)),
    ):
        table.add_row(label, "-" if value is None else f"{value:.2f}x")
    if gate_on is not None:
        found = gate_on.leopard_outcomes
        table.add_row(
            "detector found leopards",
            f"{'yes' if found else 'NO'}: {found} leopard outcomes for "
            f"{frame_set.leopard_frames} leopard frames",
        )

    table.add_section()
    checks = [
        (
            f"worker saturation >= {WORKER_SATURATION_BAR:.0f} images/s",
            gate_on and gate_on.rate,
            lambda v: v >= WORKER_SATURATION_BAR,
            "{:.1f} images/s",
        ),
        (
            f"end to end with the uploader >= {END_TO_END_BAR:.0f} images/s",
            end_to_end and end_to_end.end_to_end_rate,
            lambda v: v >= END_TO_END_BAR,
            "{:.1f} images/s",
        ),
        (
            f"p99 latency at 50% load <= {P99_BAR_MS:.0f} ms",
            steady and steady.latency_s(99) * 1000,
            lambda v: v <= P99_BAR_MS,
            "{:.0f} ms",
        ),
        (
            f"gate gain >= {GATE_GAIN_BAR:.0f}x",
            gate_gain,
            lambda v: v >= GATE_GAIN_BAR,
            "{:.2f}x",
        ),
    ]
    for label, value, passes, fmt in checks:
        if value is None or value is False:
            table.add_row(label, "not measured")
        else:
            table.add_row(label, f"{fmt.format(value)}: {_verdict(passes(value))}")
    table.add_row("bench wall time", f"{seconds:.0f} s")
    console.print(table)
