"""LIME's pure parts, and LIME recovering superpixels a known classifier depends on."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers.lime import COARSE_TO_FINE, grid_segments
from sklearn.linear_model import Ridge
from sklearn.metrics.pairwise import cosine_distances

from snowtrap.models.boxes import box_iou
from snowtrap.training.lime import LimeSettings, explain_image
from snowtrap.training.lime_maths import (
    box_from_region,
    connected_groups,
    context_region,
    erase_boxes,
    fill_image,
    fit_weighted_ridge,
    kernel_weights,
    lime_boxes,
    perturb_batch,
    region_pixels,
    sample_masks,
    segment_box,
    select_by_positive_share,
    select_by_robust_z,
    superpixel_adjacency,
    window_regions,
)


def test_sample_masks_are_seeded_with_the_unperturbed_row_first() -> None:
    a = sample_masks(200, 30, np.random.default_rng(3))
    b = sample_masks(200, 30, np.random.default_rng(3))
    assert a.shape == (200, 30) and a.dtype == bool
    assert a[0].all()
    assert np.array_equal(a, b)
    assert 0.4 < a[1:].mean() < 0.6


def test_kernel_weights_match_lime_cosine_distance_kernel() -> None:
    masks = sample_masks(50, 12, np.random.default_rng(0))
    masks[5] = False  # an all-off row: distance 1
    distance = cosine_distances(masks.astype(float), np.ones((1, 12)))[:, 0]
    expected = np.sqrt(np.exp(-(distance**2) / 0.25**2))
    assert np.allclose(kernel_weights(masks, 0.25), expected)
    assert kernel_weights(masks, 0.25)[0] == pytest.approx(1.0)


def test_weighted_ridge_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, size=(300, 20)).astype(float)
    y = x @ rng.normal(size=20) + 0.3 + rng.normal(scale=0.05, size=300)
    w = rng.uniform(0.1, 1.0, size=300)
    coef, intercept = fit_weighted_ridge(x, y, w, alpha=1.0)
    reference = Ridge(alpha=1.0).fit(x, y, sample_weight=w)
    assert np.allclose(coef, reference.coef_, atol=1e-8)
    assert intercept == pytest.approx(reference.intercept_, abs=1e-8)


def test_select_by_positive_share_takes_the_top_until_the_share_is_reached() -> None:
    importances = np.array([1.0, 5.0, -4.0, 3.0, 1.0])
    assert select_by_positive_share(importances, 0.8).tolist() == [1, 3]  # 8 of 10
    assert select_by_positive_share(importances, 0.81).tolist() == [1, 3, 0]
    assert select_by_positive_share(importances, 1.0).tolist() == [1, 3, 0, 4]
    assert select_by_positive_share(-np.ones(4), 0.8).size == 0


def test_adjacency_with_4_and_8_connectivity() -> None:
    segments = grid_segments(3, 3, 4)
    four = superpixel_adjacency(segments, 4)
    eight = superpixel_adjacency(segments, 8)
    assert four[0, 1] and four[0, 3] and not four[0, 4] and not four[0, 0]
    assert eight[0, 4] and eight[2, 4] and not eight[0, 2]
    assert np.array_equal(four, four.T)
    diagonal = np.array([0, 4, 8])
    assert len(connected_groups(diagonal, four)) == 3
    assert len(connected_groups(diagonal, eight)) == 1


def test_segment_box_is_normalised() -> None:
    segments = grid_segments(4, 4, 10)
    assert np.allclose(segment_box(segments, np.array([5, 6])), [0.25, 0.25, 0.75, 0.5])


def test_perturb_batch_takes_on_superpixels_from_the_image_and_off_from_the_fill() -> None:
    segments = grid_segments(2, 2, 3)
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.float32)
    fill = fill_image(image)
    masks = np.array([[True, False, False, True], [False, False, False, False]])
    batch = perturb_batch(image.transpose(2, 0, 1), fill.transpose(2, 0, 1), segments, masks)
    assert batch.shape == (2, 3, 6, 6)
    on = np.isin(segments, [0, 3])
    assert np.array_equal(batch[0].transpose(1, 2, 0)[on], image[on])
    assert np.allclose(batch[0].transpose(1, 2, 0)[~on], image.mean(axis=(0, 1)))
    assert np.allclose(batch[1].transpose(1, 2, 0), image.mean(axis=(0, 1)))


def test_lime_boxes_single_and_per_group() -> None:
    segments = grid_segments(6, 6, 10)
    importances = np.full(36, -0.01)
    importances[[0, 1, 6]] = [0.3, 0.3, 0.2]  # top-left animal
    importances[[34, 35]] = [0.3, 0.2]  # bottom-right animal
    importances[20] = 0.02  # a weak background blip
    boxes = lime_boxes(segments, importances, positive_share=0.99, min_group_share=0.1)
    assert set(boxes.selected.tolist()) == {0, 1, 6, 34, 35, 20}
    assert np.allclose(boxes.single_box, [0, 0, 1, 1])
    assert boxes.group_boxes.shape == (2, 4)
    assert np.allclose(boxes.group_boxes[0], [0, 0, 2 / 6, 2 / 6])
    assert np.allclose(boxes.group_boxes[1], [4 / 6, 5 / 6, 1, 1])
    assert boxes.group_shares[0] > boxes.group_shares[1]


def _two_animal_image() -> tuple[np.ndarray, np.ndarray]:
    """A 224 frame of 8 x 8 flat tiles in distinct colours, and two known 'animal' regions."""
    rng = np.random.default_rng(7)
    colours = rng.uniform(20, 235, size=(8, 8, 3))
    image = np.kron(colours, np.ones((28, 28, 1))).astype(np.uint8)
    animals = np.zeros((224, 224), dtype=np.int32)
    animals[28:84, 28:112] = 1  # 2 x 3 tiles
    animals[140:196, 140:196] = 2  # 2 x 2 tiles
    return image, animals


def test_lime_recovers_the_superpixels_a_known_classifier_looks_at() -> None:
    image, animals = _two_animal_image()
    original = image.astype(np.float32).transpose(2, 0, 1)

    def score_fn(batch: np.ndarray) -> np.ndarray:
        """P(leopard) rises with how much of the two animals is left intact."""
        intact = np.all(batch == original[None], axis=1)  # (B, H, W)
        seen = [(intact & (animals == k)).sum(axis=(1, 2)) / (animals == k).sum() for k in (1, 2)]
        return 1.0 / (1.0 + np.exp(-(4.0 * seen[0] + 3.0 * seen[1] - 3.5)))

    settings = LimeSettings(
        num_samples=400, n_segments=64, compactness=20.0, slic_sigma=0.0, positive_share=0.9
    )
    explanation = explain_image(image, score_fn, settings)
    selected_pixels = np.isin(explanation.segments, explanation.boxes.selected)
    # Every selected superpixel lies on an animal, and the animals are almost all selected.
    assert (animals[selected_pixels] > 0).mean() > 0.95
    assert selected_pixels[animals > 0].mean() > 0.85
    truth = np.array([[28, 28, 112, 84], [140, 140, 196, 196]]) / 224.0
    assert explanation.boxes.group_boxes.shape[0] == 2
    ious = box_iou(explanation.boxes.group_boxes, truth)
    assert ious.max(axis=0).min() > 0.8
    around_both = np.array([[28, 28, 196, 196]]) / 224.0
    assert box_iou(explanation.boxes.single_box, around_both)[0, 0] > 0.8


def test_explanations_are_deterministic() -> None:
    image, _ = _two_animal_image()

    def score_fn(batch: np.ndarray) -> np.ndarray:
        return batch[:, 0, :112, :112].mean(axis=(1, 2)) / 255.0

    settings = LimeSettings(num_samples=64, n_segments=30, batch_size=16)
    a = explain_image(image, score_fn, settings)
    b = explain_image(image, score_fn, settings)
    assert np.array_equal(a.importances, b.importances)
    assert np.array_equal(a.boxes.selected, b.boxes.selected)


def test_robust_z_picks_only_what_stands_out_from_the_noise() -> None:
    rng = np.random.default_rng(4)
    importances = rng.normal(0.0, 0.05, size=60)
    importances[[7, 31]] = [1.2, 0.6]  # two leopards' superpixels
    assert sorted(select_by_robust_z(importances, 3.0)) == [7, 31]
    assert list(select_by_robust_z(importances, 3.0)) == [7, 31]  # largest first
    # A cumulative share is fooled by many small positives; the robust rule is not.
    noisy = np.r_[np.full(50, 0.05), [1.0]]
    assert select_by_positive_share(noisy, 0.8).size > 10
    assert list(select_by_robust_z(noisy, 3.0)) == [50]
    assert select_by_robust_z(np.full(10, -0.1), 3.0).size == 0


def test_context_region_grows_keeps_a_minimum_side_and_stays_in_the_frame() -> None:
    region = context_region(np.array([0.4, 0.4, 0.5, 0.6]), 0.5, 0.0)
    assert np.allclose(region, [0.35, 0.3, 0.55, 0.7])
    small = context_region(np.array([0.50, 0.50, 0.52, 0.51]), 0.5, 0.2)
    assert np.allclose(small[2:] - small[:2], [0.2, 0.2])
    assert np.allclose((small[:2] + small[2:]) / 2, [0.51, 0.505])
    corner = context_region(np.array([0.0, 0.9, 0.1, 1.0]), 1.0, 0.2)
    assert corner.min() >= 0.0 and corner.max() <= 1.0


def test_box_from_region_maps_crop_coordinates_back_to_the_frame() -> None:
    region = np.array([0.2, 0.5, 0.6, 1.0])
    assert np.allclose(box_from_region(np.array([0.0, 0.0, 1.0, 1.0]), region), region)
    assert np.allclose(
        box_from_region(np.array([0.5, 0.5, 1.0, 1.0]), region), [0.4, 0.75, 0.6, 1.0]
    )


def _animals_frame(
    animals: list[tuple[int, int, int, int]], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A 480 x 640 textured frame with bright 'animals' at the given pixel boxes (x0, y0, x1,
    y1); returns the frame and the boxes normalised."""
    rng = np.random.default_rng(seed)
    frame = rng.uniform(70, 110, size=(480, 640, 3)).astype(np.uint8)
    for x0, y0, x1, y1 in animals:
        frame[y0:y1, x0:x1] = (235, 225, 210)
    return frame, np.array(animals, dtype=np.float64) / [640, 480, 640, 480]


