"""Evaluation maths on hand-made cases and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from snowtrap.training.evaluate import (
    average_precision,
    binary_metrics_at,
    box_match_stats,
    enclosing_box,
    finds_all,
    matched_ious,
    miss_reasons,
    precision_recall_points,
    roc_auc,
    stray_boxes,
    threshold_for_recall,
)


def test_roc_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(labels * 0.3 + rng.uniform(size=300), 1)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(roc_auc(np.ones(5), np.arange(5)))


def test_threshold_for_recall_is_the_highest_that_reaches_it() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.85, 0.5, 0.1, 0.05, 0.6, 0.3])
    t = threshold_for_recall(labels, scores, 0.8)  # 4 of 5 positives: 0.9, 0.8, 0.7, 0.6
    assert t == pytest.approx(0.6)
    assert binary_metrics_at(labels, scores, t).recall == pytest.approx(0.8)
    assert threshold_for_recall(labels, scores, 1.0) == pytest.approx(0.2)
    metrics = binary_metrics_at(labels, scores, 0.6)
    assert (metrics.true_positives, metrics.false_positives) == (4, 1)
    assert metrics.precision == pytest.approx(0.8)


def test_precision_recall_points_end_at_full_recall() -> None:
    recall, precision = precision_recall_points(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.1]))
    assert recall.tolist() == [0.5, 0.5, 1.0]
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3])


def test_matched_ious_are_one_to_one() -> None:
    truth = np.array([[0, 0, 10, 10], [20, 0, 30, 10]])
    predicted = np.array([[0, 0, 10, 10]])  # one box cannot serve both animals
    assert matched_ious(predicted, truth).tolist() == [1.0, 0.0]
    assert not finds_all(predicted, truth)
    assert finds_all(np.array([[20, 0, 30, 10], [0, 0, 10, 9]]), truth)
    assert np.allclose(enclosing_box(truth), [0, 0, 30, 10])
    stats = box_match_stats([predicted, np.zeros((0, 4))], [truth, truth[:1]])
    assert stats.true_boxes == 3 and stats.mean_iou == pytest.approx(1 / 3)


def test_average_precision_hand_computed() -> None:
    truth = [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]]), np.zeros((0, 4))]
    perfect = average_precision([*truth[:2], np.zeros((0, 4))], [[0.9], [0.8], []], truth)
    assert perfect == pytest.approx(1.0)
    # Ranked: TP (0.9), FP on the empty image (0.85), TP (0.8) -> precision 1, 1/2, 2/3.
    predicted = [np.array([[0, 0, 10, 10]]), np.array([[1, 1, 10, 10]]), np.array([[5, 5, 9, 9]])]
    ap = average_precision(predicted, [[0.9], [0.8], [0.85]], truth)
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    # A duplicate of an already claimed box is a false positive.
    duplicates = [np.array([[0, 0, 10, 10], [0, 0, 10, 10]]), np.zeros((0, 4)), np.zeros((0, 4))]
    assert average_precision(duplicates, [[0.9, 0.8], [], []], truth) == pytest.approx(0.5)


def test_miss_reasons_names_what_went_wrong_with_each_unmatched_animal() -> None:
    left = [0.0, 0.0, 0.2, 0.2]
    right = [0.5, 0.0, 0.7, 0.2]
    truth = np.array([left, right])
    exact = np.array([left, right])
    assert miss_reasons(exact, truth) == ["found", "found"]
    assert miss_reasons(np.zeros((0, 4)), truth) == ["no box", "no box"]
    # One box over both animals: it matches neither at IoU 0.5 and covers both.
    assert miss_reasons(np.array([[0.0, 0.0, 0.7, 0.2]]), truth) == ["spans two", "spans two"]
    # Half of the left animal; nothing near the right one.
    assert miss_reasons(np.array([[0.0, 0.0, 0.08, 0.2]]), truth) == ["fragment", "no box"]
    # The left animal with a lot of background around it, the right one exact.
    big = [0.0, 0.0, 0.3, 0.35]
    assert miss_reasons(np.array([big, right]), truth) == ["too big", "found"]
    # Shifted by half its width: neither inside nor around it.
    assert miss_reasons(np.array([[0.1, 0.1, 0.3, 0.3], right]), truth) == ["offset", "found"]


def test_miss_reasons_match_one_to_one_like_matched_ious() -> None:
    truth = np.array([[0.0, 0.0, 0.2, 0.2], [0.21, 0.0, 0.41, 0.2]])
    predicted = np.array([[0.0, 0.0, 0.2, 0.2]])  # one box can partner only one animal
    reasons = miss_reasons(predicted, truth)
    assert reasons[0] == "found"
    assert reasons[1] == "no box"
    assert (matched_ious(predicted, truth) >= 0.5).tolist() == [r == "found" for r in reasons]


def test_stray_boxes_counts_boxes_lying_mostly_off_every_animal() -> None:
    truth = np.array([[0.0, 0.0, 0.2, 0.2], [0.5, 0.0, 0.7, 0.2]])
    on_animals = np.array([[0.0, 0.0, 0.2, 0.2], [0.45, 0.0, 0.7, 0.2]])  # 80% on the right
    assert stray_boxes(on_animals, truth) == 0
    rock = [0.3, 0.5, 0.5, 0.7]
    half_on = [0.1, 0.0, 0.3, 0.2]  # half its area on the left animal: not stray
    mostly_off = [0.15, 0.0, 0.35, 0.2]  # a quarter on it
    assert stray_boxes(np.array([rock, half_on, mostly_off]), truth) == 2
    assert stray_boxes(np.zeros((0, 4)), truth) == 0
    assert stray_boxes(np.array([rock]), np.zeros((0, 4))) == 1  # a frame with no leopard
