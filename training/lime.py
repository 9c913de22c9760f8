"""LIME for images, written for speed, and boxes from what it finds.

Same method as the `lime` package's `LimeImageExplainer` (superpixels, random on/off masks,
an exponential kernel on the cosine distance to the unperturbed image, a weighted ridge fit),
rebuilt around numpy and ONNX Runtime:

- the frame is squashed once to the classifier's input size and segmented there (SLIC), so
  every perturbed image is already a classifier input and a box on it maps back to the frame
  by scaling alone;
- perturbed batches are one gather over the segment map (`masks[:, segments]`), no Python
  loop per sample;
- the classifier is the exported ONNX model, run in large batches;
- the ridge fit is closed-form.

Coarse to fine (`refine_samples` > 0, what the training configs use): the whole-frame pass
only locates (superpixels standing `locate_z` robust deviations above the median importance);
each located group is explained again on a crop of the full-resolution frame around it, where
a small leopard fills the classifier's input and the superpixels follow its outline.

From the importances (of the crops when refining), the superpixels holding the top
`positive_share` of the positive importance are selected; boxes are either one box around all
of them (the original method) or one box per connected group of them (finds several animals in
one frame). With `outline="grabcut"` each crop's boxes are drawn around the colour outline
of the animals the selection lies on instead (`training.outline`): the selection says where,
the colours say how far.

The maths (`sample_masks`, `perturb_batch`, `kernel_weights`, `fit_weighted_ridge`,
`select_by_positive_share`, `superpixel_adjacency`, `connected_groups`, `lime_boxes`) are pure
functions; `explain_image` ties them to a scoring function; `explain_dataset` runs a dataset
through processes and writes COCO-style annotations.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from snowtrap.models.boxes import strongest_groups

__all__ = [
    "LimeBoxes",
    "LimeExplanation",
    "LimeSettings",
    "ScoreFn",
    "box_from_region",
    "connected_groups",
    "context_region",
    "erase_boxes",
    "explain_dataset",
    "explain_image",
    "fill_image",
    "fit_weighted_ridge",
    "group_boxes",
    "kernel_weights",
    "lime_boxes",
    "lime_pass",
    "onnx_score_fn",
    "perturb_batch",
    "read_rgb",
    "refine_boxes",
    "region_pixels",
    "regression_target",
    "sample_masks",
    "segment_box",
    "segment_superpixels",
    "select_by_positive_share",
    "select_by_robust_z",
    "superpixel_adjacency",
    "write_coco_annotations",
]

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""(B, 3, H, W) float32 RGB 0..255 -> (B,) leopard probabilities."""


