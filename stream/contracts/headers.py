"""Kafka headers of the snowtrap topics: names, encoding (UTF-8 text, ISO 8601 times, numbers),
the contract version, the error every contract raises, and the image id."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

CONTRACT_VERSION = 1
"""Bumped on any incompatible change; consumers reject versions they do not know."""

Headers = list[tuple[str, bytes]]
"""Headers as this module builds them (kafka-python's shape)."""
HeadersIn = Iterable[tuple[str, bytes | None]] | Mapping[str, Any] | None
"""Headers as consumers receive them: kafka-python tuples or a Faust dict."""


class ContractError(ValueError):
    """A message does not follow the contract. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


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


def header_text(headers: Mapping[str, bytes], name: str, *, required: bool = True) -> str | None:
    raw = headers.get(name)
    if raw is None or raw == b"":
        if required:
            raise ContractError("missing_header", f"header {name!r} is required")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError("bad_header", f"header {name!r} is not UTF-8") from exc


def header_float(headers: Mapping[str, bytes], name: str, *, required: bool = True) -> float | None:
    text = header_text(headers, name, required=required)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise ContractError("bad_header", f"header {name!r}={text!r} is not a number") from exc
    if not math.isfinite(value):
        raise ContractError("bad_header", f"header {name!r}={text!r} is not finite")
    return value


def header_time(headers: Mapping[str, bytes], name: str) -> datetime | None:
    text = header_text(headers, name, required=False)
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ContractError("bad_header", f"header {name!r}={text!r} is not ISO 8601") from exc


def check_version(headers: Mapping[str, bytes]) -> None:
    version = header_text(headers, H.CONTRACT)
    if version != str(CONTRACT_VERSION):
        raise ContractError(
            "unknown_contract_version",
            f"contract version {version!r}, this consumer understands {CONTRACT_VERSION}",
        )


def image_id_of(data: bytes) -> str:
    """The image id: sha256 of the bytes as uploaded, so re-sends are recognisable."""
    return hashlib.sha256(data).hexdigest()


def is_image_id(image_id: str) -> bool:
    return len(image_id) == 64 and all(c in "0123456789abcdef" for c in image_id)
