"""Detector pieces that need no training run: box-aware augmentation, export contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snowtrap.models.boxes import xywh_to_xyxy
from snowtrap.models.detector import (
    DetectorArchitecture,
    build_leopard_detector,
    check_detector_onnx,
    detector_model_entry,
    export_detector_onnx,
    use_test_proposals,
)
from snowtrap.models.inference import create_session, run_detector
from snowtrap.training.detect import (
    AugmentSettings,
    augment_frame,
    resize_for_detector,
    self_training_boxes,
)

NO_AUGMENT = AugmentSettings(
    flip_probability=0.0, crop_probability=0.0, colour_jitter=0.0, greyscale_probability=0.0
)


def frame_with_animal() -> tuple[np.ndarray, np.ndarray]:
    """A grey frame with one bright rectangle and its exact box."""
    rgb = np.full((120, 200, 3), 60, dtype=np.uint8)
    rgb[30:70, 20:80] = (250, 200, 120)
    return rgb, np.array([[20.0, 30.0, 80.0, 70.0]])


def box_pixels_bright(rgb: np.ndarray, box: np.ndarray) -> float:
    x0, y0, x1, y1 = np.round(box).astype(int)
    return float((rgb[y0:y1, x0:x1, 0] > 200).mean())


def test_flip_moves_the_box_with_the_animal() -> None:
    rgb, boxes = frame_with_animal()
    settings = AugmentSettings(**{**NO_AUGMENT.__dict__, "flip_probability": 1.0})
    flipped, new_boxes = augment_frame(rgb, boxes, np.random.default_rng(0), settings)
    assert np.allclose(new_boxes, [[120, 30, 180, 70]])
    assert box_pixels_bright(flipped, new_boxes[0]) == 1.0


def test_random_crops_keep_boxes_on_the_animal_and_inside_the_frame() -> None:
    rgb, boxes = frame_with_animal()
    settings = AugmentSettings(
        **{**NO_AUGMENT.__dict__, "crop_probability": 1.0, "flip_probability": 0.5}
    )
    rng = np.random.default_rng(1)
    for _ in range(50):
        out, new_boxes = augment_frame(rgb, boxes, rng, settings)
        height, width = out.shape[:2]
        assert height >= 0.6 * 120 - 1 and width >= 0.6 * 200 - 1
        for box in new_boxes:
            assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
            assert box_pixels_bright(out, box) > 0.95
        if new_boxes.shape[0] == 0:  # the animal was cropped away entirely
            assert (out[..., 0] > 200).sum() == 0


def test_greyscale_and_jitter_keep_uint8_and_boxes() -> None:
    rgb, boxes = frame_with_animal()
    settings = AugmentSettings(
        **{**NO_AUGMENT.__dict__, "greyscale_probability": 1.0, "colour_jitter": 0.3}
    )
    out, new_boxes = augment_frame(rgb, boxes, np.random.default_rng(2), settings)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert np.array_equal(new_boxes, boxes)


def test_self_training_keeps_confident_detections_and_falls_back_to_lime() -> None:
    detected = np.array([[10.0, 10.0, 50.0, 40.0], [60.0, 5.0, 90.0, 30.0]])
    lime = np.array([[12.0, 8.0, 40.0, 44.0]])
    kept = self_training_boxes(detected, np.array([0.9, 0.3]), lime, min_score=0.5)
    np.testing.assert_array_equal(kept, detected[:1])  # the weak one is not a label
    fallback = self_training_boxes(detected, np.array([0.2, 0.3]), lime, min_score=0.5)
    np.testing.assert_array_equal(fallback, lime)  # nothing confident: LIME's box stays
    nothing = self_training_boxes(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4)), 0.5)
    assert nothing.shape == (0, 4)  # the caller drops the frame
    around = np.array([[0.0, 0.0, 200.0, 120.0], [20.0, 30.0, 80.0, 70.0], [120, 30, 190, 90]])
    scores = np.array([0.7, 0.9, 0.8])
    assert self_training_boxes(around, scores, lime, 0.5).shape == (3, 4)  # nested ones stay


def test_resize_for_detector_bounds_the_longer_side() -> None:
    rgb = np.zeros((600, 1000, 3), dtype=np.uint8)
    small, scale = resize_for_detector(rgb, 500)
    assert small.shape[:2] == (300, 500) and scale == pytest.approx(0.5)
    same, scale = resize_for_detector(small, 800)
    assert same is small and scale == 1.0


def test_exported_detector_matches_torch_and_serves_through_the_manifest_contract(
    tmp_path,
) -> None:
    """An untrained detector is enough to check the graph: ORT == torch, and run_detector
    reads its outputs per the manifest entry (boxes land on the source frame)."""
    torch.manual_seed(0)
    architecture = DetectorArchitecture(min_size=224, max_size=300, box_score_thresh=0.0)
    model = build_leopard_detector(architecture).eval()
    rng = np.random.default_rng(0)
    frames = [
        rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in [(240, 320), (300, 200)]
    ]
    path = export_detector_onnx(model, tmp_path / "detector.onnx", frames[0])
    check = check_detector_onnx(model, path, frames, score_floor=0.0)
    assert check.count_mismatches == 0 and check.boxes_compared > 0
    assert check.passed(iou_tolerance=0.99, score_tolerance=1e-3), check

    entry = detector_model_entry(architecture, path.name)
    session = create_session(path, ["CPUExecutionProvider"], 1)
    big = np.kron(frames[1], np.ones((2, 2, 1), dtype=np.uint8))  # 600 x 400 -> 300 x 200
    detections = run_detector(session, entry, architecture.class_names, [big], min_score=0.0)[0]
    with torch.no_grad():
        small = torch.from_numpy(frames[1].transpose(2, 0, 1).astype(np.float32))
        expected = model([small])[0]
    assert len(detections) == len(expected["scores"])
    top = xywh_to_xyxy(np.array(detections[0].box_xywh_normalised))[0]
    want = expected["boxes"][0].numpy() / np.array([200, 300, 200, 300])
    assert np.allclose(top, want, atol=0.01)
    assert detections[0].label == "snow_leopard"


def test_test_proposals_bound_the_detections_in_torch_and_in_the_exported_graph(
    tmp_path,
) -> None:
    """Each proposal gives at most one leopard box, so 3 proposals cap the output at 3 boxes;
    the cap is baked into the ONNX graph and recorded in the returned architecture."""
    torch.manual_seed(0)
    architecture = DetectorArchitecture(min_size=224, max_size=300, box_score_thresh=0.0)
    model = build_leopard_detector(architecture).eval()
    frame = np.random.default_rng(1).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    pixels = torch.from_numpy(frame.transpose(2, 0, 1).astype(np.float32))
    with torch.no_grad():
        assert len(model([pixels])[0]["scores"]) > 3

    deployed = use_test_proposals(model, architecture, pre_nms_top_n=8, post_nms_top_n=3)
    assert (deployed.rpn_pre_nms_top_n_test, deployed.rpn_post_nms_top_n_test) == (8, 3)
    assert deployed.min_size == architecture.min_size
    with torch.no_grad():
        assert 1 <= len(model([pixels])[0]["scores"]) <= 3
    path = export_detector_onnx(model, tmp_path / "detector.onnx", frame)
    assert check_detector_onnx(model, path, [frame], score_floor=0.0).passed()
    with pytest.raises(ValueError):
        use_test_proposals(model, architecture, pre_nms_top_n=2, post_nms_top_n=3)
