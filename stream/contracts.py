"""The message contracts of the snowtrap topics: the one place that builds and parses them.

Every producer and consumer goes through this module, so a message either follows the
contract or is rejected here with a `ContractError` that says what is wrong. Kafka header
values are bytes; this module owns their encoding (UTF-8 text, ISO 8601 times, JSON boxes).

- `trap.images`      key = camera id, value = image bytes (or empty with a claim-check URI)
- `trap.detections`  key = image id, value = JSON detection record (MegaDetector image entry +)
- `trap.crops`       key = image id, value = JPEG bytes of one leopard crop, no EXIF
- `trap.deadletter`  key = source key, value = original bytes, headers = original + reason
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

CONTRACT_VERSION = 1
"""Bumped on any incompatible change; consumers reject versions they do not know."""

# MegaDetector batch-output categories used by snowtrap's detector.
DETECTION_CATEGORIES: dict[str, str] = {"1": "snow leopard"}
LEOPARD_CATEGORY = "1"

Headers = list[tuple[str, bytes]]
"""Headers as this module builds them (kafka-python's shape)."""
HeadersIn = Iterable[tuple[str, bytes | None]] | Mapping[str, Any] | None
"""Headers as consumers receive them: kafka-python tuples or a Faust dict."""


class ContractError(ValueError):
    """A message does not follow the contract. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# --- header helpers -----------------------------------------------------------------------


class H:
    """Header names (lower-case, hyphenated, as HTTP would)."""

    CONTRACT = "snowtrap-contract"
    IMAGE_ID = "image-id"
    CAMERA_ID = "camera-id"
    STATION_ID = "station-id"
    CAPTURE_TIME = "capture-time"
    CONTENT_TYPE = "content-type"
    FILE_NAME = "file-name"
    SENT_AT = "sent-at"
    CLAIM_CHECK = "claim-check"
    SIZE_BYTES = "size-bytes"
    # crops
    CROP_ID = "crop-id"
    BOX_INDEX = "box-index"
    BOX = "box"
    SCORE = "score"
    MODEL_VERSION = "model-version"
    # dead letter
    DL_REASON = "dl-reason"
    DL_STAGE = "dl-stage"
    DL_ERROR = "dl-error"
    DL_SOURCE_TOPIC = "dl-source-topic"
    DL_SOURCE_PARTITION = "dl-source-partition"
    DL_SOURCE_OFFSET = "dl-source-offset"
    DL_FAILED_AT = "dl-failed-at"


def headers_to_dict(
    headers: HeadersIn,
) -> dict[str, bytes]:
    """Normalise Kafka headers (kafka-python list of tuples, Faust dict) to str -> bytes."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, bytes] = {}
    for key, value in items:
        name = key.decode() if isinstance(key, bytes) else str(key)
        if value is None:
            out[name] = b""
        elif isinstance(value, bytes):
            out[name] = value
        else:
            out[name] = str(value).encode()
    return out


def _text(headers: Mapping[str, bytes], name: str, *, required: bool = True) -> str | None:
    raw = headers.get(name)
    if raw is None or raw == b"":
        if required:
            raise ContractError("missing_header", f"header {name!r} is required")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError("bad_header", f"header {name!r} is not UTF-8") from exc


def _float(headers: Mapping[str, bytes], name: str, *, required: bool = True) -> float | None:
    text = _text(headers, name, required=required)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise ContractError("bad_header", f"header {name!r}={text!r} is not a number") from exc
    if not math.isfinite(value):
        raise ContractError("bad_header", f"header {name!r}={text!r} is not finite")
    return value


def _time(headers: Mapping[str, bytes], name: str) -> datetime | None:
    text = _text(headers, name, required=False)
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ContractError("bad_header", f"header {name!r}={text!r} is not ISO 8601") from exc


def _check_version(headers: Mapping[str, bytes]) -> None:
    version = _text(headers, H.CONTRACT)
    if version != str(CONTRACT_VERSION):
        raise ContractError(
            "unknown_contract_version",
            f"contract version {version!r}, this consumer understands {CONTRACT_VERSION}",
        )


def image_id_of(data: bytes) -> str:
    """The image id: sha256 of the bytes as uploaded, so re-sends are recognisable."""
    return hashlib.sha256(data).hexdigest()


def _valid_image_id(image_id: str) -> bool:
    return len(image_id) == 64 and all(c in "0123456789abcdef" for c in image_id)


# --- trap.images --------------------------------------------------------------------------


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
    _check_version(h)
    image_id = _text(h, H.IMAGE_ID) or ""
    if not _valid_image_id(image_id):
        raise ContractError("bad_header", f"image-id {image_id[:80]!r} is not a sha256 hex digest")
    camera_id = _text(h, H.CAMERA_ID) or ""
    if key is not None and key.decode("utf-8", "replace") != camera_id:
        raise ContractError("bad_key", f"key {key!r} differs from camera-id {camera_id!r}")
    claim_check = _text(h, H.CLAIM_CHECK, required=False)
    payload = value or None
    if payload is None and claim_check is None:
        raise ContractError("empty_payload", "message has no image bytes and no claim-check URI")
    if payload is not None and image_id_of(payload) != image_id:
        raise ContractError("image_id_mismatch", "sha256 of the bytes differs from image-id")
    size = _float(h, H.SIZE_BYTES, required=False)
    return TrapImage(
        image_id=image_id,
        camera_id=camera_id,
        station_id=_text(h, H.STATION_ID) or "",
        file_name=_text(h, H.FILE_NAME) or "",
        content_type=_text(h, H.CONTENT_TYPE) or "",
        capture_time=_time(h, H.CAPTURE_TIME),
        sent_at=_float(h, H.SENT_AT) or 0.0,
        payload=payload,
        claim_check=claim_check,
        size_bytes=int(size) if size is not None else None,
    )


# --- trap.detections ----------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """One MegaDetector-style detection: category id, confidence, normalised [x, y, w, h]."""

    category: str
    conf: float
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class DetectionRecord:
    """The result for one image. Its MegaDetector core is `file` + `detections`."""

    image_id: str
    file: str
    detections: list[Detection]
    leopard_score: float
    gate_threshold: float
    detector_ran: bool
    model_name: str
    model_version: str
    camera_id: str
    station_id: str
    capture_time: datetime | None
    width: int
    height: int
    is_night: bool
    sent_at: float
    processed_at: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    """Where the image came from: topic, partition, offset."""

    @property
    def max_detection_conf(self) -> float:
        return max((d.conf for d in self.detections), default=0.0)

    def megadetector_entry(self) -> dict[str, Any]:
        """The image entry of a MegaDetector batch-output file (format 1.4)."""
        entry: dict[str, Any] = {
            "file": self.file,
            "max_detection_conf": round(self.max_detection_conf, 4),
            "detections": [
                {
                    "category": d.category,
                    "conf": round(d.conf, 4),
                    "bbox": [round(v, 4) for v in d.bbox],
                }
                for d in self.detections
            ],
        }
        if self.capture_time is not None:
            entry["datetime"] = self.capture_time.isoformat()
        return entry


def _check_bbox(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    if len(bbox) != 4:
        raise ContractError("bad_record", f"bbox {bbox!r} must have 4 numbers")
    x, y, w, h = (float(v) for v in bbox)
    eps = 1e-6
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ContractError("bad_record", f"bbox {bbox!r} is not finite")
    if x < -eps or y < -eps or w < 0 or h < 0 or x + w > 1 + eps or y + h > 1 + eps:
        raise ContractError("bad_record", f"bbox {bbox!r} is not normalised inside [0, 1]")
    return (x, y, w, h)


def build_detection_message(record: DetectionRecord) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) for `trap.detections`."""
    for d in record.detections:
        _check_bbox(d.bbox)
        if d.category not in DETECTION_CATEGORIES:
            raise ContractError("bad_record", f"unknown category {d.category!r}")
    body = asdict(record)
    body["contract_version"] = CONTRACT_VERSION
    body["capture_time"] = record.capture_time.isoformat() if record.capture_time else None
    body["detections"] = record.megadetector_entry()["detections"]
    body["max_detection_conf"] = record.megadetector_entry()["max_detection_conf"]
    headers: Headers = [
        (H.CONTRACT, str(CONTRACT_VERSION).encode()),
        (H.IMAGE_ID, record.image_id.encode()),
        (H.CAMERA_ID, record.camera_id.encode()),
        (H.CONTENT_TYPE, b"application/json"),
    ]
    return record.image_id.encode(), json.dumps(body, separators=(",", ":")).encode(), headers


def parse_detection_message(value: bytes) -> DetectionRecord:
    """Parse and validate a `trap.detections` value."""
    try:
        body = json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ContractError("bad_json", f"detection record is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ContractError("bad_record", "detection record must be a JSON object")
    if body.get("contract_version") != CONTRACT_VERSION:
        raise ContractError(
            "unknown_contract_version", f"contract version {body.get('contract_version')!r}"
        )
    try:
        detections = [
            Detection(
                category=str(d["category"]), conf=float(d["conf"]), bbox=_check_bbox(d["bbox"])
            )
            for d in body["detections"]
        ]
        capture = body.get("capture_time")
        return DetectionRecord(
            image_id=str(body["image_id"]),
            file=str(body["file"]),
            detections=detections,
            leopard_score=float(body["leopard_score"]),
            gate_threshold=float(body["gate_threshold"]),
            detector_ran=bool(body["detector_ran"]),
            model_name=str(body["model_name"]),
            model_version=str(body["model_version"]),
            camera_id=str(body["camera_id"]),
            station_id=str(body["station_id"]),
            capture_time=datetime.fromisoformat(capture) if capture else None,
            width=int(body["width"]),
            height=int(body["height"]),
            is_night=bool(body["is_night"]),
            sent_at=float(body["sent_at"]),
            processed_at=float(body["processed_at"]),
            timings_ms={str(k): float(v) for k, v in body.get("timings_ms", {}).items()},
            source=dict(body.get("source", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ContractError):
            raise
        raise ContractError("bad_record", f"detection record field problem: {exc!r}") from exc


# --- trap.crops ---------------------------------------------------------------------------


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
    _check_bbox(crop.box)
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
    _check_version(h)
    if not value:
        raise ContractError("empty_payload", "crop message has no JPEG bytes")
    try:
        box = json.loads(_text(h, H.BOX) or "")
    except json.JSONDecodeError as exc:
        raise ContractError("bad_header", "header 'box' is not JSON") from exc
    index = _float(h, H.BOX_INDEX)
    return Crop(
        image_id=_text(h, H.IMAGE_ID) or "",
        box_index=int(index or 0),
        box=_check_bbox(box),
        score=_float(h, H.SCORE) or 0.0,
        camera_id=_text(h, H.CAMERA_ID) or "",
        station_id=_text(h, H.STATION_ID, required=False) or "",
        capture_time=_time(h, H.CAPTURE_TIME),
        model_version=_text(h, H.MODEL_VERSION, required=False) or "",
        jpeg=value,
    )


# --- trap.deadletter ----------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """Anything that could not be processed: the original message plus why and where."""

    reason: str
    """Short machine-readable code, e.g. 'truncated', 'missing_header', 'model_error'."""
    stage: str
    """Where it failed: 'contract', 'decode', 'classify', 'detect', 'crop', 'produce'."""
    error: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    failed_at: float = field(default_factory=time.time)

    @property
    def image_id(self) -> str:
        """The image id from the original headers, else the sha256 of the bytes."""
        given = self.headers.get(H.IMAGE_ID, b"").decode("utf-8", "replace")
        return given if _valid_image_id(given) else image_id_of(self.value or b"")


DL_HEADERS = (
    H.DL_REASON,
    H.DL_STAGE,
    H.DL_ERROR,
    H.DL_SOURCE_TOPIC,
    H.DL_SOURCE_PARTITION,
    H.DL_SOURCE_OFFSET,
    H.DL_FAILED_AT,
)


def build_deadletter_message(letter: DeadLetter) -> tuple[bytes | None, bytes, Headers]:
    """(key, value, headers) for `trap.deadletter`: original bytes and headers, plus why."""
    headers: Headers = [(k, v) for k, v in letter.headers.items() if k not in DL_HEADERS]
    if H.IMAGE_ID not in letter.headers:
        headers.append((H.IMAGE_ID, letter.image_id.encode()))
    headers += [
        (H.DL_REASON, letter.reason.encode()),
        (H.DL_STAGE, letter.stage.encode()),
        (H.DL_ERROR, letter.error[:2000].encode("utf-8", "replace")),
        (H.DL_SOURCE_TOPIC, letter.source_topic.encode()),
        (H.DL_SOURCE_PARTITION, str(letter.source_partition).encode()),
        (H.DL_SOURCE_OFFSET, str(letter.source_offset).encode()),
        (H.DL_FAILED_AT, repr(letter.failed_at).encode()),
    ]
    return letter.key, letter.value or b"", headers


def parse_deadletter_message(
    key: bytes | None,
    value: bytes | None,
    headers: HeadersIn,
) -> DeadLetter:
    """Read a `trap.deadletter` message back (for tests, replays and dashboards)."""
    h = headers_to_dict(headers)
    original = {k: v for k, v in h.items() if k not in DL_HEADERS}
    return DeadLetter(
        reason=_text(h, H.DL_REASON) or "",
        stage=_text(h, H.DL_STAGE) or "",
        error=_text(h, H.DL_ERROR, required=False) or "",
        source_topic=_text(h, H.DL_SOURCE_TOPIC) or "",
        source_partition=int(_float(h, H.DL_SOURCE_PARTITION) or 0),
        source_offset=int(_float(h, H.DL_SOURCE_OFFSET) or 0),
        key=key,
        value=value,
        headers=original,
        failed_at=_float(h, H.DL_FAILED_AT) or 0.0,
    )
