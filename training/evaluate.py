"""Evaluation as pure functions: classifier curves and operating points, box IoU and mAP.

Classifier curves and ROC-AUC are scikit-learn's (`sklearn.metrics`), wrapped so callers get
the shapes the report and the metrics files use; box matching and detection AP are here.

Everything takes numpy arrays (boxes as xyxy, any consistent unit) and returns numbers or
small dataclasses, so the same code scores the classifier, the LIME boxes and the detector,
and tests can check it on hand-made cases.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from snowtrap.models.boxes import box_area, box_intersection, box_iou

__all__ = [
    "BinaryMetrics",
    "BoxMatchStats",
    "average_precision",
    "binary_metrics_at",
    "box_match_stats",
    "enclosing_box",
    "finds_all",
    "matched_ious",
    "precision_recall_points",
    "roc_auc",
    "roc_points",
    "threshold_for_recall",
]


def _binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} scores")
    return y, s


def _one_class_safe(values: np.ndarray) -> np.ndarray:
    """sklearn leaves a rate NaN (with a warning) when its class is absent; call it 0."""
    return np.nan_to_num(values, nan=0.0)


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0).

    `sklearn.metrics.roc_curve` with every threshold kept (`drop_intermediate=False`), so the
    report's curve shows each operating point."""
    y, s = _binary(labels, scores)
    if y.size == 0:
        return np.zeros(1), np.zeros(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # one class absent
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return _one_class_safe(fpr), _one_class_safe(tpr)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (`sklearn.metrics.roc_auc_score`; ties count half); NaN when
    one class is missing (sklearn would raise)."""
    y, s = _binary(labels, scores)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def precision_recall_points(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, highest threshold first.

    `sklearn.metrics.precision_recall_curve`, without the (recall 0, precision 1) end point it
    appends (not an operating point) and in the report's order."""
    y, s = _binary(labels, scores)
    if y.size == 0:
        return np.zeros(0), np.zeros(0)
    with warnings.catch_warnings():
        # No positives: sklearn warns and calls recall 1; there is nothing to recall, so 0.
        warnings.simplefilter("ignore", UserWarning)
        precision, recall, _ = precision_recall_curve(y, s)
    if not y.any():
        recall = np.zeros_like(recall)
    return _one_class_safe(recall[-2::-1]), _one_class_safe(precision[-2::-1])


def threshold_for_recall(labels: np.ndarray, scores: np.ndarray, target_recall: float) -> float:
    """The highest threshold t with recall(score >= t) >= target_recall.

    The classifier gates the detector and a missed leopard costs more than a false alarm,
    so the operating point is set by recall, and as high as that recall allows.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    y, s = _binary(labels, scores)
    positives = np.sort(s[y])[::-1]
    if positives.size == 0:
        raise ValueError("no positive examples to set a recall threshold on")
    needed = int(np.ceil(target_recall * positives.size - 1e-9))
    return float(positives[max(needed, 1) - 1])


@dataclass(frozen=True)
class BinaryMetrics:
    threshold: float
    precision: float
    recall: float
    false_positive_rate: float
    accuracy: float
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def binary_metrics_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> BinaryMetrics:
    """Confusion counts and rates when everything scoring >= threshold is called positive."""
    y, s = _binary(labels, scores)
    predicted = s >= threshold
    tp = int(np.sum(predicted & y))
    fp = int(np.sum(predicted & ~y))
    tn = int(np.sum(~predicted & ~y))
    fn = int(np.sum(~predicted & y))
    return BinaryMetrics(
        threshold=float(threshold),
        precision=tp / (tp + fp) if tp + fp else 1.0,
        recall=tp / (tp + fn) if tp + fn else 1.0,
        false_positive_rate=fp / (fp + tn) if fp + tn else 0.0,
        accuracy=(tp + tn) / max(y.size, 1),
        true_positives=tp,
        false_positives=fp,
        true_negatives=tn,
        false_negatives=fn,
    )


# --- boxes --------------------------------------------------------------------------------


def _boxes(boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    return array.reshape(-1, 4) if array.size else np.zeros((0, 4))


def enclosing_box(boxes: np.ndarray) -> np.ndarray:
    """The smallest xyxy box around all `boxes` (what a single-box method should find)."""
    b = _boxes(boxes)
    if b.shape[0] == 0:
        raise ValueError("no boxes to enclose")
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])


def matched_ious(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of each true box with its predicted partner, one-to-one, best pairs first.

    Greedy matching on IoU; a true box left without a partner scores 0.
    """
    p, t = _boxes(predicted), _boxes(truth)
    result = np.zeros(t.shape[0])
    if p.shape[0] == 0 or t.shape[0] == 0:
        return result
    iou = box_iou(p, t)
    used_p, used_t = set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), t.shape[0])
        if iou[i, j] <= 0:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        result[j] = iou[i, j]
    return result


