"""What happened to each file of a run, and the run's exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

EXIT_OK = 0
EXIT_BROKER_UNREACHABLE = 1
EXIT_BAD_SETTINGS = 2
EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130

Result = Literal["sent", "skipped", "rejected", "failed"]


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file."""

    path: Path
    result: Result
    reason: str = ""
    image_id: str | None = None
    size_bytes: int = 0
    partition: int | None = None
    offset: int | None = None
    claim_check: str | None = None


@dataclass
class UploadSummary:
    """Per-file outcomes of one run, plus the error that stopped it before sending, if any."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    broker_error: str | None = None
    settings_error: str | None = None
    interrupted: bool = False
    recovered: int = 0
    """Images an earlier run left pending (crash, lost link) that were found in Kafka."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase on the uploading thread (`stream.uploader.prepare.PHASES`)."""

    def of(self, result: Result) -> list[FileOutcome]:
        return [outcome for outcome in self.outcomes if outcome.result == result]

    @property
    def sent(self) -> list[FileOutcome]:
        return self.of("sent")

    @property
    def skipped(self) -> list[FileOutcome]:
        return self.of("skipped")

    @property
    def rejected(self) -> list[FileOutcome]:
        return self.of("rejected")

    @property
    def failed(self) -> list[FileOutcome]:
        return self.of("failed")

    @property
    def exit_code(self) -> int:
        if self.settings_error:
            return EXIT_BAD_SETTINGS
        if self.broker_error:
            return EXIT_BROKER_UNREACHABLE
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.failed:
            return EXIT_INCOMPLETE
        return EXIT_OK


class BrokerUnreachableError(RuntimeError):
    """Kafka could not be reached (or the images topic is missing) before anything was sent."""
