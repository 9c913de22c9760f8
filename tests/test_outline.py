"""Outlining by colour: LIME's selection seeds GrabCut, each outlined part is one animal."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
from helpers.lime import COARSE_TO_FINE, grid_segments

from snowtrap.models.boxes import box_iou
from snowtrap.training.lime import explain_image
from snowtrap.training.lime_maths import group_boxes, segment_box
from snowtrap.training.outline import (
    _grown_extents,
    _without_dark_patches,
    colour_log_likelihood,
    outline_boxes,
)

BODY, TAIL = (235, 225, 210), (236, 226, 196)  # to the eye one coat; see the last test


def _background(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(60, 110, size=(height, width, 3)).astype(np.uint8)


def _draw_animal(image: np.ndarray, x0: int, y0: int, x1: int, y1: int, tail: int) -> None:
    """A pale body with dark rosettes and a thin spotted tail `tail` pixels long to its right,
    with a camera's pixel noise."""
    animal = np.zeros(image.shape[:2], dtype=bool)
    image[y0:y1, x0:x1] = BODY
    animal[y0:y1, x0:x1] = True
    for x in range(x0 + 6, x1 - 6, 14):
        for y in range(y0 + 6, y1 - 6, 14):
            image[y : y + 4, x : x + 4] = (70, 65, 60)
    mid = (y0 + y1) // 2
    image[mid - 4 : mid + 4, x1 : x1 + tail] = TAIL
    animal[mid - 4 : mid + 4, x1 : x1 + tail] = True
    image[mid - 2 : mid + 2, x1 + 10 : x1 + tail : 16] = (70, 65, 60)
    noise = np.random.default_rng(x0 * 7 + y0).normal(0, 5, size=image.shape)
    noisy = np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    image[animal] = noisy[animal]