def _small_animals_frame() -> tuple[np.ndarray, np.ndarray]:
    """Two small animals far apart."""
    return _animals_frame([(100, 120, 160, 150), (420, 300, 500, 340)], seed=11)


def test_coarse_to_fine_boxes_small_animals_tighter_than_one_pass() -> None:
    frame, truth = _small_animals_frame()

    def score_fn(batch: np.ndarray) -> np.ndarray:
        """Leopard evidence = how many bright 'animal' pixels the classifier input shows."""
        bright = (batch.min(axis=1) > 200).mean(axis=(1, 2))
        return 1.0 / (1.0 + np.exp(-(bright * 400.0 - 2.0)))

    one_pass = replace(COARSE_TO_FINE, refine_samples=0)
    coarse = explain_image(frame, score_fn, one_pass)
    fine = explain_image(frame, score_fn, COARSE_TO_FINE)
    assert fine.regions.shape[0] >= 2  # both animals located
    assert fine.boxes.group_boxes.shape[0] == 2
    fine_ious = box_iou(fine.boxes.group_boxes, truth).max(axis=0)
    assert fine_ious.min() > 0.6
    coarse_ious = (
        box_iou(coarse.boxes.group_boxes, truth).max(axis=0)
        if coarse.boxes.group_boxes.size
        else np.zeros(2)
    )
    assert fine_ious.mean() > coarse_ious.mean()
    assert fine.timings["refine_score"] > 0


