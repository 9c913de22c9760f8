"""The contracts build what they parse, and reject what breaks them with a named reason."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import jsonschema
import pytest
from helpers.wire import assert_follows_schema

from snowtrap.stream.contracts import (
    CONTRACT_VERSION,
    ContractError,
    Crop,
    DeadLetter,
    Detection,
    DetectionRecord,
    H,
    TrapImage,
    build_crop_message,
    build_deadletter_message,
    build_detection_message,
    build_image_message,
    image_id_of,
    parse_crop_message,
    parse_deadletter_message,
    parse_detection_message,
    parse_image_message,
)
from snowtrap.stream.contracts.wire import WIRE_MODELS, schema_path, schema_text

T0 = datetime(2024, 3, 1, 6, 0, 0, tzinfo=UTC)
PAYLOAD = b"\xff\xd8\xff\xe0 not really a jpeg but bytes are bytes \xff\xd9"


def make_image(**changes) -> TrapImage:
    fields = dict(
        image_id=image_id_of(PAYLOAD),
        camera_id="cam-07",
        station_id="station-north",
        file_name="DCIM/IMG_0001.JPG",
        content_type="image/jpeg",
        capture_time=datetime(2026, 1, 5, 6, 30, 12),
        sent_at=1_770_000_000.25,
        payload=PAYLOAD,
        size_bytes=len(PAYLOAD),
    )
    fields.update(changes)
    return TrapImage(**fields)


def test_image_message_round_trip():
    image = make_image()
    key, value, headers = build_image_message(image)
    assert key == b"cam-07"
    assert value == PAYLOAD
    assert parse_image_message(key, value, headers) == image


def test_image_message_accepts_faust_style_header_dict():
    key, value, headers = build_image_message(make_image())
    as_dict = {name: raw for name, raw in headers}
    assert parse_image_message(key, value, as_dict).camera_id == "cam-07"


def test_claim_check_image_round_trip():
    image = make_image(payload=None, claim_check="file:///data/big.jpg", size_bytes=40_000_000)
    key, value, headers = build_image_message(image)
    assert value == b""
    parsed = parse_image_message(key, value, headers)
    assert parsed.claim_check == "file:///data/big.jpg"
    assert parsed.payload is None
    assert parsed.size_bytes == 40_000_000


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: h.pop(H.IMAGE_ID), "missing_header"),
        (lambda h: h.pop(H.CAMERA_ID), "missing_header"),
        (lambda h: h.__setitem__(H.CONTRACT, b"99"), "unknown_contract_version"),
        (lambda h: h.__setitem__(H.IMAGE_ID, b"abc"), "bad_header"),
        (lambda h: h.__setitem__(H.IMAGE_ID, b"0" * 64), "image_id_mismatch"),
        (lambda h: h.__setitem__(H.SENT_AT, b"yesterday"), "bad_header"),
        (lambda h: h.__setitem__(H.CAPTURE_TIME, b"5 Jan"), "bad_header"),
        (lambda h: h.__setitem__(H.CAMERA_ID, b"\xff\xfe"), "bad_header"),
    ],
)
def test_malformed_image_headers_are_rejected_with_reason(mutate, reason):
    key, value, headers = build_image_message(make_image())
    h = dict(headers)
    mutate(h)
    with pytest.raises(ContractError) as info:
        parse_image_message(key, value, h)
    assert info.value.reason == reason


def test_image_without_bytes_or_claim_check_is_rejected():
    key, _, headers = build_image_message(make_image())
    with pytest.raises(ContractError) as info:
        parse_image_message(key, b"", headers)
    assert info.value.reason == "empty_payload"


def test_image_key_must_be_camera_id():
    _, value, headers = build_image_message(make_image())
    with pytest.raises(ContractError) as info:
        parse_image_message(b"another-camera", value, headers)
    assert info.value.reason == "bad_key"


def make_record(**changes) -> DetectionRecord:
    fields = dict(
        image_id=image_id_of(PAYLOAD),
        file="cam-07/IMG_0001.JPG",
        detections=[Detection("1", 0.91, (0.1, 0.2, 0.3, 0.4))],
        leopard_score=0.97,
        gate_threshold=0.2,
        detector_ran=True,
        model_name="snowtrap-synthetic",
        model_version="2026.11.24",
        camera_id="cam-07",
        station_id="station-north",
        capture_time=datetime(2026, 1, 5, 6, 30, 12, tzinfo=UTC),
        width=4000,
        height=3000,
        is_night=False,
        sent_at=1.0,
        processed_at=2.0,
        timings_ms={"decode": 12.5, "classify": 30.0},
        source={"topic": "trap.images", "partition": 3, "offset": 17},
    )
    fields.update(changes)
    return DetectionRecord(**fields)


def test_detection_record_round_trip_and_megadetector_core():
    record = make_record()
    key, value, _ = build_detection_message(record)
    assert key == record.image_id.encode()
    body = json.loads(value)
    assert body["contract_version"] == CONTRACT_VERSION
    assert body["file"] == "cam-07/IMG_0001.JPG"
    assert body["detections"] == [{"category": "1", "conf": 0.91, "bbox": [0.1, 0.2, 0.3, 0.4]}]
    assert body["max_detection_conf"] == 0.91
    assert parse_detection_message(value) == record


@pytest.mark.parametrize(
    "bbox", [(0.5, 0.5, 0.6, 0.1), (-0.1, 0.0, 0.2, 0.2), (0.0, 0.0, -0.1, 0.1), (0, 0, 1)]
)
def test_detection_boxes_must_be_normalised(bbox):
    with pytest.raises(ContractError) as info:
        build_detection_message(make_record(detections=[Detection("1", 0.5, bbox)]))
    assert info.value.reason == "bad_record"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"[1, 2]", "bad_record"),
        (json.dumps({"contract_version": 42}).encode(), "unknown_contract_version"),
        (json.dumps({"contract_version": CONTRACT_VERSION}).encode(), "bad_record"),
    ],
)
def test_malformed_detection_records_are_rejected(value, reason):
    with pytest.raises(ContractError) as info:
        parse_detection_message(value)
    assert info.value.reason == reason


def test_crop_round_trip_links_back_to_image():
    crop = Crop(
        image_id=image_id_of(PAYLOAD),
        box_index=1,
        box=(0.25, 0.5, 0.2, 0.1),
        score=0.88,
        camera_id="cam-07",
        station_id="station-north",
        capture_time=None,
        model_version="v1",
        jpeg=b"\xff\xd8\xff\xdb crop \xff\xd9",
    )
    key, value, headers = build_crop_message(crop)
    assert key == crop.image_id.encode()
    parsed = parse_crop_message(value, headers)
    assert parsed == crop
    assert parsed.crop_id == f"{crop.image_id}:1"


def test_crop_must_be_jpeg():
    crop = Crop(image_id_of(b"x"), 0, (0, 0, 1, 1), 0.9, "c", "s", None, "v", b"GIF89a")
    with pytest.raises(ContractError):
        build_crop_message(crop)


def test_deadletter_keeps_original_bytes_headers_and_says_why():
    key, value, headers = build_image_message(make_image())
    letter = DeadLetter(
        reason="truncated",
        stage="decode",
        error="image file is truncated",
        source_topic="trap.images",
        source_partition=2,
        source_offset=41,
        key=key,
        value=value,
        headers=dict(headers),
    )
    dl_key, dl_value, dl_headers = build_deadletter_message(letter)
    assert (dl_key, dl_value) == (key, value)
    parsed = parse_deadletter_message(dl_key, dl_value, dl_headers)
    assert parsed.reason == "truncated"
    assert parsed.stage == "decode"
    assert (parsed.source_topic, parsed.source_partition, parsed.source_offset) == (
        "trap.images",
        2,
        41,
    )
    assert parsed.headers == dict(headers)
    assert parsed.image_id == image_id_of(PAYLOAD)


def test_deadletter_without_image_id_header_uses_sha256_of_bytes():
    letter = DeadLetter(
        "missing_header", "contract", "no headers", "trap.images", 0, 5, None, b"junk", {}
    )
    _, _, headers = build_deadletter_message(letter)
    assert dict(headers)[H.IMAGE_ID] == image_id_of(b"junk").encode()


# --- the checked-in JSON Schemas ----------------------------------------------------------


@pytest.mark.parametrize("stem", sorted(WIRE_MODELS))
def test_checked_in_schemas_are_the_generated_ones(stem):
    """Edit the models in stream/contracts/wire.py, then run
    `python -m snowtrap.stream.contracts.wire` to rewrite the files."""
    assert schema_path(stem).read_text() == schema_text(WIRE_MODELS[stem])


def test_built_messages_follow_the_schemas():
    _, value, _ = build_detection_message(make_record())
    assert_follows_schema("detection_record", value)
    crop = Crop(
        image_id_of(PAYLOAD), 2, (0.25, 0.5, 0.2, 0.1), 0.88, "cam-07", "st", T0, "v1", b"\xff\xd8"
    )
    _, _, headers = build_crop_message(crop)
    assert_follows_schema("crop_headers", headers)
    key, image, original = build_image_message(make_image())
    letter = DeadLetter("truncated", "decode", "cut short", "trap.images", 2, 41, key, image, {})
    _, _, headers = build_deadletter_message(dataclasses.replace(letter, headers=dict(original)))
    assert_follows_schema("deadletter_headers", headers)


def test_the_schemas_refuse_what_the_contract_refuses():
    _, value, _ = build_detection_message(make_record())
    body = json.loads(value)
    for broken in (
        {**body, "contract_version": 2},
        {**body, "detections": [{"category": "1", "conf": 0.5, "bbox": [0.1, 0.2, 1.3, 0.4]}]},
        {k: v for k, v in body.items() if k != "image_id"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            assert_follows_schema("detection_record", broken)
