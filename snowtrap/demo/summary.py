"""What the worker found: the console table, the numbers tests read, and the report."""

from __future__ import annotations

import statistics
import time
from typing import Any

from snowtrap.demo.outcomes import Results
from snowtrap.demo.report import ImageRow, write_report
from snowtrap.demo.settings import DemoSettings
from snowtrap.demo.survey import Survey


def show(
    settings: DemoSettings,
    survey: Survey,
    summary: Any,
    sent: dict[str, Any],
    results: Results,
    model: str,
    upload_started: float,
    started: float,
    console: Any,
) -> dict[str, Any]:
    from rich.table import Table

    rows: list[ImageRow] = []
    by_path = {o.path.absolute(): o for o in summary.outcomes}
    for path in [*sorted(survey.truth), *survey.bad_files]:
        outcome = by_path.get(path)
        image_id = outcome.image_id if outcome is not None else None
        rows.append(
            ImageRow(
                path=path,
                file_name=str(path.relative_to(survey.folder.absolute())),
                image_id=image_id,
                truth_boxes=survey.truth.get(path, []),
                size=survey.sizes.get(path, (0, 0)),
                detection=results.detections.get(image_id) if image_id else None,
                letter=results.letters.get(image_id) if image_id else None,
                upload_note=(
                    f"{outcome.result} by the uploader: {outcome.reason}" if outcome else ""
                ),
            )
        )
    frames = [row for row in rows if row.detection is not None]
    truth_pos = {row.path for row in rows if row.truth_boxes}
    # The classifier decides "leopard frame" (the gate is set for recall); the detector then
    # localises, and only its boxes above the bundle's detection confidence are reported.
    gated = {row.path for row in frames if row.detection.detector_ran}
    boxed = {row.path for row in frames if row.detection.detections}
    boxes = sum(len(row.detection.detections) for row in frames)
    truth_boxes = sum(len(row.truth_boxes) for row in rows)
    hits = len(truth_pos & gated)
    false_alarms = len(gated - truth_pos)
    missed = len(truth_pos - gated)
    reasons: dict[str, int] = {}
    for letter in results.letters.values():
        reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
    span = max(results.last_outcome_at - upload_started, 1e-6)
    latencies = [(row.detection.processed_at - row.detection.sent_at) for row in frames] or [0.0]
    accounted = set(sent) <= results.done

    table = Table(title=f"snowtrap demo: what the worker found ({model})")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    lines: list[tuple[str, str]] = [
        ("images uploaded (acknowledged by Kafka)", str(len(sent))),
        ("files rejected at the station", str(len(summary.rejected))),
        ("detection records", str(len(results.detections))),
        ("dead letters", str(len(results.letters))),
        ("every uploaded image accounted for", "yes" if accounted else "NO"),
        ("leopard frames: truth", str(len(truth_pos))),
        ("leopard frames: predicted (classifier gate)", str(len(gated))),
        ("  found / missed / false alarms", f"{hits} / {missed} / {false_alarms}"),
        ("frames with a leopard box", str(len(boxed))),
        ("leopard boxes: predicted / truth", f"{boxes} / {truth_boxes}"),
        ("crops on trap.crops", str(results.crops)),
        (
            "dead-letter reasons",
            ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items())) or "none",
        ),
        ("throughput (upload start -> last outcome)", f"{len(sent) / span:.1f} images/s"),
        (
            "latency sent -> processed (median / max)",
            f"{statistics.median(latencies):.2f} s / {max(latencies):.2f} s",
        ),
        ("demo wall time so far", f"{time.perf_counter() - started:.0f} s"),
    ]
    for key, value in lines:
        table.add_row(key, value)
    console.print(table)
    report = settings.run_dir / "report.html"
    rejected = [(o.path.name, o.reason) for o in summary.rejected]
    write_report(report, rows, lines, rejected)
    console.print(f"[bold]Report[/]: {report.absolute()} (open it in a browser)")
    return {
        "sent": set(sent),
        "detected": set(results.detections),
        "dead": set(results.letters),
        "dead_reasons": reasons,
        "crops": results.crops,
        "leopards_truth": len(truth_pos),
        "leopards_predicted": len(gated),
        "leopard_boxes": boxes,
        "rejected": [o.path.name for o in summary.rejected],
        "report": report,
        "accounted": accounted,
    }