def test_regions_the_classifier_rejects_give_no_boxes() -> None:
    frame, _ = _small_animals_frame()

    def score_fn(batch: np.ndarray) -> np.ndarray:
        """The whole frame (animals: 1.6% of it) looks like a leopard; close-ups around an
        animal never do, so every refined region fails the crop-score check."""
        bright = (batch.min(axis=1) > 200).mean(axis=(1, 2))
        return np.where(bright > 0.02, 0.1, 1.0 / (1.0 + np.exp(-(bright * 400.0 - 2.0))))

    settings = LimeSettings(
        num_samples=150, n_segments=40, refine_samples=60, min_region_score=0.5, seed=2
    )
    explanation = explain_image(frame, score_fn, settings)
    assert explanation.regions.shape[0] >= 1
    assert explanation.boxes.group_boxes.shape == (0, 4)
    assert explanation.boxes.single_box is None


def test_region_pixels_round_outward_and_are_idempotent_on_the_grid() -> None:
    assert region_pixels(np.array([0.101, 0.2, 0.499, 0.7]), 640, 480) == (64, 96, 320, 336)
    snapped = np.array([64, 96, 320, 336]) / [640, 480, 640, 480]
    assert region_pixels(snapped, 640, 480) == (64, 96, 320, 336)
    assert region_pixels(np.array([0.5, 0.5, 0.5, 0.5]), 640, 480) == (320, 240, 321, 241)


