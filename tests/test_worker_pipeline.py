"""The worker's pure batch logic (`stream.worker.pipeline`) with real test bundles, no Kafka.

Every message of a batch must end as exactly one outcome (a detection record with its crops,
or a dead letter naming reason and stage), in input order; crops must carry no metadata; a
model that fails for the whole batch must not take good images down with it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence, Set
from pathlib import Path

import numpy as np
import pytest
from helpers.bundle import test_bundle
from helpers.frames import Frame, make_frame, make_frames
from helpers.messages import (
    garbled_jpeg,
    image_message,
    pdf_bytes,
    text_file_bytes,
    truncated_jpeg,
)
from helpers.wire import assert_follows_schema
from PIL import Image

from snowtrap.models.bundle import ModelBundle, load_bundle
from snowtrap.models.decode import decode_trap_image
from snowtrap.stream.contracts import (
    H,
    image_id_of,
    parse_crop_message,
    parse_deadletter_message,
    parse_detection_message,
)
from snowtrap.stream.topics import TopicNames
from snowtrap.stream.worker.batch_types import (
    CLASSIFIER_DECODE_COVER,
    STAGE_CLASSIFY,
    STAGE_CONTRACT,
    STAGE_DECODE,
    BatchResult,
    InboundMessage,
    OutboundMessage,
    PipelineConfig,
    SourceRef,
)
from snowtrap.stream.worker.claim_check import ClaimCheckError
from snowtrap.stream.worker.cli import pipeline_config
from snowtrap.stream.worker.outputs import contract_bbox, crop_jpeg
from snowtrap.stream.worker.pipeline import process_batch
from snowtrap.stream.worker.settings import WorkerSettings

TOPICS = TopicNames()
GPS_IFD = 0x8825


@pytest.fixture(scope="module")
def detector_bundle() -> ModelBundle:
    return load_bundle(test_bundle("detector"), intra_op_threads=1)


def config_for(bundle: ModelBundle, **settings: object) -> PipelineConfig:
    return pipeline_config(
        WorkerSettings(bundle_dir=bundle.directory, topics=TOPICS, **settings), bundle.manifest
    )


def inbound(
    built: tuple[bytes | None, bytes | None, object], offset: int, partition: int = 0
) -> InboundMessage:
    key, value, headers = built
    return InboundMessage(
        key=key,
        value=value,
        headers=dict(headers),  # type: ignore[call-overload]
        source=SourceRef(TOPICS.images, partition, offset),
    )


def frame_message(frame: Frame, offset: int) -> InboundMessage:
    return inbound(image_message(frame.jpeg, frame.name, capture_time=frame.capture_time), offset)


def no_claim_checks(uri: str) -> bytes:
    raise ClaimCheckError("claim_check_forbidden", "no claim checks in this test")


def run(messages: Sequence[InboundMessage], models: object, config: PipelineConfig) -> BatchResult:
    return process_batch(messages, models, config, no_claim_checks)  # type: ignore[arg-type]


def assert_one_outcome_each(messages: Sequence[InboundMessage], batch: BatchResult) -> None:
    """One result per message, in order, each with exactly one record or one dead letter."""
    assert [r.message for r in batch.results] == list(messages)
    for result in batch.results:
        kinds = [output.kind for output in result.outputs]
        if result.letter is not None:
            assert result.record is None and not result.crops
            assert kinds == ["deadletter"]
        else:
            assert result.record is not None
            assert kinds == ["detection"] + ["crop"] * len(result.crops)
        assert_outputs_follow_the_schemas(result.outputs)


def assert_outputs_follow_the_schemas(outputs: Sequence[OutboundMessage]) -> None:
    """Every message the worker would produce is valid for its checked-in JSON Schema."""
    for output in outputs:
        if output.kind == "detection":
            assert_follows_schema("detection_record", output.value)
        else:
            stem = "crop_headers" if output.kind == "crop" else "deadletter_headers"
            assert_follows_schema(stem, output.headers)


# --- a mixed batch --------------------------------------------------------------------------


def test_mixed_batch_gives_records_and_dead_letters_with_reason_and_stage(
    detector_bundle: ModelBundle,
):
    config = config_for(detector_bundle)
    frames = make_frames(10, seed=11, leopard_rate=0.5, night_rate=0.3)
    good = [frame_message(frame, i) for i, frame in enumerate(frames)]
    base = frames[0].jpeg
    no_id = image_message(base, "no_id.jpg")
    no_id_headers = [(k, v) for k, v in no_id[2] if k != H.IMAGE_ID]
    wrong_version = [(k, b"99" if k == H.CONTRACT else v) for k, v in no_id[2]]
    bad = {
        "truncated": inbound(image_message(truncated_jpeg(base), "trunc.jpg"), 100),
        "garbled": inbound(image_message(garbled_jpeg(base, 1), "garbled.jpg"), 101),
        "text": inbound(image_message(text_file_bytes(), "notes.jpg"), 102),
        "pdf": inbound(image_message(pdf_bytes(), "sheet.jpg"), 103),
        "no_image_id": inbound((no_id[0], no_id[1], no_id_headers), 104),
        "wrong_version": inbound((no_id[0], no_id[1], wrong_version), 105),
        "id_mismatch": inbound((no_id[0], base + b"tail", no_id[2]), 106),
        "key_mismatch": inbound((b"another-camera", no_id[1], no_id[2]), 107),
        "empty": inbound((no_id[0], None, no_id[2]), 108),
        "no_headers": inbound((None, base, {}), 109),
    }
    messages = good[:5] + list(bad.values()) + good[5:]

    batch = run(messages, detector_bundle, config)

    assert_one_outcome_each(messages, batch)
    by_offset = {r.message.source.offset: r for r in batch.results}
    expected = {
        "truncated": ("truncated", STAGE_DECODE),
        "garbled": ("corrupt", STAGE_DECODE),
        "text": ("not_an_image", STAGE_DECODE),
        "pdf": ("not_an_image", STAGE_DECODE),
        "no_image_id": ("missing_header", STAGE_CONTRACT),
        "wrong_version": ("unknown_contract_version", STAGE_CONTRACT),
        "id_mismatch": ("image_id_mismatch", STAGE_CONTRACT),
        "key_mismatch": ("bad_key", STAGE_CONTRACT),
        "empty": ("empty_payload", STAGE_CONTRACT),
        "no_headers": ("missing_header", STAGE_CONTRACT),
    }
    for name, message in bad.items():
        result = by_offset[message.source.offset]
        assert result.outcome == "deadletter", name
        assert result.letter is not None
        assert (result.letter.reason, result.letter.stage) == expected[name], name
        assert result.letter.error, name
        # The dead letter carries the original message and where it came from.
        (output,) = result.outputs
        letter = parse_deadletter_message(output.key, output.value, output.headers)
        assert output.topic == TOPICS.deadletter
        assert (letter.value or b"") == (message.value or b"")
        assert letter.key == message.key
        assert (
            letter.headers.items()
            >= {k: v for k, v in message.headers.items() if k != H.IMAGE_ID}.items()
        )
        assert (letter.source_topic, letter.source_offset) == (TOPICS.images, message.source.offset)
        assert (letter.reason, letter.stage) == expected[name]

    for frame, message in zip(frames, good, strict=True):
        result = by_offset[message.source.offset]
        assert result.outcome in ("leopard", "no_leopard"), frame.name
        (detection_output,) = [o for o in result.outputs if o.kind == "detection"]
        assert detection_output.topic == TOPICS.detections
        record = parse_detection_message(detection_output.value)
        assert record.image_id == image_id_of(frame.jpeg)
        assert record.file == f"cam-k2-07/{frame.name}"
        assert (record.width, record.height) == (640, 480)
        assert record.is_night == frame.is_night
        assert record.capture_time == frame.capture_time
        assert record.source == {
            "topic": TOPICS.images,
            "partition": 0,
            "offset": message.source.offset,
        }
        assert record.model_version == detector_bundle.version
        assert set(record.timings_ms) >= {"decode", "classify"}
        # The stand-in detector finds the synthetic leopards and nothing on empty frames.
        assert result.is_leopard == frame.has_leopard, frame.name
        assert record.detector_ran == (record.leopard_score >= config.gate_threshold)
        for detection in record.detections:
            x, y, w, h = detection.bbox
            assert 0 <= x <= 1 and 0 <= y <= 1 and x + w <= 1 and y + h <= 1
            assert detection.category == "1"
            assert detection.conf >= config.detection_threshold
    assert set(batch.stage_seconds) >= {"decode", "classify", "detect", "crop"}


def test_bad_header_values_are_contract_dead_letters(detector_bundle: ModelBundle):
    config = config_for(detector_bundle)
    jpeg = make_frame(5, leopard=False, night=False).jpeg
    key, value, headers = image_message(jpeg, "a.jpg")
    bad_sent_at = [(k, b"yesterday" if k == H.SENT_AT else v) for k, v in headers]
    bad_time = [(k, v) for k, v in headers] + [(H.CAPTURE_TIME, b"not a time")]
    latin1 = [(k, "caméra".encode("latin-1") if k == H.CAMERA_ID else v) for k, v in headers]
    messages = [
        inbound((key, value, bad_sent_at), 0),
        inbound((key, value, bad_time), 1),
        inbound((key, value, latin1), 2),
    ]
    batch = run(messages, detector_bundle, config)
    assert_one_outcome_each(messages, batch)
    for result in batch.results:
        assert result.letter is not None
        assert (result.letter.reason, result.letter.stage) == ("bad_header", STAGE_CONTRACT)


def test_claim_checks_are_read_checked_and_refused_with_reasons(
    detector_bundle: ModelBundle, tmp_path: Path
):
    config = config_for(detector_bundle)
    jpeg = make_frame(6, leopard=True, night=False).jpeg
    stored = tmp_path / "stored.jpg"
    stored.write_bytes(jpeg)

    def claim(uri: str, data: bytes) -> InboundMessage:
        key, _, headers = image_message(data, "big.jpg")
        return inbound((key, b"", [*headers, (H.CLAIM_CHECK, uri.encode())]), 0)

    def reader(uri: str) -> bytes:
        if uri == stored.as_uri():
            return stored.read_bytes()
        raise ClaimCheckError("claim_check_missing", uri)

    messages = [
        claim(stored.as_uri(), jpeg),
        claim((tmp_path / "gone.jpg").as_uri(), jpeg),
        claim(stored.as_uri(), jpeg + b"other bytes"),  # the id promises different bytes
    ]
    batch = process_batch(messages, detector_bundle, config, reader)
    assert_one_outcome_each(messages, batch)
    ok, missing, mismatch = batch.results
    assert ok.record is not None and ok.record.image_id == image_id_of(jpeg)
    assert missing.letter is not None
    assert (missing.letter.reason, missing.letter.stage) == ("claim_check_missing", STAGE_DECODE)
    assert mismatch.letter is not None
    assert (mismatch.letter.reason, mismatch.letter.stage) == ("image_id_mismatch", STAGE_DECODE)


# --- crops ----------------------------------------------------------------------------------


def test_crops_are_full_resolution_jpegs_without_exif_or_gps(detector_bundle: ModelBundle):
    config = config_for(detector_bundle)
    frames = [make_frame(900 + i, leopard=True, night=i % 2 == 1) for i in range(4)]
    for frame in frames:  # the inputs do carry EXIF with GPS, as trap cameras write
        assert Image.open(io.BytesIO(frame.jpeg)).getexif().get_ifd(GPS_IFD)
    messages = [frame_message(frame, i) for i, frame in enumerate(frames)]
    batch = run(messages, detector_bundle, config)
    assert_one_outcome_each(messages, batch)

    crops = 0
    for result in batch.results:
        assert result.record is not None and result.record.detections, result.message
        above = [d for d in result.record.detections if d.conf >= config.crop_threshold]
        assert len(result.crops) == len(above)
        for crop, output in zip(
            result.crops, [o for o in result.outputs if o.kind == "crop"], strict=True
        ):
            crops += 1
            assert output.topic == TOPICS.crops
            parsed = parse_crop_message(output.value, output.headers)
            assert parsed.image_id == result.record.image_id
            assert parsed.camera_id == "cam-k2-07"
            image = Image.open(io.BytesIO(parsed.jpeg))
            assert image.format == "JPEG"
            assert not image.getexif()
            assert not image.getexif().get_ifd(GPS_IFD)
            assert "exif" not in image.info and "icc_profile" not in image.info
            # Cut from the 640 x 480 original (with margin), not the 224-pixel analysis decode.
            _, _, w, h = crop.box
            assert image.width >= int(w * 640) - 1 and image.height >= int(h * 480) - 1
            assert image.width <= 640 and image.height <= 480
    assert crops >= len(frames)


def test_crop_jpeg_shrinks_to_fit_the_message_limit():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    jpeg = crop_jpeg(noise, (0.0, 0.0, 1.0, 1.0), 0.0, 95, max_bytes=200_000)
    assert len(jpeg) <= 200_000
    image = Image.open(io.BytesIO(jpeg))
    assert image.width < 1600 and not image.getexif()


def test_contract_bbox_rounds_inside_the_image():
    for box in [(0.12345, 0.5, 0.87655, 0.5), (0.12346, 0.0, 0.87655, 1.0), (0.99994, 0, 1, 1)]:
        fitted = contract_bbox(box)
        assert fitted is not None
        x, y, w, h = fitted
        assert x + w <= 1.0 and y + h <= 1.0
        assert all(round(v, 4) == v for v in fitted)
    assert contract_bbox((0.5, 0.5, 0.0, 0.1)) is None
    assert contract_bbox((float("nan"), 0, 0.1, 0.1)) is None
    assert contract_bbox((-0.1, -0.2, 0.5, 0.5)) == (0.0, 0.0, 0.5, 0.5)


def test_a_classifier_only_bundle_reports_scores_and_never_crops():
    bundle = load_bundle(test_bundle("classifier"), intra_op_threads=1)
    config = config_for(bundle)
    frames = make_frames(6, seed=4, leopard_rate=0.5)
    messages = [frame_message(frame, i) for i, frame in enumerate(frames)]
    batch = run(messages, bundle, config)
    assert_one_outcome_each(messages, batch)
    for frame, result in zip(frames, batch.results, strict=True):
        assert result.record is not None
        assert result.record.detections == [] and not result.record.detector_ran
        assert not result.crops
        assert result.is_leopard == frame.has_leopard


# --- model failures -------------------------------------------------------------------------


def test_a_model_failing_for_every_image_dead_letters_each_with_its_stage():
    bundle = load_bundle(test_bundle("mismatched"), intra_op_threads=1)
    config = config_for(bundle)
    frames = make_frames(5, seed=8, leopard_rate=0.4)
    messages = [frame_message(frame, i) for i, frame in enumerate(frames)]
    messages.append(inbound(image_message(text_file_bytes(), "notes.jpg"), 5))
    batch = run(messages, bundle, config)
    assert_one_outcome_each(messages, batch)
    for result in batch.results[:-1]:
        assert result.letter is not None
        assert (result.letter.reason, result.letter.stage) == ("model_error", STAGE_CLASSIFY)
        assert "at " in result.letter.error  # names where it failed
        (output,) = result.outputs
        letter = parse_deadletter_message(output.key, output.value, output.headers)
        assert letter.value == result.message.value
    last = batch.results[-1].letter
    assert last is not None and (last.reason, last.stage) == ("not_an_image", STAGE_DECODE)


def test_a_batch_only_the_model_cannot_take_falls_back_to_one_image_at_a_time(
    detector_bundle: ModelBundle,
):
    bundle = load_bundle(test_bundle("batch1"), intra_op_threads=1)
    config = config_for(bundle)
    frames = make_frames(6, seed=9, leopard_rate=0.5)
    messages = [frame_message(frame, i) for i, frame in enumerate(frames)]
    with pytest.raises(Exception):  # noqa: B017 - ONNX Runtime raises its own error types
        bundle.classify([decode_trap_image(f.jpeg, max_side=224).rgb for f in frames[:2]])
    batch = run(messages, bundle, config)
    assert_one_outcome_each(messages, batch)
    reference = run(messages, detector_bundle, config_for(detector_bundle))
    for frame, result, ref in zip(frames, batch.results, reference.results, strict=True):
        assert result.letter is None, result.letter
        assert result.record is not None and ref.record is not None
        assert result.is_leopard == frame.has_leopard
        assert result.record.leopard_score == pytest.approx(ref.record.leopard_score, abs=1e-3)


def fingerprint(rgb: np.ndarray) -> float:
    return round(float(rgb.mean()), 3)


class PoisonousImages:
    """The detector bundle, except that one stage fails for any model batch that holds one
    of the poisonous images (known by the fingerprint of their analysis decode). It notes
    the pixel sizes each model was given."""

    def __init__(self, bundle: ModelBundle, stage: str = "", poison: Set[float] = frozenset()):
        self.bundle = bundle
        self.stage = stage
        self.poison = poison
        self.seen: dict[str, list[tuple[int, ...]]] = {"classify": [], "detect": []}

    @property
    def has_detector(self) -> bool:
        return True

    def _check(self, stage: str, images: Sequence[np.ndarray]) -> None:
        self.seen[stage] += [rgb.shape for rgb in images]
        if stage == self.stage and any(fingerprint(rgb) in self.poison for rgb in images):
            raise RuntimeError(f"{stage} model crashed on a poisonous image")

    def classify(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self._check("classify", images)
        return self.bundle.classify(images)

    def detect(self, images: Sequence[np.ndarray], min_score: float | None = None) -> list:
        self._check("detect", images)
        return self.bundle.detect(images, min_score=min_score)


@pytest.mark.parametrize("stage", ["classify", "detect"])
def test_one_poisonous_image_does_not_take_its_batch_mates_down(
    detector_bundle: ModelBundle, stage: str
):
    config = config_for(detector_bundle)
    frames = make_frames(12, seed=12, leopard_rate=0.5)
    leopards = [frame for frame in frames if frame.has_leopard]
    poisonous = {leopards[0].name, leopards[-1].name}  # leopards reach the detector too
    poison = {  # what the classifier sees, and what the detector sees
        fingerprint(decode_trap_image(frame.jpeg, **size).rgb)  # type: ignore[arg-type]
        for frame in frames
        if frame.name in poisonous
        for size in (
            {"min_size": first_decode_size(config)},
            {"max_side": config.analysis_max_side},
        )
    }
    messages = [frame_message(frame, i) for i, frame in enumerate(frames)]
    batch = run(messages, PoisonousImages(detector_bundle, stage, poison), config)
    assert_one_outcome_each(messages, batch)
    for frame, result in zip(frames, batch.results, strict=True):
        if frame.name in poisonous:
            assert result.letter is not None
            assert (result.letter.reason, result.letter.stage) == ("model_error", stage)
            assert "poisonous" in result.letter.error
        else:
            assert result.letter is None, (frame.name, result.letter)
            assert result.is_leopard == frame.has_leopard


def test_records_are_json_with_the_megadetector_core(detector_bundle: ModelBundle):
    config = config_for(detector_bundle)
    frame = make_frame(31, leopard=True, night=False)
    batch = run([frame_message(frame, 0)], detector_bundle, config)
    body = json.loads(batch.results[0].outputs[0].value)
    assert body["file"] == f"cam-k2-07/{frame.name}"
    assert body["detections"] and set(body["detections"][0]) == {"category", "conf", "bbox"}
    assert body["max_detection_conf"] == body["detections"][0]["conf"]


def first_decode_size(config: PipelineConfig) -> tuple[int, int]:
    assert config.classifier_size is not None
    return (config.classifier_size[0] * 2, config.classifier_size[1] * 2)


def test_frames_are_decoded_only_as_large_as_each_model_needs(detector_bundle: ModelBundle):
    """The classifier (224 x 224) gets every 1280 x 960 frame from a 1/2 DCT decode (640 x 480
    covers twice 224 on both axes), the detector (here asked for an 800 side) only the frames
    past the gate, decoded again at its size; outcomes match one decode at the analysis size."""
    frames = make_frames(8, seed=21, leopard_rate=0.5, size=(1280, 960))
    messages = [frame_message(frame, i) for i, frame in enumerate(frames)]
    config = config_for(detector_bundle, analysis_max_side=800)
    assert config.classifier_size == (224, 224) and CLASSIFIER_DECODE_COVER == 2
    models = PoisonousImages(detector_bundle)
    batch = run(messages, models, config)
    assert_one_outcome_each(messages, batch)
    assert models.seen["classify"] == [(480, 640, 3)] * len(frames)
    passed = [r for r in batch.results if r.record is not None and r.record.detector_ran]
    assert passed and models.seen["detect"] == [(600, 800, 3)] * len(passed)

    every = PoisonousImages(detector_bundle)  # detect_all: one decode serves both models
    run(messages, every, config_for(detector_bundle, analysis_max_side=800, detect_all=True))
    assert every.seen["classify"] == every.seen["detect"] == [(600, 800, 3)] * len(frames)

    single = config_for(detector_bundle, analysis_max_side=800, decode_for_classifier=False)
    assert single.classifier_size is None
    reference = run(messages, detector_bundle, single)
    for frame, result, ref in zip(frames, batch.results, reference.results, strict=True):
        assert result.record is not None and ref.record is not None
        assert result.is_leopard == ref.is_leopard, frame.name  # (the head knows 640 x 480)
        assert result.record.leopard_score == pytest.approx(ref.record.leopard_score, abs=0.1)
        assert len(result.crops) == len(ref.crops)


def test_decoding_on_threads_gives_the_same_outcomes_in_order(detector_bundle: ModelBundle):
    frames = make_frames(9, seed=23, leopard_rate=0.5)
    messages = [frame_message(frame, i) for i, frame in enumerate(frames)]
    messages.insert(4, inbound(image_message(truncated_jpeg(frames[0].jpeg), "cut.jpg"), 99))
    one, three = (
        run(messages, detector_bundle, config_for(detector_bundle, decode_threads=threads))
        for threads in (1, 3)
    )
    assert_one_outcome_each(messages, three)
    for a, b in zip(one.results, three.results, strict=True):
        assert a.outcome == b.outcome and len(a.crops) == len(b.crops)
        if a.record is not None and b.record is not None:
            assert a.record.leopard_score == pytest.approx(b.record.leopard_score, abs=1e-6)
            assert a.record.detections == b.record.detections
    assert three.results[4].letter is not None and three.results[4].letter.reason == "truncated"
