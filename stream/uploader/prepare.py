"""One file on the card -> the `TrapImage` to send, or the reason it will not be sent.

Per file: read, sniff the format, read the capture time, remove the location (unless the
operator opted out), hash the bytes as they will be sent (the image id), and put images over
the message limit into the claim-check store. Each step's time is added to `PhaseTimes`, so
a run (and `bench/uploader_throughput.py`) can say where the time goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from snowtrap.models.decode import sniff_image_format
from snowtrap.stream.contracts import TrapImage, image_id_of
from snowtrap.stream.uploader.claim_checks import ClaimCheckError, ClaimCheckStore, OwnPathStore
from snowtrap.stream.uploader.files import CONTENT_TYPES, Candidate, capture_time, read_image_file
from snowtrap.stream.uploader.outcomes import Result
from snowtrap.stream.uploader.privacy import LocationStripError, strip_location
from snowtrap.stream.uploader.settings import UploaderSettings

PHASES = (
    "read",
    "sniff",
    "capture_time",
    "strip_gps",
    "hash",
    "claim_check",
    "ledger",
    "send",
    "ack_wait",
)
"""Where a run's time goes, in the order a file meets them (`ledger`: pending and
acknowledged rows; `send`: building the record and handing it to the producer; `ack_wait`:
blocked on Kafka's acknowledgement because the sends in flight were at their bound)."""


@dataclass
class PhaseTimes:
    """Seconds spent per phase over a run (wall clock on the uploading thread)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started


@dataclass(frozen=True)
class Prepared:
    """An image ready to send."""

    candidate: Candidate
    image: TrapImage


@dataclass(frozen=True)
class NotSent:
    """A file that will not be sent, and why (`result` as in `FileOutcome`)."""

    result: Result
    reason: str
    image_id: str | None = None
    size_bytes: int = 0


def prepare(
    candidate: Candidate,
    settings: UploaderSettings,
    store: ClaimCheckStore,
    phases: PhaseTimes,
    already_sent: Callable[[str, int], NotSent | None],
) -> Prepared | NotSent:
    """The image to send for `candidate`, or why not (never raises for a bad file).

    `already_sent(image_id, size)` says why an image needs no sending (the ledger has it,
    or this run sent the same bytes), before anything is stored as a claim check.
    """
    if candidate.problem:
        return NotSent("rejected", candidate.problem)
    with phases.timing("read"):
        original, problem = read_image_file(candidate.path)
    if problem or original is None:
        return NotSent("rejected", problem or "unreadable")
    with phases.timing("sniff"):
        fmt = sniff_image_format(original)
    if fmt is None:
        return NotSent("rejected", "not an image (no known image signature)")
    with phases.timing("capture_time"):
        captured = capture_time(original)
    data = original
    if settings.strip_gps:
        with phases.timing("strip_gps"):
            try:
                data = strip_location(original, fmt)
            except LocationStripError as error:
                return NotSent(
                    "rejected",
                    f"cannot remove the location from this {fmt} ({error}); not sent "
                    "(strip_gps: false sends images as they are)",
                )
    with phases.timing("hash"):
        image_id = image_id_of(data)
    skip = already_sent(image_id, len(data))
    if skip is not None:
        return skip
    claim_check: str | None = None
    if len(data) > settings.max_inline_bytes:
        if data is not original and isinstance(store, OwnPathStore):
            return NotSent(
                "rejected",
                "over the message limit and its file carries GPS: set claim_check_store so "
                "a copy without the location is stored",
                image_id,
                len(data),
            )
        with phases.timing("claim_check"):
            try:
                claim_check = store.put(candidate.path, data, image_id)
            except ClaimCheckError as error:
                return NotSent("failed", str(error), image_id, len(data))
    image = TrapImage(
        image_id=image_id,
        camera_id=settings.camera_id,
        station_id=settings.station_id,
        file_name=candidate.file_name,
        content_type=CONTENT_TYPES.get(fmt, "application/octet-stream"),
        capture_time=captured,
        sent_at=time.time(),
        payload=None if claim_check else data,
        claim_check=claim_check,
        size_bytes=len(data),
    )
    return Prepared(candidate, image)