def test_erase_boxes_fills_the_grown_boxes_with_the_mean_colour_and_keeps_the_rest() -> None:
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, size=(100, 200, 3), dtype=np.uint8)
    erased = erase_boxes(frame, np.array([[0.25, 0.2, 0.5, 0.6]]), margin=0.1)
    mean = frame.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    # the box is x 50..100, y 20..60; grown by 10% of its size: x 45..105, y 16..64
    assert np.all(erased[16:64, 45:105] == mean)
    assert np.array_equal(erased[:16], frame[:16]) and np.array_equal(erased[64:], frame[64:])
    assert np.array_equal(erased[:, :45], frame[:, :45])
    assert np.array_equal(erased[:, 105:], frame[:, 105:])
    assert not np.array_equal(erased, frame) and frame is not erased  # input untouched


def test_a_search_round_finds_the_animal_a_bigger_one_outshone() -> None:
    frame, truth = _animals_frame([(60, 150, 300, 330), (460, 60, 560, 130)], seed=5)

    def score_fn(batch: np.ndarray) -> np.ndarray:
        """Evidence grows with the bright pixels shown, then saturates: with the big animal
        in view the small one adds nothing, so a whole-frame pass cannot see it."""
        bright = (batch.min(axis=1) > 200).mean(axis=(1, 2))
        return 1.0 / (1.0 + np.exp(-(np.minimum(bright * 60.0, 6.0) - 1.0)))

    settings = replace(COARSE_TO_FINE, max_regions=1)
    once = explain_image(frame, score_fn, settings).boxes.group_boxes
    again = explain_image(frame, score_fn, replace(settings, search_rounds=1)).boxes.group_boxes
    assert once.shape[0] >= 1
    assert box_iou(once, truth[1:]).max() < 0.1  # the first pass never looked there
    assert box_iou(again, truth[1:]).max() > 0.7  # the search round did
    assert box_iou(once, again).max(axis=1).min() > 0.99  # and kept what the first found


def test_window_regions_tile_the_frame_corner_to_corner() -> None:
    windows = window_regions(0.5, 3)
    assert windows.shape == (9, 4)
    assert np.allclose(windows[0], [0.0, 0.0, 0.5, 0.5])
    assert np.allclose(windows[4], [0.25, 0.25, 0.75, 0.75])
    assert np.allclose(windows[-1], [0.5, 0.5, 1.0, 1.0])


def test_the_windows_gate_searches_on_for_a_leopard_too_small_to_score_the_whole_frame() -> None:
    # After the big animal is greyed out, the small one is 1% of the frame: the whole frame
    # scores under 0.5, so a whole-frame gate would stop; a quarter-frame window shows it 4x
    # bigger.
    frame, truth = _animals_frame([(60, 150, 300, 330), (470, 60, 530, 110)], seed=5)

    def score_fn(batch: np.ndarray) -> np.ndarray:
        bright = (batch.min(axis=1) > 200).mean(axis=(1, 2))
        return 1.0 / (1.0 + np.exp(-(np.minimum(bright * 60.0, 6.0) - 1.0)))

    settings = replace(COARSE_TO_FINE, max_regions=1, search_rounds=1)
    small = frame.copy()
    small[150:330, 60:300] = frame[0, 0]
    assert score_fn(small.transpose(2, 0, 1)[None].astype(np.float32))[0] < 0.5
    by_windows = explain_image(frame, score_fn, settings)
    assert box_iou(by_windows.boxes.group_boxes, truth[:1]).max() > 0.7
    assert box_iou(by_windows.boxes.group_boxes, truth[1:]).max() > 0.7
    assert "search_gate" in by_windows.timings