@dataclass(frozen=True)
class LimeSettings:
    """Knobs of one explanation; the defaults suit 224 x 224 classifier inputs."""

    num_samples: int = 500
    n_segments: int = 60
    compactness: float = 10.0
    slic_sigma: float = 1.0
    kernel_width: float = 0.25  # as in lime's LimeImageExplainer
    ridge_alpha: float = 1.0  # as in lime (sklearn Ridge default)
    positive_share: float = 0.4
    connectivity: Literal[4, 8] = 8
    min_group_share: float = 0.1  # groups with less of the selected importance are noise
    batch_size: int = 16  # perturbed inputs per classifier call: 16 x 2.4 MB stays in cache
    seed: int = 0
    # Coarse to fine (refine_samples > 0): the whole-frame pass only says where to look
    # (superpixels `locate_z` robust deviations above the median importance); each place is
    # explained again on a crop of the full-resolution frame, and the boxes come from there.
    refine_samples: int = 0
    refine_segments: int = 50
    locate_z: float = 3.0
    refine_context: float = 0.5  # the crop adds this much of the box's size on each side
    refine_min_side: float = 0.2  # ... and spans at least this share of the frame's sides
    max_regions: int = 3
    min_region_score: float = 0.0  # a crop the classifier scores lower holds no leopard
    region_nms_iou: float = 0.3
    # Outline (refining only): "grabcut" boxes each crop's animals by their colour outline,
    # seeded by the selected superpixels (`training.outline`), instead of boxing the
    # superpixels themselves; `outline_close` closes gaps this share of the crop's side.
    outline: Literal["superpixels", "grabcut"] = "superpixels"
    outline_iterations: int = 3  # on the tuning frames 3 boxes as well as 5, 2 worse
    outline_close: float = 0.02
    # ... and grows each box by the thin parts (tail, legs) GrabCut's smoothness cut away that
    # its colour models call animal by this log-likelihood ratio; None: no growing.
    outline_grow_margin: float | None = 2.0
    # ... and cuts out of the outline dark patches (rock, shadow) wider than this share of the
    # crop's side, which a coat's rosettes never are; None: keep them.
    outline_dark_patch: float | None = 0.03
    # Look again (refining only): grey out the boxes found so far (grown by `erase_margin` of
    # their size) and, while the classifier still scores the best quarter-frame window of what
    # is left (3 x 3, corner to corner) at least `min_region_score`, run the whole-frame pass
    # again on it. A big leopard outshines a second one in the first pass; with the first one
    # gone, the second stands out. A small leopard left alone barely moves the whole frame's
    # score (on the full run's explained frames, 24% of those with an animal left passed a
    # whole-frame gate and 68% the windows gate, against 13% and 34% of those with nothing
    # left), hence the windows.
    search_rounds: int = 0
    erase_margin: float = 0.1

    def __post_init__(self) -> None:
        if self.num_samples < 2:
            raise ValueError("num_samples must be >= 2")
        if not 0.0 < self.positive_share <= 1.0:
            raise ValueError("positive_share must be in (0, 1]")
        if self.connectivity not in (4, 8):
            raise ValueError("connectivity must be 4 or 8")
        if self.refine_samples and self.refine_samples < 2:
            raise ValueError("refine_samples must be 0 (one pass) or >= 2")
        if self.max_regions < 1:
            raise ValueError("max_regions must be >= 1")
        if self.search_rounds < 0:
            raise ValueError("search_rounds must be >= 0")
        if self.outline not in ("superpixels", "grabcut"):
            raise ValueError("outline must be 'superpixels' or 'grabcut'")
        if self.outline_iterations < 1:
            raise ValueError("outline_iterations must be >= 1")


# --- pure parts ---------------------------------------------------------------------------


def segment_superpixels(
    rgb: np.ndarray, n_segments: int, compactness: float = 10.0, sigma: float = 1.0
) -> np.ndarray:
    """SLIC superpixels (on CIELAB) as an (H, W) int32 map with labels 0..K-1, all present."""
    from skimage.segmentation import slic

    segments = slic(
        np.asarray(rgb),
        n_segments=n_segments,
        compactness=compactness,
        sigma=sigma,
        start_label=0,
        channel_axis=-1,
        convert2lab=None,
    )
    _, dense = np.unique(segments, return_inverse=True)  # relabel 0..K-1 without gaps
    return dense.reshape(segments.shape).astype(np.int32)


