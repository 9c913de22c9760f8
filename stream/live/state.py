"""What the page knows, in memory: sightings, per-camera and dead-letter counts, bad records.

The Kafka thread calls `apply_record` for every record it reads; the web side reads
`snapshot()` and `crop_jpeg()`. One lock guards everything, and `version` goes up with each
change, so an open event stream knows when there is something new to send.

Every record is parsed with the contract of its topic; one that fails it is counted (by topic
and reason, shown on the page) and skipped: a bad record never stops the page.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from snowtrap.stream.contracts import (
    LEOPARD_CATEGORY,
    ContractError,
    HeadersIn,
    parse_crop_message,
    parse_deadletter_message,
    parse_detection_message,
)
from snowtrap.stream.contracts.identities import parse_identity_message
from snowtrap.stream.contracts.wire import IdentityRecordBody
from snowtrap.stream.live.sightings import Sightings
from snowtrap.stream.live.window import RecentlySeen, WindowCounts

Role = Literal["detections", "crops", "identities", "deadletter"]
ROLES: tuple[Role, ...] = ("detections", "crops", "identities", "deadletter")
"""The topics the page reads, by their role in `TopicNames`."""
REPEATS_REMEMBERED = 100_000
"""Ids remembered per topic to count a re-published record once (a worker redoing a batch
after a crash republishes within seconds; 100 000 ids is a few MiB)."""


@dataclass
class KafkaStatus:
    """How the reading goes, for the page's status line and /healthz."""

    connected: bool = False
    caught_up: bool = False
    """Read up to the end offsets as they were when reading started."""
    error: str | None = None
    records: int = 0


class LiveState:
    """Everything the page shows; thread-safe."""

    def __init__(
        self,
        *,
        sightings: int,
        window_hours: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        window_s = window_hours * 3600.0
        self.window_hours = window_hours
        self._clock = clock
        self._lock = threading.Lock()
        self._sightings = Sightings(sightings)
        self._images = WindowCounts(window_s)
        self._leopard_images = WindowCounts(window_s)
        self._crops = WindowCounts(window_s)
        self._deadletters = WindowCounts(window_s)
        self._seen = {role: RecentlySeen(REPEATS_REMEMBERED) for role in ROLES}
        self._bad: Counter[tuple[str, str]] = Counter()
        self._read: Counter[str] = Counter()
        self.kafka = KafkaStatus()
        self.version = 0

    # -- the Kafka side --------------------------------------------------------------------

    def apply_record(
        self,
        role: Role,
        key: bytes | None,
        value: bytes | None,
        headers: HeadersIn,
        timestamp_ms: int,
    ) -> None:
        """Parse one record by its topic's contract and fold it in; bad ones are counted."""
        at = timestamp_ms / 1000.0
        try:
            with self._lock:
                self._read[role] += 1
                self.kafka.records += 1
                changed = self._apply(role, key, value, headers, at)
                if changed:
                    self.version += 1
        except (ContractError, ValueError, TypeError, KeyError) as error:
            reason = error.reason if isinstance(error, ContractError) else "bad_record"
            with self._lock:
                self._bad[(role, reason)] += 1
                self.version += 1

    def _apply(
        self, role: Role, key: bytes | None, value: bytes | None, headers: HeadersIn, at: float
    ) -> bool:
        now = self._clock()
        if role == "detections":
            record = parse_detection_message(value or b"")
            camera = record.camera_id
            if self._seen[role].first_time(record.image_id):
                self._images.add(camera, at, now)
                if any(d.category == LEOPARD_CATEGORY for d in record.detections):
                    self._leopard_images.add(camera, at, now)
            self._sightings.add_detection(record)
            return True
        if role == "crops":
            crop = parse_crop_message(value, headers)
            if self._seen[role].first_time(crop.crop_id):
                self._crops.add(crop.camera_id, at, now)
            self._sightings.add_crop(crop, at)
            return True
        if role == "identities":
            identity = IdentityRecordBody.model_validate(parse_identity_message(value or b""))
            return self._sightings.add_identity(identity)
        letter = parse_deadletter_message(key, value, headers)
        if not letter.reason:
            raise ContractError("bad_record", "dead letter without a reason")
        if self._seen[role].first_time((letter.image_id, letter.source_topic)):
            self._deadletters.add((letter.stage, letter.reason), at, now)
        return True

    def set_kafka(self, **fields: Any) -> None:
        """Update the reading status (connected, caught_up, error)."""
        with self._lock:
            for name, value in fields.items():
                setattr(self.kafka, name, value)
            self.version += 1

    # -- the web side ----------------------------------------------------------------------

    def crop_jpeg(self, crop_id: str) -> bytes | None:
        with self._lock:
            return self._sightings.jpeg(crop_id)

    def snapshot(self, root_path: str = "") -> dict[str, Any]:
        """The whole state as JSON-ready data: what a page shows, newest sightings first."""
        now = self._clock()
        with self._lock:
            images = self._images.counts(now)
            leopards = self._leopard_images.counts(now)
            crops = self._crops.counts(now)
            cameras = sorted(set(images) | set(crops))
            letters = self._deadletters.counts(now)
            return {
                "version": self.version,
                "window_hours": self.window_hours,
                "kafka": {
                    "connected": self.kafka.connected,
                    "caught_up": self.kafka.caught_up,
                    "error": self.kafka.error,
                    "records": self.kafka.records,
                },
                "sightings": [s.as_json(root_path) for s in self._sightings.newest_first()],
                "cameras": [
                    {
                        "camera_id": camera,
                        "images": images.get(camera, 0),
                        "leopard_images": leopards.get(camera, 0),
                        "crops": crops.get(camera, 0),
                    }
                    for camera in cameras
                ],
                "deadletters": {
                    "total": sum(letters.values()),
                    "by_reason": [
                        {"stage": stage, "reason": reason, "count": count}
                        for (stage, reason), count in sorted(
                            letters.items(), key=lambda item: (-item[1], item[0])
                        )
                    ],
                },
                "bad_records": [
                    {"topic": role, "reason": reason, "count": count}
                    for (role, reason), count in sorted(self._bad.items())
                ],
                "records_read": dict(self._read),
            }
