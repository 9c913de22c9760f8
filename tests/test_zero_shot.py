"""The zero-shot bundle (`snowtrap bundle zero-shot OUT`): the pretrained backbone alone.

Built once through the CLI. Checked against what it promises: the classifier is exactly the
ImageNet snow-leopard probability, the CAM detector fits the existing detector contract and
finds the leopard where the classifier fires, the thresholds keep the real negative frames
of data/realdata out, and the stream worker's pure pipeline serves it unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers.messages import image_message

from snowtrap.cli import main as snowtrap_main
from snowtrap.models.backbone import load_efficientnet_lite0
from snowtrap.models.boxes import box_iou, xywh_to_xyxy
from snowtrap.models.bundle import ModelBundle, load_bundle, read_manifest
from snowtrap.models.classifier import SNOW_LEOPARD_IMAGENET_CLASS
from snowtrap.models.decode import decode_trap_image
from snowtrap.models.inference import preprocess_for_classifier, resize_rgb
from snowtrap.models.normalisation import EFFICIENTNET_LITE_NORMALISATION
from snowtrap.models.zero_shot import (
    DEFAULT_INPUT_SIZE,
    DEFAULT_THRESHOLDS,
    CamBoxDetector,
    area_matrix,
    build_zero_shot_bundle,
)
from snowtrap.stream.topics import TopicNames
from snowtrap.stream.worker.claim_check import ClaimCheckError
from snowtrap.stream.worker.cli import pipeline_config
from snowtrap.stream.worker.pipeline import InboundMessage, SourceRef, process_batch
from snowtrap.stream.worker.settings import WorkerSettings

REAL = Path(__file__).resolve().parents[1] / "data" / "realdata"
SYNTHETIC_SEED = 0
SYNTHETIC_IMAGES = 60
MIN_TOP_BOX_IOU = 0.3
"""Measured: mean 0.65 on the 3 one-leopard frames (a large leopard and an ibex, at night) of
the seed-0 survey that pass the gate; 0.40 on all 17 leopard frames, gated or not."""


@dataclass(frozen=True)
class Frame:
    name: str
    jpeg: bytes
    rgb: np.ndarray  # decoded as the worker does (longest side = the bundle's analysis side)
    truth: np.ndarray  # normalised xyxy leopard boxes, (0, 4) for none
    category: str


def _decode(jpeg: bytes) -> np.ndarray:
    return decode_trap_image(jpeg, max_side=DEFAULT_INPUT_SIZE).rgb


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("zero-shot") / "bundle"
    assert snowtrap_main(["bundle", "zero-shot", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> ModelBundle:
    return load_bundle(bundle_dir, intra_op_threads=2)


@pytest.fixture(scope="module")
def real_frames() -> list[Frame]:
    document = json.loads((REAL / "labels.json").read_text())
    category = {a["image_id"]: a.get("species") or a["category"] for a in document["annotations"]}
    frames = []
    for image in document["images"]:
        jpeg = (REAL / image["file_name"]).read_bytes()
        name = Path(image["file_name"]).name
        frames.append(Frame(name, jpeg, _decode(jpeg), np.zeros((0, 4)), category[image["id"]]))
    return frames


@pytest.fixture(scope="module")
def leopard_frames() -> list[Frame]:
    """Synthetic survey frames with exactly one leopard (other species may be there too)."""
    from snowtrap.training.synthetic.bodies import LEOPARD
    from snowtrap.training.synthetic.dataset import encode_trap_jpeg, plan_survey
    from snowtrap.training.synthetic.frames import render_trap_frame

    frames = []
    for planned in plan_survey(SYNTHETIC_IMAGES, SYNTHETIC_SEED):
        if [a.species for a in planned.spec.animals].count(LEOPARD) != 1:
            continue
        rendered = render_trap_frame(planned.spec)
        (animal,) = [a for a in rendered.animals if a.species == LEOPARD]
        x, y, w, h = animal.box
        width, height = planned.spec.width, planned.spec.height
        truth = np.array([[x / width, y / height, (x + w) / width, (y + h) / height]])
        jpeg = encode_trap_jpeg(rendered.rgb, planned.captured_at)
        frames.append(Frame(planned.file_name, jpeg, _decode(jpeg), truth, LEOPARD))
    assert frames, "the synthetic survey has no frame with one leopard"
    return frames


# --- the classifier is the ImageNet prior ---------------------------------------------------


def test_classifier_is_imagenet_snow_leopard_softmax(bundle: ModelBundle, real_frames):
    picked = [f for f in real_frames if f.category in ("ocelot", "leopard", "empty", "human")][:5]
    rgbs = [frame.rgb for frame in picked]
    net = load_efficientnet_lite0()
    pixels = preprocess_for_classifier(rgbs, EFFICIENTNET_LITE_NORMALISATION, 224)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(pixels)), dim=1)[:, 289].numpy()
    assert SNOW_LEOPARD_IMAGENET_CLASS == 289
    np.testing.assert_allclose(bundle.classify(rgbs), expected, rtol=1e-3, atol=1e-6)


def test_manifest_says_what_it_is(bundle_dir: Path):
    manifest = read_manifest(bundle_dir)
    assert manifest.class_names == ["snow_leopard"]
    assert manifest.thresholds == DEFAULT_THRESHOLDS
    detector = manifest.models["detector"]
    assert detector.io is not None
    assert detector.io.input_size == (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
    assert (detector.io.box_units, detector.io.label_offset, detector.io.nms_applied) == (
        "pixels",
        1,
        True,
    )
    assert manifest.metrics["real_negatives_pass_gate"] == 0
    assert manifest.provenance.training_config["kind"] == "zero-shot"
    assert any("zero-shot" in note for note in manifest.provenance.notes)


def test_area_matrix_shrinks_as_the_classifier_preprocessing_does():
    image = np.random.default_rng(0).random((384, 384)).astype(np.float32) * 255
    shrink = area_matrix(384, 224)
    expected = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(shrink @ image @ shrink.T, expected, atol=1e-3)
    np.testing.assert_allclose(area_matrix(224, 224), np.eye(224))


# --- the detector ---------------------------------------------------------------------------


def test_boxes_lie_inside_the_image(bundle: ModelBundle, real_frames, leopard_frames):
    frames = real_frames[:8] + leopard_frames
    found = bundle.detect([frame.rgb for frame in frames], min_score=0.0)
    assert len(found) == len(frames)
    assert any(found), "the CAM found no region on any frame"
    for frame, detections in zip(frames, found, strict=True):
        assert len(detections) <= 3, frame.name
        for detection in detections:
            x, y, w, h = detection.box_xywh_normalised
            assert x >= 0 and y >= 0 and w > 0 and h > 0, frame.name
            assert x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9, frame.name
            assert detection.label == "snow_leopard"
            assert 0 <= detection.score <= 1
        scores = [d.score for d in detections]
        assert scores == sorted(scores, reverse=True)


def test_top_box_finds_the_leopard_where_the_classifier_fires(bundle: ModelBundle, leopard_frames):
    rgbs = [frame.rgb for frame in leopard_frames]
    fired = [
        frame
        for frame, score in zip(leopard_frames, bundle.classify(rgbs), strict=True)
        if score >= bundle.manifest.thresholds.classifier_gate
    ]
    assert fired, (
        f"no one-leopard frame of the seed-{SYNTHETIC_SEED} survey passes the gate "
        "(3 did when this test was written): has the synthetic generator changed?"
    )
    found = bundle.detect([frame.rgb for frame in fired], min_score=0.0)
    # The exported graph gives torch's answer on frames where the CAM means something.
    canvas = np.stack([resize_rgb(f.rgb, DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE) for f in fired])
    pixels = np.ascontiguousarray(canvas.transpose(0, 3, 1, 2), dtype=np.float32)
    graph_boxes, graph_scores, _ = bundle.sessions["detector"].run(None, {"pixels": pixels})
    with torch.no_grad():
        torch_detector = CamBoxDetector(load_efficientnet_lite0(), DEFAULT_INPUT_SIZE).eval()
        boxes, scores, _ = torch_detector(torch.from_numpy(pixels))
    np.testing.assert_allclose(graph_scores, scores.numpy(), rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(graph_boxes, boxes.numpy(), atol=1e-3)
    for frame, detections in zip(fired, found, strict=True):
        assert detections, frame.name
        top = xywh_to_xyxy(np.array(detections[0].box_xywh_normalised))
        iou = float(box_iou(top, frame.truth).max())
        print(f"{frame.name}: top box IoU {iou:.3f}, score {detections[0].score:.4f}")
        assert iou > MIN_TOP_BOX_IOU, (frame.name, iou)
        # The top box scores the classifier's probability up to resampling: what the gate
        # lets through is cropped (measured: 0.0093-0.019 against a crop threshold of 0.0075).
        assert detections[0].score >= bundle.manifest.thresholds.crop, frame.name


# --- operating point on real negatives --------------------------------------------------------


def test_real_negatives_stay_out(bundle: ModelBundle, real_frames):
    assert len(real_frames) == 24
    thresholds = bundle.manifest.thresholds
    rgbs = [frame.rgb for frame in real_frames]
    scores = bundle.classify(rgbs)
    passed = [
        f.name for f, s in zip(real_frames, scores, strict=True) if s >= thresholds.classifier_gate
    ]
    assert len(passed) <= 1, passed
    found = bundle.detect(rgbs, min_score=thresholds.crop)  # the detector on every frame
    assert not any(found), [(f.name, d) for f, d in zip(real_frames, found, strict=True) if d]


# --- CLI ------------------------------------------------------------------------------------


def test_verify_and_show(bundle_dir: Path, capsys: pytest.CaptureFixture[str]):
    assert snowtrap_main(["bundle", "verify", str(bundle_dir), "--threads", "2"]) == 0
    assert "OK" in capsys.readouterr().out
    assert snowtrap_main(["bundle", "show", str(bundle_dir)]) == 0
    shown = capsys.readouterr().out
    assert "snowtrap-zero-shot" in shown and "detector.onnx" in shown


def test_existing_out_needs_force(bundle_dir: Path, capsys: pytest.CaptureFixture[str]):
    before = (bundle_dir / "manifest.json").read_bytes()
    assert snowtrap_main(["bundle", "zero-shot", str(bundle_dir)]) == 1
    error = capsys.readouterr().err
    assert str(bundle_dir) in error and "--force" in error
    with pytest.raises(FileExistsError):
        build_zero_shot_bundle(bundle_dir)
    assert (bundle_dir / "manifest.json").read_bytes() == before


def test_missing_weights_file_is_a_clear_error(tmp_path: Path, capsys):
    missing = tmp_path / "nope.pth"
    assert (
        snowtrap_main(["bundle", "zero-shot", str(tmp_path / "b"), "--weights", str(missing)]) == 1
    )
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


# --- the worker serves it unchanged ------------------------------------------------------------


def test_worker_pipeline_serves_the_zero_shot_bundle(
    bundle: ModelBundle, real_frames, leopard_frames
):
    topics = TopicNames()
    config = pipeline_config(
        WorkerSettings(bundle_dir=bundle.directory, topics=topics), bundle.manifest
    )
    scores = bundle.classify([frame.rgb for frame in leopard_frames])
    leopard = leopard_frames[int(np.argmax(scores))]
    ocelot = next(frame for frame in real_frames if frame.category == "ocelot")
    messages = []
    for offset, frame in enumerate((ocelot, leopard)):
        key, value, headers = image_message(frame.jpeg, Path(frame.name).name)
        source = SourceRef(topics.images, 0, offset)
        messages.append(InboundMessage(key=key, value=value, headers=dict(headers), source=source))

    def no_claim_checks(uri: str) -> bytes:
        raise ClaimCheckError("claim_check_forbidden", uri)

    batch = process_batch(messages, bundle, config, no_claim_checks)

    assert [result.message for result in batch.results] == messages
    for result in batch.results:
        assert result.letter is None and result.record is not None
        assert result.outputs[0].kind == "detection"
        assert result.record.model_version == bundle.version
    ocelot_record, leopard_record = (result.record for result in batch.results)
    assert ocelot_record.leopard_score < config.gate_threshold
    assert not ocelot_record.detector_ran and not ocelot_record.detections
    assert leopard_record.leopard_score >= config.gate_threshold
    assert leopard_record.detector_ran and leopard_record.detections
    leopard_result = batch.results[1]
    assert leopard_result.is_leopard and leopard_result.crops
    assert [o.kind for o in leopard_result.outputs] == ["detection"] + ["crop"] * len(
        leopard_result.crops
    )
    for detection in leopard_record.detections:
        x, y, w, h = detection.bbox
        assert x >= 0 and y >= 0 and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9
        assert detection.conf >= config.detection_threshold
