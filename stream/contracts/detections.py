"""`trap.detections`: key = image id, value = the JSON detection record (a MegaDetector
image entry plus classifier score, model version, timings and camera metadata)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from snowtrap.stream.contracts.headers import CONTRACT_VERSION, ContractError, H, Headers

# MegaDetector batch-output categories used by snowtrap's detector.
DETECTION_CATEGORIES: dict[str, str] = {"1": "snow leopard"}
LEOPARD_CATEGORY = "1"


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


def check_bbox(bbox: Sequence[float]) -> tuple[float, float, float, float]:
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
        check_bbox(d.bbox)
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
                category=str(d["category"]), conf=float(d["conf"]), bbox=check_bbox(d["bbox"])
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
