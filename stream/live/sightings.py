"""The newest leopard sightings: crops joined with their detection record and identity.

The three topics arrive independently (the worker writes a crop and its detection record in
either order, the matcher's identity comes later, or first when the page catches up), so
each side waits for the others in a bounded buffer and fills in the sighting when it comes.
Only the `limit` newest crops are kept, with their JPEG bytes; older ones are forgotten.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from snowtrap.stream.contracts import Crop, DetectionRecord
from snowtrap.stream.contracts.wire import IdentityRecordBody

PENDING_LIMIT = 2000
"""Detection records and identities waiting for their crop; the oldest are dropped beyond."""


@dataclass
class Sighting:
    """One leopard crop as the page shows it."""

    crop: Crop
    seen_at: float
    """When the crop was published (the Kafka record time), Unix seconds: the page's order."""
    detection: DetectionRecord | None = None
    identity: IdentityRecordBody | None = None

    @property
    def crop_id(self) -> str:
        return self.crop.crop_id

    def as_json(self, root_path: str) -> dict[str, Any]:
        """What the browser gets; `url` already carries the path prefix."""
        crop, detection, identity = self.crop, self.detection, self.identity
        return {
            "crop_id": crop.crop_id,
            "image_id": crop.image_id,
            "url": crop_url(root_path, crop.crop_id),
            "camera_id": crop.camera_id,
            "station_id": crop.station_id,
            "capture_time": crop.capture_time.isoformat() if crop.capture_time else None,
            "seen_at": datetime.fromtimestamp(self.seen_at, UTC).isoformat(timespec="seconds"),
            "score": round(crop.score, 4),
            "box": [round(v, 4) for v in crop.box],
            "file": detection.file if detection else None,
            "leopard_score": round(detection.leopard_score, 4) if detection else None,
            "is_night": detection.is_night if detection else None,
            "decision": identity.decision if identity else None,
            "individual_id": identity.individual_id if identity else None,
            "identity_score": round(identity.score, 4) if identity else None,
        }


def crop_url(root_path: str, crop_id: str) -> str:
    return f"{root_path}/crops/{quote(crop_id, safe='')}.jpg"


def _remember(buffer: OrderedDict[str, Any], key: str, value: Any) -> None:
    buffer[key] = value
    buffer.move_to_end(key)
    while len(buffer) > PENDING_LIMIT:
        buffer.popitem(last=False)


class Sightings:
    """The `limit` newest sightings, plus what waits to be joined to a crop. Not thread-safe:
    `LiveState` holds the lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_crop: dict[str, Sighting] = {}
        self._detections: OrderedDict[str, DetectionRecord] = OrderedDict()
        self._identities: OrderedDict[str, IdentityRecordBody] = OrderedDict()

    def add_crop(self, crop: Crop, seen_at: float) -> bool:
        """Keep the crop if it is among the newest; True when the shown list changed."""
        if crop.crop_id in self._by_crop:
            return False  # the same crop published again (a worker redoing a batch)
        sighting = Sighting(
            crop,
            seen_at,
            detection=self._detections.get(crop.image_id),
            identity=self._identities.pop(crop.crop_id, None),
        )
        self._by_crop[crop.crop_id] = sighting
        if len(self._by_crop) > self.limit:
            oldest = min(self._by_crop.values(), key=lambda s: (s.seen_at, s.crop_id))
            del self._by_crop[oldest.crop_id]
            return oldest is not sighting
        return True

    def add_detection(self, record: DetectionRecord) -> bool:
        """Join a detection record to its image's crops; kept a while if they come later."""
        if not record.detections:
            return False  # no leopard box, so no crop will ever wait for it
        _remember(self._detections, record.image_id, record)
        changed = False
        for sighting in self._by_crop.values():
            if sighting.crop.image_id == record.image_id:
                sighting.detection = record
                changed = True
        return changed

    def add_identity(self, identity: IdentityRecordBody) -> bool:
        sighting = self._by_crop.get(identity.crop_id)
        if sighting is None:
            _remember(self._identities, identity.crop_id, identity)
            return False
        sighting.identity = identity
        return True

    def newest_first(self) -> list[Sighting]:
        return sorted(self._by_crop.values(), key=lambda s: (s.seen_at, s.crop_id), reverse=True)

    def jpeg(self, crop_id: str) -> bytes | None:
        sighting = self._by_crop.get(crop_id)
        return sighting.crop.jpeg if sighting else None
