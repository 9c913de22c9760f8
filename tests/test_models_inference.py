"""Box geometry, classifier preprocessing and the detector output contract (no real model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou
from torchvision.ops import nms as tv_nms

from snowtrap.models.boxes import (
    Detection,
    batched_nms,
    box_iou,
    clip_xyxy,
    crop_region_pixels,
    cxcywh_to_xyxy,
    denormalise_xyxy,
    expand_xyxy,
    letterbox_geometry,
    nms,
    normalise_xyxy,
    undo_letterbox_xyxy,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from snowtrap.models.inference import (
    letterbox_rgb,
    pixels_to_input,
    preprocess_for_classifier,
    run_detector,
)
from snowtrap.models.manifest import DetectorIO, ModelEntry, NormalisationSpec, TensorSpec
from snowtrap.models.normalisation import (
    EFFICIENTNET_LITE_NORMALISATION,
    IMAGENET_NORMALISATION,
    Normalisation,
)


def random_boxes(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 100, (count, 2))
    return np.concatenate([corners, corners + rng.uniform(1, 40, (count, 2))], axis=1)


def test_box_conversions_round_trip() -> None:
    boxes = random_boxes(20, 0)
    np.testing.assert_allclose(xywh_to_xyxy(xyxy_to_xywh(boxes)), boxes)
    centre = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    np.testing.assert_allclose(cxcywh_to_xyxy(centre), boxes)
    np.testing.assert_allclose(denormalise_xyxy(normalise_xyxy(boxes, 640, 480), 640, 480), boxes)
    assert clip_xyxy(np.array([[-0.2, 0.5, 1.3, 0.9]])).tolist() == [[0.0, 0.5, 1.0, 0.9]]


def test_iou_and_nms_agree_with_torchvision() -> None:
    boxes, scores = random_boxes(200, 1), np.random.default_rng(2).uniform(size=200)
    expected_iou = tv_box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    np.testing.assert_allclose(box_iou(boxes, boxes), expected_iou, atol=1e-9)
    for threshold in (0.3, 0.5, 0.7):
        expected = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, threshold), expected)
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def test_batched_nms_keeps_overlapping_boxes_of_different_classes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], dtype=float)
    kept = batched_nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([1, 1, 2]), 0.5)
    assert sorted(kept.tolist()) == [0, 2]


def test_nms_with_nested_share_drops_parts_and_oversized_boxes_the_iou_test_keeps() -> None:
    animal = [100, 100, 300, 200]
    head = [110, 110, 170, 170]  # inside the animal box, IoU 0.18
    oversized = [60, 70, 380, 260]  # around the animal box, IoU 0.33
    other = [280, 150, 400, 230]  # a second animal overlapping the first by a corner
    boxes = np.array([animal, head, oversized, other], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3]  # IoU alone keeps them all
    assert nms(boxes, scores, 0.5, nested_share=0.9).tolist() == [0, 3]
    # The higher-scoring box of a nested pair stays, whichever of the two is larger.
    assert nms(boxes[:2], np.array([0.4, 0.8]), 0.5, nested_share=0.9).tolist() == [1]
    # A box 90% inside the animal box is nested at a share of 0.9, not at 0.95.
    poking_out = np.array([animal, [94, 100, 154, 200]], dtype=float)
    assert nms(poking_out, scores[:2], 1.0, nested_share=0.9).tolist() == [0]
    assert nms(poking_out, scores[:2], 1.0, nested_share=0.95).tolist() == [0, 1]
    # Classes stay apart.
    kept = batched_nms(boxes[:2], scores[:2], np.array([1, 2]), 0.5, nested_share=0.9)
    assert sorted(kept.tolist()) == [0, 1]


def test_crop_regions_expand_and_stay_inside() -> None:
    grown = expand_xyxy(np.array([[0.4, 0.4, 0.6, 0.6]]), margin=0.5)
    np.testing.assert_allclose(grown, [[0.3, 0.3, 0.7, 0.7]])
    assert crop_region_pixels((0.25, 0.5, 0.5, 0.25), 400, 200) == (100, 100, 300, 150)
    assert crop_region_pixels((0.9, 0.9, 0.5, 0.5), 100, 100, margin=0.2) == (80, 80, 100, 100)
    assert crop_region_pixels((1.0, 1.0, 0.0, 0.0), 100, 100) == (99, 99, 100, 100)


def test_letterbox_geometry_round_trip() -> None:
    scale, resized_w, resized_h, left, top = letterbox_geometry(1600, 900, 640, 640)
    assert (resized_w, resized_h, left, top) == (640, 360, 0, 140) and scale == 0.4
    canvas_box = np.array([[0, 140, 320, 320]])  # left half, top half of the picture
    np.testing.assert_allclose(
        undo_letterbox_xyxy(canvas_box, 1600, 900, 640, 640), [[0, 0, 0.5, 0.5]]
    )


def test_classifier_preprocessing_squashes_and_normalises() -> None:
    frame = np.full((300, 500, 3), 255, dtype=np.uint8)
    raw = preprocess_for_classifier(frame, EFFICIENTNET_LITE_NORMALISATION.in_graph(True), 224)
    assert raw.shape == (1, 3, 224, 224) and raw.dtype == np.float32 and raw.max() == 255.0
    done = preprocess_for_classifier([frame, frame[:100]], EFFICIENTNET_LITE_NORMALISATION, 224)
    np.testing.assert_allclose(done, (255 - 127) / 128)
    imagenet = preprocess_for_classifier(frame, IMAGENET_NORMALISATION, (100, 120))
    assert imagenet.shape == (1, 3, 100, 120)
    np.testing.assert_allclose(
        imagenet[0, :, 0, 0],
        (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
        rtol=1e-5,
    )
    with pytest.raises(ValueError):
        preprocess_for_classifier(np.zeros((10, 10)), EFFICIENTNET_LITE_NORMALISATION, 224)
    canvas = letterbox_rgb(frame, 224, 224, pad_value=0.0)
    assert canvas[0, 0, 0] == 0.0 and canvas[112, 112, 0] == 255.0


@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("scale", ["0-255", "0-1"])
@pytest.mark.parametrize("in_graph", [True, False])
def test_pixels_to_input_matches_the_plain_formula(order: str, scale: str, in_graph: bool) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    kept = pixels.copy()
    normalisation = Normalisation(
        mean=(0.4, 0.5, 0.6) if scale == "0-1" else (120.0, 125.0, 130.0),
        std=(0.2, 0.25, 0.3) if scale == "0-1" else (60.0, 64.0, 70.0),
        scale=scale,  # type: ignore[arg-type]
        channel_order=order,  # type: ignore[arg-type]
        applied_in_graph=in_graph,
    )
    x = pixels.astype(np.float64)[..., ::-1] if order == "BGR" else pixels.astype(np.float64)
    x = x / 255.0 if scale == "0-1" else x
    if not in_graph:
        x = (x - np.array(normalisation.mean)) / np.array(normalisation.std)
    tensor = pixels_to_input(pixels, normalisation)
    assert tensor.dtype == np.float32 and tensor.flags.c_contiguous
    np.testing.assert_allclose(tensor, x.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pixels, kept)  # the caller's pixels are left alone


@dataclass
class RecordingSession:
    """Test double with onnxruntime's `run` signature: returns canned detector outputs."""

    outputs: dict[str, np.ndarray]
    fed: list[np.ndarray]

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.fed.append(next(iter(feeds.values())))
        return [self.outputs[name] for name in names]


