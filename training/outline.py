"""Outline the animals LIME points at, by colour, and box the outlines.

LIME's superpixels say *where* the classifier's evidence is, but not how far the animal
goes: a superpixel straddles a pale coat and pale rock, and the selection holds the coat and
head but seldom the tail and legs. GrabCut (OpenCV) fits colour models of the animal and of
its surroundings, seeded by LIME's selection ("probably animal") and everything else
("probably background"), and cuts the crop along the colour edges between them. Each
connected part of the cut that LIME's selection lies on is one animal, so two animals that
share a crop come apart when background shows between them, and the fragments LIME selected
of one animal join.

`outline_boxes` is the one entry point; `training.lime.refine_boxes` calls it per crop when
`LimeSettings.outline` is "grabcut".
"""

from __future__ import annotations

import numpy as np

from training.lime import strongest_groups

__all__ = ["outline_boxes"]


def outline_boxes(
    rgb: np.ndarray,
    segments: np.ndarray,
    importances: np.ndarray,
    selected: np.ndarray,
    *,
    iterations: int = 3,
    close: float = 0.02,
    max_side: int = 640,
    min_seed_share: float = 0.2,
    min_group_share: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Boxes (xyxy normalised to `rgb`) around the colour outlines of the animals that the
    `selected` superpixels of `segments` lie on, strongest first, with the importance each
    holds; None when the cut cannot be made (nothing or everything selected), so the caller
    keeps the superpixel boxes.

    `segments` may be at another size than `rgb` (LIME's working size): it is stretched to
    the image. The image is cut at most `max_side` pixels on its longer side. Holes and gaps
    narrower than `close` of that side (rosettes, a spotted tail) are closed before the parts
    are counted. A part is kept when LIME's selection covers at least `min_seed_share` of it,
    or it holds at least 30% of the selection (a big animal LIME saw a small part of), and,
    as in `group_boxes` (`strongest_groups`), when it holds `min_group_share` of the
    importance the kept parts hold."""
    import cv2

    image = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if scale < 1.0:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    labels = cv2.resize(
        np.asarray(segments, dtype=np.float32), size, interpolation=cv2.INTER_NEAREST
    ).astype(np.int32)
    values = np.asarray(importances, dtype=np.float64)
    seeded = np.isin(labels, selected)
    if not seeded.any() or seeded.all():
        return None
    mask = np.where(seeded, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    cv2.setRNGSeed(seed)  # GrabCut seeds its colour models with k-means
    try:
        cv2.grabCut(
            cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
            mask,
            None,
            np.zeros((1, 65)),
            np.zeros((1, 65)),
            iterations,
            cv2.GC_INIT_WITH_MASK,
        )
    except cv2.error:  # a colour model with too few distinct pixels
        return None
    animal = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    kernel_side = round(close * max(size)) | 1
    if kernel_side > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_side, kernel_side))
        animal = cv2.morphologyEx(animal, cv2.MORPH_CLOSE, kernel)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(animal, connectivity=8)

    # Each selected pixel carries its superpixel's positive importance, spread over its area.
    positive = np.zeros(values.size)
    ids = np.asarray(selected, dtype=np.int64)
    positive[ids] = np.maximum(values[ids], 0.0)
    areas = np.bincount(labels.reshape(-1), minlength=positive.size)
    density = (positive / np.maximum(areas, 1))[labels] * seeded
    held_by_part = np.bincount(parts.reshape(-1), weights=density.reshape(-1), minlength=count)
    seed_by_part = np.bincount(parts.reshape(-1), weights=seeded.reshape(-1), minlength=count)
    min_area = 6e-4 * size[0] * size[1]  # 30 pixels of a 224 x 224 crop: specks
    total_seed = float(seeded.sum())

    boxes, held = [], []
    for part in range(1, count):  # 0 is the background
        x, y, w, h, area = stats[part]
        inside = seed_by_part[part]
        if area < min_area or inside == 0:
            continue
        if inside < min_seed_share * area and inside < 0.3 * total_seed:
            continue
        boxes.append([x / size[0], y / size[1], (x + w) / size[0], (y + h) / size[1]])
        held.append(held_by_part[part])
    if not boxes:
        return None
    held_arr = np.asarray(held)
    kept = strongest_groups(held_arr, max(float(held_arr.sum()), 1e-12), min_group_share)
    return np.asarray(boxes, dtype=np.float64)[kept], held_arr[kept]