def _cells_inside(segments: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    return np.unique(segments[y0:y1, x0:x1])


def _one_animal_crop(
    seed: int, tail: int, selection: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 200 x 320 crop with one animal (body x 40..160, y 70..140), 20-pixel cells, and the
    cells inside `selection` (x0, y0, x1, y1) selected with importance 1:
    (image, segments, importances, selected)."""
    image = _background(200, 320, seed=seed)
    _draw_animal(image, 40, 70, 160, 140, tail=tail)
    segments = grid_segments(10, 16, 20)
    selected = _cells_inside(segments, *selection)
    importances = np.zeros(int(segments.max()) + 1)
    importances[selected] = 1.0
    return image, segments, importances, selected


def test_the_outline_boxes_the_whole_animal_where_lime_selected_part_of_it() -> None:
    # LIME selected the middle of the body only
    image, segments, importances, selected = _one_animal_crop(1, 110, (60, 80, 120, 120))
    truth = np.array([[40 / 320, 70 / 200, 270 / 320, 140 / 200]])

    outlined = outline_boxes(image, segments, importances, selected)
    assert outlined is not None
    boxes, held = outlined
    assert boxes.shape == (1, 4) and held[0] > 0
    assert box_iou(boxes, truth)[0, 0] > 0.85
    fragment = segment_box(segments, selected)[None]
    assert box_iou(fragment, truth)[0, 0] < 0.3  # what boxing the superpixels gives


def test_two_animals_one_selection_spans_come_apart() -> None:
    image = _background(200, 360, seed=2)
    _draw_animal(image, 20, 60, 140, 130, tail=0)
    _draw_animal(image, 190, 80, 330, 150, tail=0)
    truth = np.array([[20, 60, 140, 130], [190, 80, 330, 150]]) / [360, 200, 360, 200]
    segments = grid_segments(10, 18, 20)
    selected = _cells_inside(segments, 40, 80, 320, 140)  # across both and the gap between
    importances = np.zeros(int(segments.max()) + 1)
    importances[selected] = 1.0

    joined, _ = group_boxes(segments, importances, selected)
    assert joined.shape[0] == 1  # superpixel groups: one box over both
    outlined = outline_boxes(image, segments, importances, selected)
    assert outlined is not None
    boxes, held = outlined
    assert boxes.shape[0] == 2
    assert box_iou(boxes, truth).max(axis=0).min() > 0.8
    assert held[0] >= held[1] > 0  # strongest first


def test_a_segment_map_at_another_size_is_stretched_to_the_image() -> None:
    image, segments, importances, selected = _one_animal_crop(3, 0, (60, 80, 140, 130))
    small = segments[::2, ::2]  # the same cells on a 100 x 160 map
    at_size = outline_boxes(image, segments, importances, selected)
    stretched = outline_boxes(image, small, importances, selected)
    shrunk = outline_boxes(image, segments, importances, selected, max_side=160)
    assert at_size is not None and stretched is not None and shrunk is not None
    assert box_iou(at_size[0], stretched[0])[0, 0] > 0.95
    assert box_iou(at_size[0], shrunk[0])[0, 0] > 0.9  # cut at half size, same box


def test_no_cut_without_both_a_selection_and_a_rest() -> None:
    image = _background(100, 100, seed=4)
    segments = grid_segments(5, 5, 20)
    importances = np.ones(int(segments.max()) + 1)
    assert outline_boxes(image, segments, importances, np.array([], dtype=int)) is None
    assert outline_boxes(image, segments, importances, np.arange(importances.size)) is None


def test_outlining_is_deterministic() -> None:
    image, segments, importances, selected = _one_animal_crop(5, 80, (60, 80, 120, 120))
    first = outline_boxes(image, segments, importances, selected)
    second = outline_boxes(image, segments, importances, selected)
    assert first is not None and second is not None
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_explain_with_grabcut_outline_boxes_the_tail_the_classifier_ignores() -> None:
    """The classifier sees only the body; the truth box (like a camera-trap annotation)
    includes the tail. Superpixel boxes stop at the body, outlines do not."""
    frame = _background(480, 640, seed=6)
    _draw_animal(frame, 80, 150, 230, 230, tail=140)
    _draw_animal(frame, 400, 320, 500, 380, tail=90)
    truth = np.array([[80, 150, 370, 230], [400, 320, 590, 380]]) / [640, 480, 640, 480]

    def score_fn(batch: np.ndarray) -> np.ndarray:
        body = (batch.min(axis=1) > 200).mean(axis=(1, 2))  # the tail's minimum is 196
        return 1.0 / (1.0 + np.exp(-(body * 300.0 - 2.0)))

    plain = explain_image(frame, score_fn, COARSE_TO_FINE)
    outlined = explain_image(frame, score_fn, replace(COARSE_TO_FINE, outline="grabcut"))
    plain_ious = box_iou(plain.boxes.group_boxes, truth).max(axis=0)
    outlined_ious = box_iou(outlined.boxes.group_boxes, truth).max(axis=0)
    assert outlined.boxes.group_boxes.shape[0] == 2
    assert outlined_ious.min() > 0.75
    assert plain_ious.max() < 0.7
    assert outlined.timings["refine_outline"] > 0


def _one_gaussian_model(mean: tuple[float, float, float], sd: float) -> np.ndarray:
    """A GrabCut colour model (OpenCV's 1 x 65 layout) with one Gaussian of weight 1."""
    model = np.zeros((1, 65))
    model[0, 0] = 1.0
    model[0, 5:8] = mean
    model[0, 20:29] = (sd**2 * np.eye(3)).reshape(-1)
    return model


def test_colour_log_likelihood_is_the_gaussian_mixture_density() -> None:
    from scipy.stats import multivariate_normal

    model = np.zeros((1, 65))
    model[0, :2] = (0.25, 0.75)
    model[0, 5:11] = (10, 20, 30, 200, 190, 180)
    first, second = np.diag([4.0, 9.0, 16.0]), np.array([[25.0, 5, 0], [5, 25, 0], [0, 0, 36]])
    model[0, 20:29], model[0, 29:38] = first.reshape(-1), second.reshape(-1)
    colours = np.array([[12.0, 18, 33], [190, 195, 170], [100, 100, 100]])
    expected = np.log(
        0.25 * multivariate_normal((10, 20, 30), first + 0.01 * np.eye(3)).pdf(colours)
        + 0.75 * multivariate_normal((200, 190, 180), second + 0.01 * np.eye(3)).pdf(colours)
    )
    # up to the constant (2 pi)^(-3/2), which every model shares
    got = colour_log_likelihood(colours, model) - 1.5 * np.log(2 * np.pi)
    assert np.allclose(got, expected)


def test_thin_parts_the_cut_left_out_grow_the_nearest_part_and_never_join_two() -> None:
    # Two bodies the cut kept (parts 1 and 2) on a snow-coloured crop; a thin tail of coat
    # colour leaves body 1 to the right and runs on into a bridge that touches body 2.
    image = np.full((100, 200, 3), (220, 225, 235), dtype=np.uint8)
    coat = (200, 190, 170)
    image[40:60, 10:50] = coat
    image[40:60, 150:190] = coat
    image[49:51, 50:150] = coat  # the tail and bridge, 2 px thick
    image[10:12, 60:120] = coat  # a coat-coloured streak that touches neither body
    animal = np.zeros((100, 200), dtype=np.uint8)
    animal[40:60, 10:50] = 1
    animal[40:60, 150:190] = 1
    _, parts = cv2.connectedComponents(animal, connectivity=8)
    animal_model = _one_gaussian_model(coat[::-1], 6.0)  # GrabCut's models are in BGR
    background_model = _one_gaussian_model((235, 225, 220), 6.0)
    bgr = np.ascontiguousarray(image[:, :, ::-1])

    grown = _grown_extents(bgr, parts, animal, animal_model, background_model, 2.0)
    left, right = parts[50, 20], parts[50, 170]
    # each body grows along the bridge to its middle, no further; the streak joins nothing
    assert grown[left] == (50, 49, 100, 51)
    assert grown[right] == (100, 49, 150, 51)
    assert set(grown) == {left, right}
    # pixels the cut had and later lost (a dark patch cut out) never grow back
    cut = animal.copy()
    cut[49:51, 50:150] = 1
    assert _grown_extents(bgr, parts, cut, animal_model, background_model, 2.0) == {}
    # with a margin the coat colour cannot clear, nothing grows
    assert _grown_extents(bgr, parts, animal, animal_model, background_model, 1e4) == {}


def test_a_dark_rock_beside_the_animal_is_cut_out_and_rosettes_are_kept() -> None:
    # A pale animal with 4-pixel rosettes lying on a dark rock, which the animal's colour model
    # (coat and rosettes) takes for animal too.
    image = np.full((200, 320, 3), (225, 230, 240), dtype=np.uint8)
    rock = np.zeros((200, 320), dtype=np.uint8)
    cv2.ellipse(rock, (160, 160), (140, 40), 0, 0, 360, 1, -1)
    image[rock > 0] = (72, 66, 60)  # rosette-dark
    _draw_animal(image, 40, 70, 160, 140, tail=0)
    animal = rock.copy()
    animal[70:140, 40:160] = 1  # the cut took the animal and the rock
    seeded = np.zeros((200, 320), dtype=bool)
    seeded[80:130, 60:140] = True

    kept = _without_dark_patches(image, animal, seeded, width=11)
    assert kept[140:200].sum() < 0.02 * rock[140:200].sum()  # the rock below it is gone
    assert kept[70:140, 40:160].all()  # the animal, rosettes included, is whole
    _, parts, stats, _ = cv2.connectedComponentsWithStats(kept, connectivity=8)
    x, y, w, h, _ = stats[parts[100, 100]]
    assert abs(x - 40) + abs(y - 70) + abs(x + w - 160) + abs(y + h - 140) <= 6
