"""The pure parts of LIME for images: superpixels, perturbations, the kernel, the ridge fit,
selecting superpixels, and boxes and regions from them (arrays in, arrays out).

`training.lime` ties them to a scoring function for one image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from snowtrap.models.boxes import strongest_groups

__all__ = [
    "LimeBoxes",
    "ScoreFn",
    "best_window_score",
    "box_from_region",
    "connected_groups",
    "context_region",
    "erase_boxes",
    "fill_image",
    "fit_weighted_ridge",
    "group_boxes",
    "kernel_weights",
    "lime_boxes",
    "perturb_batch",
    "region_pixels",
    "regression_target",
    "sample_masks",
    "segment_box",
    "segment_superpixels",
    "select_by_positive_share",
    "select_by_robust_z",
    "superpixel_adjacency",
    "window_regions",
]

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""(B, 3, H, W) float32 RGB 0..255 -> (B,) leopard probabilities."""


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