def detector_entry(io: DetectorIO) -> ModelEntry:
    return ModelEntry(
        file="detector.onnx",
        inputs=[TensorSpec(name="image", shape=[3, "height", "width"])],
        outputs=[TensorSpec(name=n, shape=["k"]) for n in ("boxes", "scores", "labels")],
        input_size=io.input_size,
        resize="none" if io.input_size is None else io.resize,
        normalisation=NormalisationSpec.of(EFFICIENTNET_LITE_NORMALISATION.in_graph(True)),
        io=io,
    )


def test_single_image_detector_contract() -> None:
    """torchvision-style graph: one (3, H, W) image, xyxy pixel boxes, label 1 = first class."""
    session = RecordingSession(
        outputs={
            "boxes": np.array([[100, 50, 300, 150], [0, 0, 10, 10]], dtype=np.float32),
            "scores": np.array([0.9, 0.1], dtype=np.float32),
            "labels": np.array([1, 1], dtype=np.int64),
        },
        fed=[],
    )
    entry = detector_entry(DetectorIO(input_rank=3, input_size=None, max_side=400))
    frame = np.zeros((400, 800, 3), dtype=np.uint8)
    [detections] = run_detector(session, entry, ["snow_leopard"], [frame], min_score=0.3)
    assert session.fed[0].shape == (3, 200, 400)  # reduced to max_side, no batch axis
    assert detections == [Detection((0.25, 0.25, 0.5, 0.5), pytest.approx(0.9), "snow_leopard")]


