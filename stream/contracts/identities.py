"""`trap.identities`: key = image id (as on crops), value = the JSON identity record of one
crop, written by the matcher (`stream.matcher.service.identity_record` fills it in)."""

from __future__ import annotations

import json
from typing import Any

from snowtrap.stream.contracts.headers import CONTRACT_VERSION, ContractError, H, Headers

IDENTITY_CONTENT_TYPE = b"application/json"
IDENTITY_REQUIRED = ("crop_id", "image_id", "decision", "candidates", "matcher_version")


def build_identity_message(record: dict[str, Any]) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) for `trap.identities`; the key is the image id, as on crops."""
    headers: Headers = [
        (H.CONTRACT, str(CONTRACT_VERSION).encode()),
        (H.CROP_ID, record["crop_id"].encode()),
        (H.IMAGE_ID, record["image_id"].encode()),
        (H.CAMERA_ID, record["camera_id"].encode()),
        (H.CONTENT_TYPE, IDENTITY_CONTENT_TYPE),
    ]
    value = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return record["image_id"].encode(), value, headers


def parse_identity_message(value: bytes) -> dict[str, Any]:
    """Read a `trap.identities` record (tests, dashboards); raises ContractError."""
    try:
        record = json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ContractError("bad_record", "identity record is not JSON") from exc
    if not isinstance(record, dict) or record.get("contract") != CONTRACT_VERSION:
        raise ContractError("unknown_contract_version", "not a known identity record")
    for name in IDENTITY_REQUIRED:
        if name not in record:
            raise ContractError("bad_record", f"identity record lacks {name!r}")
    return record
