"""Records as the worker and the matcher publish them, for readers' tests and benches.

The live page and `snowtrap export` read four topics; their tests and `bench/live_state.py`
need records built by the project's own contract types, not hand-written JSON, so that a
contract change breaks them the way it would break the real readers.
"""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from snowtrap.models.reid.matching import Candidate, Decision, MatchResult
from snowtrap.stream.contracts import Crop, DeadLetter, Detection, DetectionRecord, image_id_of
from snowtrap.stream.matcher.service import identity_record

SAMPLE_CAPTURE_TIME = datetime(2026, 1, 12, 5, 40, 12, tzinfo=UTC)
SAMPLE_STATION = "station-k2"
SAMPLE_BOX = (0.2, 0.3, 0.25, 0.2)


def sample_jpeg(seed: int, size: tuple[int, int] = (48, 32)) -> bytes:
    """A small JPEG whose pixels (and so bytes) differ with `seed`."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (seed * 40 % 256, 120, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def sample_detection(
    name: str, camera: str, *, leopard: bool, at: float | None = None, offset: int = 1
) -> DetectionRecord:
    """The worker's record of frame `name`: one box and a high score when `leopard`."""
    at = time.time() if at is None else at
    boxes = [Detection("1", 0.91, SAMPLE_BOX)] if leopard else []
    return DetectionRecord(
        image_id=image_id_of(name.encode()), file=f"{camera}/{name}.jpg", detections=boxes,
        leopard_score=0.97 if leopard else 0.02, gate_threshold=0.4, detector_ran=leopard,
        model_name="test", model_version="1", camera_id=camera, station_id=SAMPLE_STATION,
        capture_time=SAMPLE_CAPTURE_TIME, width=640, height=480, is_night=False, sent_at=at,
        processed_at=at, source={"topic": "trap.images", "partition": 0, "offset": offset},
    )  # fmt: skip


def sample_crop(
    name: str, camera: str, *, index: int = 0, score: float = 0.91, jpeg: bytes | None = None
) -> Crop:
    """The worker's crop `index` of frame `name`."""
    return Crop(
        image_id=image_id_of(name.encode()), box_index=index, box=SAMPLE_BOX, score=score,
        camera_id=camera, station_id=SAMPLE_STATION, capture_time=SAMPLE_CAPTURE_TIME,
        model_version="1", jpeg=sample_jpeg(index + len(name)) if jpeg is None else jpeg,
    )  # fmt: skip


def sample_identity(of: Crop, individual: str | None) -> dict[str, Any]:
    """The matcher's record for `of`: known as `individual`, or a new candidate (None)."""
    candidates = [Candidate(individual or "F-01", 42.0, 60.0, 31, 7, False)]
    result = MatchResult(
        Decision.KNOWN if individual else Decision.NEW, candidates, 240, 0.05, "matcher-1"
    )
    return identity_record(of, result, db_version=3, db_chips=12)


def sample_dead_letter(
    name: str, reason: str, stage: str, camera: str = "cam-a", *, offset: int = 5
) -> DeadLetter:
    """The worker's dead letter for input `name` that failed `stage` with `reason`."""
    data = f"{name} is not a picture\n".encode()
    return DeadLetter(
        reason=reason, stage=stage, error=f"{reason} in {name}", source_topic="trap.images",
        source_partition=0, source_offset=offset, key=camera.encode(), value=data,
        headers={"camera-id": camera.encode(), "file-name": f"{name}.jpg".encode()},
    )  # fmt: skip