def test_nested_share_in_the_contract_runs_even_when_the_graph_applied_nms() -> None:
    """A part box inside the animal box survives the graph's IoU NMS; the manifest's
    `nested_share` drops it on the way out, and only boxes above `min_score` can drop one."""
    session = RecordingSession(
        outputs={
            "boxes": np.array([[100, 50, 300, 150], [110, 60, 170, 120]], dtype=np.float32),
            "scores": np.array([0.6, 0.9], dtype=np.float32),
            "labels": np.array([1, 1], dtype=np.int64),
        },
        fed=[],
    )
    frame = np.zeros((200, 400, 3), dtype=np.uint8)
    plain = detector_entry(DetectorIO(input_rank=3, input_size=None))
    nested = detector_entry(DetectorIO(input_rank=3, input_size=None, nested_share=0.9))
    assert len(run_detector(session, plain, ["snow_leopard"], [frame], min_score=0.5)[0]) == 2
    [kept] = run_detector(session, nested, ["snow_leopard"], [frame], min_score=0.5)
    assert [d.score for d in kept] == [pytest.approx(0.9)]  # the higher-scoring of the pair
    [alone] = run_detector(session, nested, ["snow_leopard"], [frame], min_score=0.95)
    assert alone == []


def test_batched_letterbox_detector_contract() -> None:
    io = DetectorIO(
        input_rank=4,
        input_size=(320, 320),
        resize="letterbox",
        box_format="cxcywh",
        box_units="normalised",
        num_detections_output="num_detections",
        label_offset=0,
        nms_applied=False,
    )
    entry = detector_entry(io)
    boxes = np.zeros((2, 3, 4), dtype=np.float32)
    boxes[0, 0] = boxes[0, 1] = [0.5, 0.5, 0.5, 0.25]  # a duplicate that NMS must remove
    boxes[1, 0] = [0.25, 0.5, 0.5, 0.5]
    session = RecordingSession(
        outputs={
            "boxes": boxes,
            "scores": np.array([[0.8, 0.7, 0.0], [0.6, 0.0, 0.0]], dtype=np.float32),
            "labels": np.zeros((2, 3), dtype=np.int64),
            "num_detections": np.array([2, 1]),
        },
        fed=[],
    )
    wide = np.zeros((160, 320, 3), dtype=np.uint8)  # letterboxed with 80 px bands
    square = np.zeros((100, 100, 3), dtype=np.uint8)
    results = run_detector(session, entry, ["snow_leopard"], [wide, square], min_score=0.5)
    assert session.fed[0].shape == (2, 3, 320, 320)
    assert [len(r) for r in results] == [1, 1]
    np.testing.assert_allclose(results[0][0].box_xywh_normalised, (0.25, 0.25, 0.5, 0.5))
    np.testing.assert_allclose(results[1][0].box_xywh_normalised, (0.0, 0.25, 0.5, 0.5))


def test_sessions_do_not_spin_between_runs(tmp_path: Path) -> None:
    """A worker decodes and talks to Kafka between model runs: idle pool threads must sleep,
    not spin on the cores that work needs."""
    from snowtrap.models.inference import SPINNING_ENTRIES, create_session

    model = torch.nn.Linear(4, 2).eval()
    path = tmp_path / "linear.onnx"
    torch.onnx.export(model, (torch.zeros(1, 4),), str(path), input_names=["x"], dynamo=False)
    session = create_session(path, ["CPUExecutionProvider"], intra_op_threads=2)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2
    for entry in SPINNING_ENTRIES:
        assert options.get_session_config_entry(entry) == "0"
    (out,) = session.run(None, {"x": np.ones((1, 4), dtype=np.float32)})
    np.testing.assert_allclose(out, model(torch.ones(1, 4)).detach().numpy(), rtol=1e-5)
