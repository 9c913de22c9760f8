"""`trap.crops`: key = image id, value = JPEG bytes of one leopard crop (no EXIF), headers
tying it back to image, box and camera."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from snowtrap.stream.contracts.detections import check_bbox
from snowtrap.stream.contracts.headers import (
    CONTRACT_VERSION,
    ContractError,
    H,
    Headers,
    HeadersIn,
    check_version,
    header_float,
    header_text,
    header_time,
    headers_to_dict,
)


@dataclass(frozen=True)
class Crop:
    """One leopard cut from the full-resolution image, as a JPEG with no metadata."""

    image_id: str
    box_index: int
    box: tuple[float, float, float, float]
    """Normalised [x, y, w, h] of the detection in the full image (before the margin)."""
    score: float
    camera_id: str
    station_id: str
    capture_time: datetime | None
    model_version: str
    jpeg: bytes

    @property
    def crop_id(self) -> str:
        return f"{self.image_id}:{self.box_index}"


def build_crop_message(crop: Crop) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) for `trap.crops`; the key is the image id."""
    check_bbox(crop.box)
    if not crop.jpeg.startswith(b"\xff\xd8"):
        raise ContractError("bad_crop", "crop payload is not a JPEG")
    headers: Headers = [
        (H.CONTRACT, str(CONTRACT_VERSION).encode()),
        (H.CROP_ID, crop.crop_id.encode()),
        (H.IMAGE_ID, crop.image_id.encode()),
        (H.BOX_INDEX, str(crop.box_index).encode()),
        (H.BOX, json.dumps([round(v, 6) for v in crop.box]).encode()),
        (H.SCORE, repr(float(crop.score)).encode()),
        (H.CAMERA_ID, crop.camera_id.encode()),
        (H.STATION_ID, crop.station_id.encode()),
        (H.MODEL_VERSION, crop.model_version.encode()),
        (H.CONTENT_TYPE, b"image/jpeg"),
    ]
    if crop.capture_time is not None:
        headers.append((H.CAPTURE_TIME, crop.capture_time.isoformat().encode()))
    return crop.image_id.encode(), crop.jpeg, headers


def parse_crop_message(value: bytes | None, headers: HeadersIn) -> Crop:
    """Validate a `trap.crops` message."""
    h = headers_to_dict(headers)
    check_version(h)
    if not value:
        raise ContractError("empty_payload", "crop message has no JPEG bytes")
    try:
        box = json.loads(header_text(h, H.BOX) or "")
    except json.JSONDecodeError as exc:
        raise ContractError("bad_header", "header 'box' is not JSON") from exc
    index = header_float(h, H.BOX_INDEX)
    return Crop(
        image_id=header_text(h, H.IMAGE_ID) or "",
        box_index=int(index or 0),
        box=check_bbox(box),
        score=header_float(h, H.SCORE) or 0.0,
        camera_id=header_text(h, H.CAMERA_ID) or "",
        station_id=header_text(h, H.STATION_ID, required=False) or "",
        capture_time=header_time(h, H.CAPTURE_TIME),
        model_version=header_text(h, H.MODEL_VERSION, required=False) or "",
        jpeg=value,
    )
