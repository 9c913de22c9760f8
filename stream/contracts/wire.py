"""The wire format of the snowtrap topics as pydantic models, and the JSON Schemas made from them.

The builders and parsers in this package write and read the messages; these models say what
the messages look like, field by field, for anyone on the other end of a topic (dashboards,
exports, other languages). `write_schemas()` renders them into the `*.schema.json` files
checked in beside this module; a test keeps those files equal to what the models generate and
validates real worker and matcher output against them.

- `DetectionRecordBody`: the JSON value on `trap.detections` (a MegaDetector image entry:
  `file`, `detections[]` with `category`, `conf`, normalised `bbox` [x, y, w, h], plus ours);
- `CropHeaders`: the Kafka headers of a `trap.crops` message (its value is the JPEG);
- `DeadLetterHeaders`: the Kafka headers a dead letter adds to the original message's;
- `IdentityRecordBody`: the JSON value on `trap.identities`.

Header values travel as bytes; the models describe their UTF-8 text.

    python -m snowtrap.stream.contracts.wire   # rewrite the checked-in schemas
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from snowtrap.stream.contracts.headers import CONTRACT_VERSION

SCHEMA_DIR = Path(__file__).resolve().parent

ImageId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the image bytes")]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
BBox = Annotated[
    tuple[Unit, Unit, Unit, Unit],
    Field(description="normalised [x, y, width, height] of the box, top-left origin"),
]
NUMBER = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
INTEGER = r"^[0-9]+$"
ISO_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Headers(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class WireDetection(_Wire):
    """One MegaDetector-style detection."""

    category: Literal["1"] = Field(description='MegaDetector category id; "1" = snow leopard')
    conf: Unit
    bbox: BBox


class RecordSource(_Wire):
    """Where the image was consumed from."""

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class DetectionRecordBody(_Wire):
    """The JSON value of a `trap.detections` message: one per image processed."""

    model_config = ConfigDict(title="snowtrap detection record")

    contract_version: Literal[1] = CONTRACT_VERSION
    image_id: ImageId
    file: str = Field(description="`<camera id>/<path as uploaded>` (MegaDetector `file`)")
    detections: list[WireDetection]
    max_detection_conf: Unit
    leopard_score: Unit = Field(description="the classifier's P(snow leopard)")
    gate_threshold: Unit
    detector_ran: bool
    model_name: str
    model_version: str
    camera_id: str
    station_id: str
    capture_time: datetime | None = Field(description="EXIF capture time, ISO 8601")
    width: int = Field(ge=0)
    height: int = Field(ge=0)
    is_night: bool
    sent_at: float = Field(description="Unix time the uploader sent the image")
    processed_at: float = Field(description="Unix time the worker finished it")
    timings_ms: dict[str, float]
    source: RecordSource


class CropHeaders(_Headers):
    """The Kafka headers of a `trap.crops` message (value: JPEG bytes, no metadata)."""

    model_config = ConfigDict(title="snowtrap crop headers")

    contract: Literal["1"] = Field(alias="snowtrap-contract")
    crop_id: str = Field(alias="crop-id", pattern=r"^[0-9a-f]{64}:[0-9]+$")
    image_id: ImageId = Field(alias="image-id")
    box_index: str = Field(alias="box-index", pattern=INTEGER)
    box: str = Field(alias="box", description="JSON array: normalised [x, y, w, h]")
    score: str = Field(alias="score", pattern=NUMBER)
    camera_id: str = Field(alias="camera-id")
    station_id: str = Field(alias="station-id")
    model_version: str = Field(alias="model-version")
    content_type: Literal["image/jpeg"] = Field(alias="content-type")
    capture_time: str | None = Field(default=None, alias="capture-time", pattern=ISO_TIME)


class DeadLetterHeaders(_Headers):
    """The headers of a `trap.deadletter` message: the original message's, plus why and where.

    Its key and value are the original message's key and bytes."""

    model_config = ConfigDict(title="snowtrap dead-letter headers", extra="allow")

    image_id: str = Field(alias="image-id", description="the original's, else sha256 of the value")
    reason: str = Field(alias="dl-reason", min_length=1, description="machine-readable code")
    stage: str = Field(alias="dl-stage", min_length=1, description="where it failed")
    error: str = Field(alias="dl-error", max_length=2000)
    source_topic: str = Field(alias="dl-source-topic")
    source_partition: str = Field(alias="dl-source-partition", pattern=INTEGER)
    source_offset: str = Field(alias="dl-source-offset", pattern=INTEGER)
    failed_at: str = Field(alias="dl-failed-at", pattern=NUMBER)


class IdentityCandidate(_Wire):
    individual_id: str
    score: float = Field(description="verified score (LNBNN of the RANSAC inliers)")
    raw_score: float
    inliers: int = Field(ge=0)
    chip_id: int | None
    mirrored: bool


class IdentityRecordBody(_Wire):
    """The JSON value of a `trap.identities` message: one per crop the matcher matched."""

    model_config = ConfigDict(title="snowtrap identity record")

    contract: Literal[1] = CONTRACT_VERSION
    crop_id: str = Field(pattern=r"^[0-9a-f]{64}:[0-9]+$")
    image_id: ImageId
    box_index: int = Field(ge=0)
    box: BBox
    camera_id: str
    station_id: str
    capture_time: datetime | None
    detector_model_version: str
    decision: Literal["known", "new_candidate", "not_enough_texture"]
    individual_id: str | None
    score: float
    candidates: list[IdentityCandidate]
    n_keypoints: int = Field(ge=0)
    query_seconds: float = Field(ge=0)
    matcher_version: str
    db_version: int
    db_chips: int = Field(ge=0)
    matched_at: float


WIRE_MODELS: dict[str, type[BaseModel]] = {
    "detection_record": DetectionRecordBody,
    "crop_headers": CropHeaders,
    "deadletter_headers": DeadLetterHeaders,
    "identity_record": IdentityRecordBody,
}
"""Schema file stem -> model: `<stem>.schema.json` beside this module."""


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text(model: type[BaseModel]) -> str:
    return json.dumps(json_schema(model), indent=2, sort_keys=True) + "\n"


def schema_path(stem: str, folder: Path = SCHEMA_DIR) -> Path:
    return folder / f"{stem}.schema.json"


def write_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    """Render every wire model's JSON Schema into `folder`; returns the files written."""
    written = []
    for stem, model in WIRE_MODELS.items():
        path = schema_path(stem, folder)
        path.write_text(schema_text(model))
        written.append(path)
    return written


def header_text(headers: list[tuple[str, bytes]] | dict[str, bytes]) -> dict[str, str]:
    """Kafka headers as the text the header models describe."""
    items = headers.items() if isinstance(headers, dict) else headers
    return {name: value.decode("utf-8", "replace") for name, value in items}


if __name__ == "__main__":
    for written in write_schemas():
        print(written)