def finds_all(predicted: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> bool:
    """Every true box has its own predicted box with IoU >= threshold."""
    return bool(np.all(matched_ious(predicted, truth) >= iou_threshold))


def stray_boxes(predicted: np.ndarray, truth: np.ndarray, min_cover: float = 0.5) -> int:
    """How many predicted boxes lie mostly off every animal: no true box covers `min_cover`
    of their area. A stray LIME box teaches the detector that rock is a leopard."""
    p, t = _boxes(predicted), _boxes(truth)
    if p.shape[0] == 0:
        return 0
    if t.shape[0] == 0:
        return int(p.shape[0])
    cover = box_intersection(p, t).max(axis=1) / np.maximum(box_area(p), 1e-12)
    return int(np.sum(cover < min_cover))


MissReason = Literal["found", "no box", "spans two", "fragment", "too big", "offset"]


def miss_reasons(
    predicted: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5
) -> list[MissReason]:
    """Why each true box has no partner at `iou_threshold` (one-to-one, as `matched_ious`).

    Judged against the predicted box that covers most of it: "spans two" when that box also
    covers over 30% of another true box (one box over two animals), "fragment" when the box
    lies mostly inside the animal but covers under 60% of it, "too big" when it covers over
    80% of the animal but is mostly background, "offset" otherwise; "no box" when no predicted
    box touches it."""
    p, t = _boxes(predicted), _boxes(truth)
    matched = matched_ious(p, t)
    reasons: list[MissReason] = []
    for j, true_box in enumerate(t):
        if matched[j] >= iou_threshold:
            reasons.append("found")
            continue
        inter = box_intersection(p, true_box)[:, 0]
        if p.shape[0] == 0 or inter.max() <= 0:
            reasons.append("no box")
            continue
        best = int(np.argmax(inter))
        others = np.delete(t, j, axis=0)
        other_cover = box_intersection(others, p[best])[:, 0] / np.maximum(box_area(others), 1e-12)
        covers_other = bool(other_cover.size) and other_cover.max() > 0.3
        of_truth = inter[best] / max(box_area(true_box)[0], 1e-12)
        of_box = inter[best] / max(box_area(p[best])[0], 1e-12)
        if covers_other:
            reasons.append("spans two")
        elif of_truth < 0.6 and of_box > 0.7:
            reasons.append("fragment")
        elif of_truth > 0.8 and of_box < 0.6:
            reasons.append("too big")
        else:
            reasons.append("offset")
    return reasons


@dataclass(frozen=True)
class BoxMatchStats:
    """IoU statistics of predicted boxes against true ones over a set of images."""

    images: int
    true_boxes: int
    mean_iou: float
    median_iou: float
    share_iou_at_least_0_5: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def box_match_stats(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> BoxMatchStats:
    """Per true box: IoU with its one-to-one partner (0 when none); mean/median over all."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} images")
    ious = (
        np.concatenate([matched_ious(p, t) for p, t in zip(predicted, truth, strict=True)])
        if truth
        else np.zeros(0)
    )
    return BoxMatchStats(
        images=len(truth),
        true_boxes=int(ious.size),
        mean_iou=float(ious.mean()) if ious.size else float("nan"),
        median_iou=float(np.median(ious)) if ious.size else float("nan"),
        share_iou_at_least_0_5=float(np.mean(ious >= 0.5)) if ious.size else float("nan"),
    )


def average_precision(
    predicted_boxes: Sequence[np.ndarray],
    predicted_scores: Sequence[np.ndarray],
    true_boxes: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
) -> float:
    """Average precision of one class over a set of images (PASCAL VOC, all points).

    Hand-written on purpose: scikit-learn's `average_precision_score` ranks scored items
    against binary labels, but a detection's label here depends on IoU matching against the
    not-yet-claimed true boxes of its image (greedy, in score order), and true boxes no
    detection reaches still count in the recall denominator; sklearn also integrates the raw
    precision, not the VOC precision envelope used below.

    Detections from all images are ranked by score; each is a true positive when it overlaps a
    not-yet-claimed true box of its image by IoU >= threshold (the best such box claims it).
    AP is the area under the precision envelope. Images without true boxes contribute only
    false positives. NaN when there are no true boxes at all.
    """
    if not len(predicted_boxes) == len(predicted_scores) == len(true_boxes):
        raise ValueError("need one prediction and one truth entry per image")
    total_true = sum(_boxes(t).shape[0] for t in true_boxes)
    if total_true == 0:
        return float("nan")
    records: list[tuple[float, int, int]] = []  # (score, image, index)
    for image, scores in enumerate(predicted_scores):
        for index, score in enumerate(np.asarray(scores, dtype=np.float64).reshape(-1)):
            records.append((float(score), image, index))
    records.sort(key=lambda r: -r[0])
    claimed = [np.zeros(_boxes(t).shape[0], dtype=bool) for t in true_boxes]
    hits = np.zeros(len(records), dtype=bool)
    for rank, (_, image, index) in enumerate(records):
        truth = _boxes(true_boxes[image])
        if truth.shape[0] == 0:
            continue
        ious = box_iou(_boxes(predicted_boxes[image])[index], truth)[0]
        ious[claimed[image]] = -1.0
        best = int(np.argmax(ious))
        if ious[best] >= iou_threshold:
            claimed[image][best] = True
            hits[rank] = True
    if not records:
        return 0.0
    tp = np.cumsum(hits)
    recall = tp / total_true
    precision = tp / np.arange(1, len(records) + 1)
    recall = np.r_[0.0, recall, 1.0]
    precision = np.r_[1.0, precision, 0.0]
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    changes = np.flatnonzero(np.diff(recall))
    return float(np.sum((recall[changes + 1] - recall[changes]) * precision[changes + 1]))