def sample_masks(num_samples: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """(num_samples, K) bool on/off masks, uniform; row 0 is the unperturbed image (all on)."""
    masks = rng.integers(0, 2, size=(num_samples, num_segments)).astype(bool)
    masks[0] = True
    return masks


def fill_image(rgb: np.ndarray) -> np.ndarray:
    """What an 'off' superpixel shows: the image's mean colour (as lime's `hide_color`)."""
    image = np.asarray(rgb, dtype=np.float32)
    return np.broadcast_to(image.mean(axis=(0, 1)), image.shape).astype(np.float32)


def perturb_batch(
    image_chw: np.ndarray, fill_chw: np.ndarray, segments: np.ndarray, masks: np.ndarray
) -> np.ndarray:
    """(B, 3, H, W) float32: pixel from the image where its superpixel is on, else the fill."""
    on = masks[:, segments]  # (B, H, W) gather over the segment map
    return np.where(on[:, None, :, :], image_chw[None], fill_chw[None]).astype(
        np.float32, copy=False
    )


def kernel_weights(masks: np.ndarray, kernel_width: float = 0.25) -> np.ndarray:
    """lime's sample weights: sqrt(exp(-d^2 / width^2)), d = cosine distance to all-on.

    For a binary mask with n of K superpixels on, the cosine similarity to the all-on mask
    is n / sqrt(n K) = sqrt(n / K).
    """
    on = masks.sum(axis=1).astype(np.float64)
    distance = 1.0 - np.sqrt(on / masks.shape[1])
    return np.sqrt(np.exp(-(distance**2) / kernel_width**2))


def fit_weighted_ridge(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, alpha: float = 1.0
) -> tuple[np.ndarray, float]:
    """Weighted ridge regression with an unpenalised intercept, closed form.

    Minimises sum_i w_i (y_i - x_i.b - c)^2 + alpha |b|^2, which is what sklearn's
    `Ridge(alpha).fit(x, y, sample_weight=w)` (lime's default model) solves.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    total = w.sum()
    x_mean = (w[:, None] * x).sum(axis=0) / total
    y_mean = float((w * y).sum() / total)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ (w[:, None] * xc) + alpha * np.eye(x.shape[1])
    coef = np.linalg.solve(gram, xc.T @ (w * yc))
    return coef, y_mean - float(x_mean @ coef)


def regression_target(probabilities: np.ndarray) -> np.ndarray:
    """What the linear model fits: the log-odds. lime fits the probability; the log-odds are
    additive in evidence, so a small leopard's superpixels keep their weight when the
    classifier is saturated (p ~ 1 whenever any part of it shows), and noise superpixels stay
    near zero."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1.0 - 1e-6)
    return np.log(p / (1.0 - p))


def select_by_positive_share(importances: np.ndarray, share: float = 0.8) -> np.ndarray:
    """Indices of the most important superpixels that together hold `share` of the positive
    importance (largest first); empty when no superpixel has positive importance."""
    values = np.asarray(importances, dtype=np.float64)
    order = np.argsort(-values, kind="stable")
    positive = order[values[order] > 0]
    if positive.size == 0:
        return positive
    cumulative = np.cumsum(values[positive]) / values[positive].sum()
    count = int(np.searchsorted(cumulative, share - 1e-12)) + 1
    return positive[: min(count, positive.size)]


def select_by_robust_z(importances: np.ndarray, z: float = 3.0) -> np.ndarray:
    """Indices of superpixels whose importance stands out from the rest: above the median by
    more than `z` robust standard deviations (1.4826 x MAD) and positive, largest first.

    Most superpixels of a trap frame are background whose importances are fit noise around
    zero; the median and MAD measure that noise, so a leopard stands out whatever the number
    of superpixels or the total importance (a cumulative share depends on both)."""
    values = np.asarray(importances, dtype=np.float64)
    median = float(np.median(values))
    spread = max(float(np.median(np.abs(values - median))) * 1.4826, 1e-12)
    chosen = np.flatnonzero((values > median + z * spread) & (values > 0))
    return chosen[np.argsort(-values[chosen], kind="stable")]


def context_region(box: np.ndarray, context: float, min_side: float) -> np.ndarray:
    """Normalised xyxy region around a normalised box: `context` x its size added on each
    side, each side at least `min_side` of the frame (same centre), clipped to the frame."""
    from snowtrap.models.boxes import expand_xyxy

    grown = expand_xyxy(np.asarray(box, dtype=np.float64), context)[0]
    centre = (grown[:2] + grown[2:]) / 2
    half = np.maximum((grown[2:] - grown[:2]) / 2, min_side / 2)
    return np.clip(np.concatenate([centre - half, centre + half]), 0.0, 1.0)


def window_regions(side: float = 0.5, steps: int = 3) -> np.ndarray:
    """Normalised xyxy windows `side` of the frame's sides on a `steps` x `steps` grid,
    corner to corner: the places a small leopard would fill enough for the classifier."""
    starts = np.linspace(0.0, 1.0 - side, steps)
    return np.array([[x, y, x + side, y + side] for y in starts for x in starts])


def best_window_score(
    rgb: np.ndarray, score_fn: ScoreFn, windows: np.ndarray, work_size: int = 224
) -> float:
    """The classifier's highest score over the frame's `windows`, in one batch."""
    from snowtrap.models.inference import resize_rgb

    image = np.asarray(rgb)
    height, width = image.shape[:2]
    crops = []
    for window in windows:
        x0, y0, x1, y1 = region_pixels(window, width, height)
        crop = resize_rgb(image[y0:y1, x0:x1], work_size, work_size)
        crops.append(crop.astype(np.float32).transpose(2, 0, 1))
    return float(np.max(np.asarray(score_fn(np.ascontiguousarray(np.stack(crops))))))


def region_pixels(region: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel bounds (x0, y0, x1, y1) of a normalised region, outward to whole pixels, never
    empty; a region already on the pixel grid maps to itself."""
    eps = 1e-6
    x0 = min(max(int(np.floor(region[0] * width + eps)), 0), width - 1)
    y0 = min(max(int(np.floor(region[1] * height + eps)), 0), height - 1)
    x1 = max(min(int(np.ceil(region[2] * width - eps)), width), x0 + 1)
    y1 = max(min(int(np.ceil(region[3] * height - eps)), height), y0 + 1)
    return x0, y0, x1, y1


def box_from_region(box: np.ndarray, region: np.ndarray) -> np.ndarray:
    """A normalised xyxy box on a crop -> normalised xyxy on the frame the crop came from."""
    b, r = np.asarray(box, dtype=np.float64), np.asarray(region, dtype=np.float64)
    size = np.tile(r[2:] - r[:2], 2)
    return np.tile(r[:2], 2) + b * size


def erase_boxes(rgb: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """A copy of the frame with each normalised xyxy box (grown by `margin` x its size on
    each side) filled with the frame's mean colour: what LIME shows for an 'off' superpixel,
    so to the classifier the animal there is gone."""
    from snowtrap.models.boxes import expand_xyxy

    image = np.asarray(rgb)
    height, width = image.shape[:2]
    erased = image.copy()
    fill = image.reshape(-1, image.shape[-1]).mean(axis=0).astype(image.dtype)
    for box in expand_xyxy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), margin):
        x0, y0, x1, y1 = region_pixels(box, width, height)  # clamps to the frame
        erased[y0:y1, x0:x1] = fill
    return erased


def superpixel_adjacency(segments: np.ndarray, connectivity: Literal[4, 8] = 8) -> np.ndarray:
    """(K, K) bool: superpixels that touch (edge neighbours; with 8 also diagonal ones)."""
    count = int(segments.max()) + 1
    pairs = [
        (segments[:, :-1], segments[:, 1:]),
        (segments[:-1, :], segments[1:, :]),
    ]
    if connectivity == 8:
        pairs += [(segments[:-1, :-1], segments[1:, 1:]), (segments[:-1, 1:], segments[1:, :-1])]
    adjacency = np.zeros((count, count), dtype=bool)
    for a, b in pairs:
        differ = a != b
        adjacency[a[differ], b[differ]] = True
    return adjacency | adjacency.T


def connected_groups(selected: np.ndarray, adjacency: np.ndarray) -> list[np.ndarray]:
    """Connected components of the selected superpixels in the adjacency graph."""
    remaining = {int(s) for s in selected}
    groups: list[np.ndarray] = []
    while remaining:
        start = remaining.pop()
        group, frontier = [start], [start]
        while frontier:
            node = frontier.pop()
            for neighbour in np.flatnonzero(adjacency[node]):
                neighbour = int(neighbour)
                if neighbour in remaining:
                    remaining.remove(neighbour)
                    group.append(neighbour)
                    frontier.append(neighbour)
        groups.append(np.array(sorted(group), dtype=np.int64))
    return groups


def segment_box(segments: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Normalised xyxy box (0..1) around the pixels of the given superpixels."""
    ys, xs = np.nonzero(np.isin(segments, ids))
    if ys.size == 0:
        raise ValueError("no pixels in the given superpixels")
    height, width = segments.shape
    return np.array(
        [xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height]
    )


@dataclass(frozen=True)
class LimeBoxes:
    """Boxes (normalised xyxy) from one explanation, with the importance each one holds."""

    selected: np.ndarray  # superpixel ids
    single_box: np.ndarray | None  # around all selected superpixels; None when none selected
    group_boxes: np.ndarray  # (G, 4), one per kept connected group, largest importance first
    group_shares: np.ndarray  # (G,) share of the selected importance in each group


def group_boxes(
    segments: np.ndarray,
    importances: np.ndarray,
    selected: np.ndarray,
    connectivity: Literal[4, 8] = 8,
    min_group_share: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (normalised xyxy) of the connected groups of `selected`, strongest first, with the
    importance each holds. Groups holding less than `min_group_share` of the selected
    importance are dropped (a lone background superpixel with a little importance is not a
    second leopard); the strongest group is always kept."""
    if selected.size == 0:
        return np.zeros((0, 4)), np.zeros(0)
    values = np.asarray(importances, dtype=np.float64)
    adjacency = superpixel_adjacency(segments, connectivity)
    groups = connected_groups(selected, adjacency)
    held = np.array([values[g].sum() for g in groups])
    kept = strongest_groups(held, values[selected].sum(), min_group_share)
    return np.stack([segment_box(segments, groups[i]) for i in kept]), held[kept]


def lime_boxes(
    segments: np.ndarray,
    importances: np.ndarray,
    positive_share: float = 0.8,
    connectivity: Literal[4, 8] = 8,
    min_group_share: float = 0.1,
) -> LimeBoxes:
    """Select superpixels by positive-importance share, then box them both ways."""
    selected = select_by_positive_share(importances, positive_share)
    if selected.size == 0:
        return LimeBoxes(selected, None, np.zeros((0, 4)), np.zeros(0))
    boxes, held = group_boxes(segments, importances, selected, connectivity, min_group_share)
    return LimeBoxes(
        selected=selected,
        single_box=segment_box(segments, selected),
        group_boxes=boxes,
        group_shares=held / np.asarray(importances, dtype=np.float64)[selected].sum(),
    )


# --- one image ----------------------------------------------------------------------------


@dataclass
class LimeExplanation:
    """Everything one explanation produced; boxes are normalised xyxy on the frame."""

    segments: np.ndarray  # (H, W) int32 at the working size
    importances: np.ndarray  # (K,) ridge coefficients
    intercept: float
    score: float  # classifier probability of the unperturbed frame
    boxes: LimeBoxes
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    regions: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # refined crops


def lime_pass(
    rgb: np.ndarray,
    score_fn: ScoreFn,
    settings: LimeSettings,
    work_size: int = 224,
    min_score: float | None = None,
) -> tuple[np.ndarray, np.ndarray, float, float, dict[str, float]] | None:
    """One LIME fit (`settings.n_segments`, `num_samples`, `seed`): squash to `work_size`,
    segment, perturb, score, fit.

    Returns (segments, importances, intercept, unperturbed score, timings); None as soon as
    the unperturbed image (the first sample) scores below `min_score`, so a crop the
    classifier rejects costs one batch, not a whole fit."""
    from snowtrap.models.inference import resize_rgb

    started = time.perf_counter()
    timings: dict[str, float] = {}
    image = resize_rgb(np.asarray(rgb), work_size, work_size)
    segments = segment_superpixels(
        image, settings.n_segments, settings.compactness, settings.slic_sigma
    )
    timings["segment"] = time.perf_counter() - started
    num_samples = settings.num_samples
    rng = np.random.default_rng(settings.seed)
    masks = sample_masks(num_samples, int(segments.max()) + 1, rng)
    image_chw = np.ascontiguousarray(image.astype(np.float32).transpose(2, 0, 1))
    fill_chw = np.ascontiguousarray(fill_image(image).transpose(2, 0, 1))
    scores = np.empty(num_samples, dtype=np.float64)
    perturb_seconds = score_seconds = 0.0
    for start in range(0, num_samples, settings.batch_size):
        t0 = time.perf_counter()
        batch = perturb_batch(
            image_chw, fill_chw, segments, masks[start : start + settings.batch_size]
        )
        t1 = time.perf_counter()
        scores[start : start + batch.shape[0]] = np.asarray(score_fn(batch)).reshape(-1)
        perturb_seconds += t1 - t0
        score_seconds += time.perf_counter() - t1
        if start == 0 and min_score is not None and scores[0] < min_score:
            return None
    timings["perturb"], timings["score"] = perturb_seconds, score_seconds
    t0 = time.perf_counter()
    coef, intercept = fit_weighted_ridge(
        masks,
        regression_target(scores),
        kernel_weights(masks, settings.kernel_width),
        settings.ridge_alpha,
    )
    timings["fit"] = time.perf_counter() - t0
    return segments, coef, intercept, float(scores[0]), timings


def refine_boxes(
    rgb: np.ndarray,
    regions: np.ndarray,
    score_fn: ScoreFn,
    settings: LimeSettings,
    work_size: int = 224,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Explain each region again on its crop of the full-resolution frame.

    A leopard that is 20 px wide at the classifier's input fills a crop, so the crop's
    superpixels follow its outline and the box is tight. Returns frame-normalised xyxy boxes
    (overlaps suppressed, strongest first), the importance each holds, the regions as cropped
    (on the frame's pixel grid) and the timings. A crop the classifier scores below
    `settings.min_region_score` gives no box."""
    height, width = np.asarray(rgb).shape[:2]
    boxes, held, cropped = [], [], []
    timings = dict.fromkeys(("segment", "perturb", "score", "fit"), 0.0)
    for index, region in enumerate(regions):
        x0, y0, x1, y1 = region_pixels(region, width, height)
        cropped.append(np.array([x0 / width, y0 / height, x1 / width, y1 / height]))
        crop_settings = replace(
            settings,
            n_segments=settings.refine_segments,
            num_samples=settings.refine_samples,
            seed=settings.seed + 1 + index,
        )
        crop = np.asarray(rgb)[y0:y1, x0:x1]
        started = time.perf_counter()
        fit = lime_pass(
            crop,
            score_fn,
            crop_settings,
            work_size,
            min_score=settings.min_region_score,
        )
        if fit is None:
            timings["score"] += time.perf_counter() - started
            continue
        segments, coef, _, _, part = fit
        for key, value in part.items():
            timings[key] += value
        selected = select_by_positive_share(coef, settings.positive_share)
        outlined = None
        if settings.outline == "grabcut":
            from snowtrap.training.outline import outline_boxes

            t0 = time.perf_counter()
            outlined = outline_boxes(
                crop,
                segments,
                coef,
                selected,
                iterations=settings.outline_iterations,
                close=settings.outline_close,
                grow_margin=settings.outline_grow_margin,
                dark_patch=settings.outline_dark_patch,
                min_group_share=settings.min_group_share,
                seed=crop_settings.seed,
            )
            timings["outline"] = timings.get("outline", 0.0) + time.perf_counter() - t0
        crop_boxes, crop_held = outlined or group_boxes(
            segments, coef, selected, settings.connectivity, settings.min_group_share
        )
        boxes += [box_from_region(b, cropped[-1]) for b in crop_boxes]
        held += list(crop_held)
    regions_cropped = np.array(cropped).reshape(-1, 4)
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0), regions_cropped, timings
    kept, kept_held = _suppress_overlaps(np.stack(boxes), np.asarray(held), settings)
    return kept, kept_held, regions_cropped, timings


def _locate_and_refine(
    searched: np.ndarray,
    segments: np.ndarray,
    coef: np.ndarray,
    score_fn: ScoreFn,
    settings: LimeSettings,
    work_size: int,
    timings: dict[str, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From a whole-frame pass over `searched` (the frame, or what is left of it), the located
    regions explained again on their crops of `searched`; adds the crops' timings.

    Returns (located superpixels, fine boxes, the importance each holds, cropped regions)."""
    located = select_by_robust_z(coef, settings.locate_z)
    coarse, _ = group_boxes(
        segments, coef, located, settings.connectivity, settings.min_group_share
    )
    wanted = [
        context_region(b, settings.refine_context, settings.refine_min_side)
        for b in coarse[: settings.max_regions]
    ]
    fine, held, regions, fine_timings = refine_boxes(
        searched, np.array(wanted).reshape(-1, 4), score_fn, settings, work_size
    )
    for key, value in fine_timings.items():
        timings[f"refine_{key}"] = timings.get(f"refine_{key}", 0.0) + value
    return located, fine, held, regions


def _suppress_overlaps(
    boxes: np.ndarray, held: np.ndarray, settings: LimeSettings
) -> tuple[np.ndarray, np.ndarray]:
    from snowtrap.models.boxes import nms

    keep = nms(boxes, held, settings.region_nms_iou)
    return boxes[keep], held[keep]


def explain_image(
    rgb: np.ndarray, score_fn: ScoreFn, settings: LimeSettings, work_size: int = 224
) -> LimeExplanation:
    """Explain one frame; with `refine_samples` > 0, coarse (whole frame) then fine (crops)."""
    from snowtrap.training.evaluate import enclosing_box

    started = time.perf_counter()
    fit = lime_pass(rgb, score_fn, settings, work_size)
    assert fit is not None  # no min_score: the pass always finishes
    segments, coef, intercept, score, timings = fit
    t0 = time.perf_counter()
    if not settings.refine_samples:
        boxes = lime_boxes(
            segments,
            coef,
            settings.positive_share,
            settings.connectivity,
            settings.min_group_share,
        )
        regions = np.zeros((0, 4))
    else:
        located, fine, held, regions = _locate_and_refine(
            rgb, segments, coef, score_fn, settings, work_size, timings
        )
        searched, found = np.asarray(rgb), fine
        for round_index in range(settings.search_rounds):
            if found.shape[0] == 0:
                break
            # `searched` already has earlier rounds' boxes greyed out; add this round's.
            searched = erase_boxes(searched, found, settings.erase_margin)
            t1 = time.perf_counter()
            best = best_window_score(searched, score_fn, window_regions(), work_size)
            timings["search_gate"] = timings.get("search_gate", 0.0) + time.perf_counter() - t1
            if best < settings.min_region_score:  # nothing left the classifier calls a leopard
                break
            again = lime_pass(
                searched,
                score_fn,
                replace(settings, seed=settings.seed + 1000 * (round_index + 1)),
                work_size,
            )
            assert again is not None  # no min_score: the pass always finishes
            search_segments, search_coef, _, _, search_timings = again
            for key, value in search_timings.items():
                timings[f"search_{key}"] = timings.get(f"search_{key}", 0.0) + value
            _, found, found_held, found_regions = _locate_and_refine(
                searched, search_segments, search_coef, score_fn, settings, work_size, timings
            )
            fine, held = _suppress_overlaps(
                np.concatenate([fine, found]), np.concatenate([held, found_held]), settings
            )
            regions = np.concatenate([regions, found_regions])
        boxes = LimeBoxes(
            selected=located,
            single_box=None if fine.shape[0] == 0 else enclosing_box(fine),
            group_boxes=fine,
            group_shares=held / held.sum() if held.size else held,
        )
    timings["box"] = time.perf_counter() - t0
    return LimeExplanation(
        segments=segments,
        importances=coef,
        intercept=intercept,
        score=score,
        boxes=boxes,
        seconds=time.perf_counter() - started,
        timings=timings,
        regions=regions,
    )


def onnx_score_fn(session: Any) -> ScoreFn:
    """Score function over an ONNX classifier session whose graph normalises its 0..255 input."""
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def score(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([output_name], {input_name: batch})[0]).reshape(-1)

    return score


# --- a dataset, in processes --------------------------------------------------------------


@dataclass(frozen=True)
class LimeJob:
    image_id: int
    path: str


_WORKER: dict[str, Any] = {}


def _init_worker(onnx_path: str, threads: int, settings: LimeSettings, work_size: int) -> None:
    from snowtrap.models.inference import create_session

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    session = create_session(Path(onnx_path), ["CPUExecutionProvider"], threads)
    _WORKER.update(score=onnx_score_fn(session), settings=settings, work_size=work_size)


def _explain_job(job: LimeJob) -> dict[str, Any]:
    rgb = read_rgb(Path(job.path))
    explanation = explain_image(rgb, _WORKER["score"], _WORKER["settings"], _WORKER["work_size"])
    return _explanation_record(job, rgb.shape[1], rgb.shape[0], explanation)


def read_rgb(path: Path) -> np.ndarray:
    """A training image as (H, W, 3) uint8, upright, through the same decoder as serving."""
    from snowtrap.models.decode import decode_trap_image

    return np.asarray(decode_trap_image(Path(path).read_bytes()).rgb)


def _explanation_record(
    job: LimeJob, width: int, height: int, explanation: LimeExplanation
) -> dict[str, Any]:
    boxes = explanation.boxes
    return {
        "image_id": job.image_id,
        "path": job.path,
        "width": width,
        "height": height,
        "score": explanation.score,
        "seconds": explanation.seconds,
        "timings": explanation.timings,
        "segments": explanation.segments,
        "importances": explanation.importances,
        "selected": boxes.selected,
        "single_box": boxes.single_box,
        "group_boxes": boxes.group_boxes,
        "group_shares": boxes.group_shares,
        "regions": explanation.regions,
    }


def explain_dataset(
    jobs: Sequence[LimeJob],
    classifier_onnx: Path,
    settings: LimeSettings,
    workers: int = 2,
    threads_per_worker: int | None = None,
    work_size: int = 224,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Explain every image in `jobs` with `workers` processes, each with its own ORT session.

    Returns one record per job, in job order (segments and importances included, for the
    report); `write_coco_annotations` turns them into the on-disk annotation file.
    """
    from tqdm import tqdm

    from snowtrap.models.inference import available_cpus

    threads = threads_per_worker or max(1, available_cpus() // max(workers, 1))
    init_args = (str(classifier_onnx), threads, settings, work_size)
    if workers <= 1:
        _init_worker(*init_args)
        iterator = map(_explain_job, jobs)
        return list(tqdm(iterator, total=len(jobs), desc="LIME", disable=not progress))
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # torch/ORT thread pools do not fork well
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=init_args
    ) as pool:
        iterator = pool.map(_explain_job, jobs, chunksize=1)
        return list(tqdm(iterator, total=len(jobs), desc="LIME", disable=not progress))


def write_coco_annotations(
    records: Sequence[dict[str, Any]],
    path: Path,
    mode: Literal["single", "group"],
    category_name: str = "snow_leopard",
    file_names: dict[int, str] | None = None,
) -> dict[str, Any]:
    """COCO-style JSON of the LIME boxes (pixel xywh), one category; returns the document."""
    images, annotations = [], []
    for record in records:
        width, height = record["width"], record["height"]
        images.append(
            {
                "id": record["image_id"],
                "file_name": (file_names or {}).get(record["image_id"], record["path"]),
                "width": width,
                "height": height,
            }
        )
        if mode == "single":
            boxes = [] if record["single_box"] is None else [record["single_box"]]
            shares = [1.0] * len(boxes)
        else:
            boxes, shares = list(record["group_boxes"]), list(record["group_shares"])
        for box, share in zip(boxes, shares, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            bbox = [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record["image_id"],
                    "category_id": 1,
                    "bbox": [round(v, 2) for v in bbox],
                    "area": round(bbox[2] * bbox[3], 2),
                    "iscrowd": 0,
                    "score": round(float(record["score"]), 6),
                    "importance_share": round(float(share), 6),
                }
            )
    document = {
        "info": {"description": f"LIME boxes ({mode} mode)"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": category_name}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))
    return document
