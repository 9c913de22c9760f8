"""The end-of-run report: counts per result, then every problem file by name."""

from __future__ import annotations

import sys
from typing import Any

from snowtrap.stream.uploader.outcomes import UploadSummary
from snowtrap.stream.uploader.settings import MiB, UploaderSettings

MAX_LISTED = 200
"""Rejected/failed files listed by name in the summary; the rest are counted."""
PIPED_WIDTH = 240
"""Columns of the report when it does not go to a terminal (rich would fold paths at 80)."""


def print_summary(summary: UploadSummary, settings: UploaderSettings, file: Any = None) -> None:
    """The end-of-run report: counts per result, then every problem file by name."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, soft_wrap=False)
    if not console.is_terminal:  # a log or a pipe: each path whole on its line, grep-able
        console.width = max(console.width, PIPED_WIDTH)
    errors = Console(file=file or sys.stderr, soft_wrap=True)
    if summary.settings_error:
        errors.print(f"[bold red]snowtrap upload: {summary.settings_error}[/]")
        return
    if summary.broker_error:
        errors.print(f"[bold red]snowtrap upload: {summary.broker_error}[/]")
        errors.print("Nothing was sent; the ledger is unchanged. Re-run when Kafka answers.")
        return
    counts = Table(title=f"upload to {settings.topics.images} ({settings.bootstrap_servers})")
    counts.add_column("result")
    counts.add_column("files", justify="right")
    counts.add_column("MiB", justify="right")
    labels = {
        "sent": "sent (acknowledged)",
        "skipped": "skipped (already sent)",
        "rejected": "rejected",
        "failed": "failed (not acknowledged)",
    }
    for result, label in labels.items():
        outcomes = summary.of(result)  # type: ignore[arg-type]
        size = sum(outcome.size_bytes for outcome in outcomes) / MiB
        counts.add_row(label, str(len(outcomes)), f"{size:.1f}")
    console.print(counts)
    if summary.recovered:
        console.print(
            f"{summary.recovered} image(s) an earlier, interrupted run had sent were found in "
            "Kafka and recorded (not sent again)."
        )
    problems = summary.rejected + summary.failed
    if problems:
        table = Table(title="files not sent")
        table.add_column("file", overflow="fold")
        table.add_column("result")
        table.add_column("reason", overflow="fold")
        for outcome in problems[:MAX_LISTED]:
            table.add_row(str(outcome.path), outcome.result, outcome.reason)
        console.print(table)
        if len(problems) > MAX_LISTED:
            console.print(f"... and {len(problems) - MAX_LISTED} more")
    if summary.interrupted:
        console.print("[bold yellow]Interrupted; run the same command again to send the rest.[/]")
    if summary.failed:
        console.print(
            f"[bold yellow]{len(summary.failed)} file(s) were not acknowledged by Kafka; "
            "run the same command again to send them.[/]"
        )
