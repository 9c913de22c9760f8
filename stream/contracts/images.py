"""`trap.images`: key = camera id, value = image bytes (or empty with a claim-check URI)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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
    image_id_of,
    is_image_id,
)


@dataclass(frozen=True)
class TrapImage:
    """One camera-trap photo as it travels on `trap.images`."""

    image_id: str
    camera_id: str
    station_id: str
    file_name: str
    content_type: str
    capture_time: datetime | None
    sent_at: float
    """Unix time (s) at which the uploader sent it: the start of end-to-end latency."""
    payload: bytes | None
    """The image bytes; None when they travel as a claim check."""
    claim_check: str | None = None
    size_bytes: int | None = None


def build_image_message(image: TrapImage) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) for `trap.images`."""
    if (image.payload is None) == (image.claim_check is None):
        raise ContractError("bad_image", "exactly one of payload and claim_check must be set")
    headers: Headers = [
        (H.CONTRACT, str(CONTRACT_VERSION).encode()),
        (H.IMAGE_ID, image.image_id.encode()),
        (H.CAMERA_ID, image.camera_id.encode()),
        (H.STATION_ID, image.station_id.encode()),
        (H.FILE_NAME, image.file_name.encode()),
        (H.CONTENT_TYPE, image.content_type.encode()),
        (H.SENT_AT, repr(image.sent_at).encode()),
    ]
    if image.capture_time is not None:
        headers.append((H.CAPTURE_TIME, image.capture_time.isoformat().encode()))
    if image.claim_check is not None:
        headers.append((H.CLAIM_CHECK, image.claim_check.encode()))
    size = image.size_bytes if image.size_bytes is not None else len(image.payload or b"")
    headers.append((H.SIZE_BYTES, str(size).encode()))
    return image.camera_id.encode(), image.payload or b"", headers


def parse_image_message(
    key: bytes | None,
    value: bytes | None,
    headers: HeadersIn,
) -> TrapImage:
    """Validate a `trap.images` message; raises ContractError naming the problem."""
    h = headers_to_dict(headers)
    check_version(h)
    image_id = header_text(h, H.IMAGE_ID) or ""
    if not is_image_id(image_id):
        raise ContractError("bad_header", f"image-id {image_id[:80]!r} is not a sha256 hex digest")
    camera_id = header_text(h, H.CAMERA_ID) or ""
    if key is not None and key.decode("utf-8", "replace") != camera_id:
        raise ContractError("bad_key", f"key {key!r} differs from camera-id {camera_id!r}")
    claim_check = header_text(h, H.CLAIM_CHECK, required=False)
    payload = value or None
    if payload is None and claim_check is None:
        raise ContractError("empty_payload", "message has no image bytes and no claim-check URI")
    if payload is not None and image_id_of(payload) != image_id:
        raise ContractError("image_id_mismatch", "sha256 of the bytes differs from image-id")
    size = header_float(h, H.SIZE_BYTES, required=False)
    return TrapImage(
        image_id=image_id,
        camera_id=camera_id,
        station_id=header_text(h, H.STATION_ID) or "",
        file_name=header_text(h, H.FILE_NAME) or "",
        content_type=header_text(h, H.CONTENT_TYPE) or "",
        capture_time=header_time(h, H.CAPTURE_TIME),
        sent_at=header_float(h, H.SENT_AT) or 0.0,
        payload=payload,
        claim_check=claim_check,
        size_bytes=int(size) if size is not None else None,
    )
