"""Outline the animals LIME points at, by colour, and box the outlines.

LIME's superpixels say *where* the classifier's evidence is, but not how far the animal
goes: a superpixel straddles a pale coat and pale rock, and the selection holds the coat and
head but seldom the tail and legs. GrabCut (OpenCV) fits colour models of the animal and of
its surroundings, seeded by LIME's selection ("probably animal") and everything else
("probably background"), and cuts the crop along the colour edges between them. Each
connected part of the cut that LIME's selection lies on is one animal, so two animals that
share a crop come apart when background shows between them, and the fragments LIME selected
of one animal join.

GrabCut's smoothness term cuts away thin parts (a tail, legs) even where its own colour models
call them animal: a tail costs twice its length in boundary. So the pixels those models alone
call animal by a clear margin (`grow_margin`, a log-likelihood ratio), connected to the cut,
grow the box of the part nearest to them; grown pixels never join two parts into one.

The animal's colour model holds its dark rosettes, so a dark rock or shadow next to it joins
the cut. Rosettes are small dark spots on a pale coat; a dark patch of the cut wider than
`dark_patch` of the crop's side is not coat, and is cut out.

`outline_boxes` is the one entry point; `training.lime.refine_boxes` calls it per crop when
`LimeSettings.outline` is "grabcut".
"""

from __future__ import annotations

import numpy as np

from snowtrap.models.boxes import strongest_groups

__all__ = ["colour_log_likelihood", "outline_boxes"]


def colour_log_likelihood(pixels: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Log-likelihood (up to a constant shared by all models) of (N, 3) colours under one of
    GrabCut's colour models: OpenCV's (1, 65) array of 5 Gaussians, weights then means then
    3 x 3 covariances, in the colour order GrabCut was given."""
    flat = np.asarray(model, dtype=np.float64).reshape(-1)
    weights, means = flat[:5], flat[5:20].reshape(5, 3)
    covariances = flat[20:65].reshape(5, 3, 3)
    x = np.asarray(pixels, dtype=np.float64).reshape(-1, 3)
    density = np.zeros(x.shape[0])
    for weight, mean, covariance in zip(weights, means, covariances, strict=True):
        if weight <= 0:
            continue
        covariance = covariance + 0.01 * np.eye(3)  # a flat colour stays invertible (as in OpenCV)
        offset = x - mean
        distance = np.einsum("ni,ij,nj->n", offset, np.linalg.inv(covariance), offset)
        density += weight * np.exp(-0.5 * distance) / np.sqrt(np.linalg.det(covariance))
    return np.log(density + 1e-300)


def _grown_extents(
    bgr: np.ndarray,
    parts: np.ndarray,
    cut: np.ndarray,
    animal_model: np.ndarray,
    background_model: np.ndarray,
    margin: float,
) -> dict[int, tuple[int, int, int, int]]:
    """Per labelled part of `parts` (0: not animal), its (x0, y0, x1, y1) extent grown by the
    pixels the colour models alone call animal (log-likelihood ratio above `margin`) that
    connect to a part; each such pixel grows the part nearest to it. `cut` holds the parts
    and what was cut out of them (dark patches judged not animal), which never grows a part.
    Parts nothing grows are left out."""
    import cv2
    from scipy.ndimage import distance_transform_edt

    outside = parts == 0  # inside a part the colours do not matter: score no others
    pixels = bgr[outside]
    likely = np.zeros(parts.shape, dtype=np.uint8)
    likely[outside] = (
        colour_log_likelihood(pixels, animal_model)
        - colour_log_likelihood(pixels, background_model)
        > margin
    )
    animal = (parts > 0).astype(np.uint8)
    _, joined = cv2.connectedComponents(likely | animal, connectivity=8)
    touching = np.unique(joined[animal > 0])
    grown = np.isin(joined, touching[touching > 0]) & (likely > 0) & (cut == 0)
    if not grown.any():
        return {}
    _, (rows, cols) = distance_transform_edt(parts == 0, return_indices=True)
    nearest = parts[rows, cols]
    extents: dict[int, tuple[int, int, int, int]] = {}
    for part in range(1, int(parts.max()) + 1):
        ys, xs = np.nonzero(grown & (nearest == part))
        if xs.size:
            extents[part] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return extents


def _without_dark_patches(
    rgb: np.ndarray, animal: np.ndarray, seeded: np.ndarray, width: int
) -> np.ndarray:
    """`animal` less its dark patches at least `width` pixels across. Dark: below the Otsu
    threshold of the seeded pixels' lightness, which splits a coat from its rosettes."""
    import cv2

    if width < 3:
        return animal
    lightness = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[..., 0]
    threshold, _ = cv2.threshold(
        lightness[seeded].reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU
    )
    dark = ((lightness < threshold) & (animal > 0)).astype(np.uint8)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width))
    patches = cv2.morphologyEx(dark, cv2.MORPH_OPEN, disc)  # what a rosette-sized disc misses
    return (animal & (1 - patches)).astype(np.uint8)


def outline_boxes(
    rgb: np.ndarray,
    segments: np.ndarray,
    importances: np.ndarray,
    selected: np.ndarray,
    *,
    iterations: int = 3,
    close: float = 0.02,
    grow_margin: float | None = 2.0,
    dark_patch: float | None = 0.03,
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
    importance the kept parts hold. `grow_margin` (None: off) grows each part's box by the
    thin parts the cut left out; `dark_patch` (None: off) cuts out dark patches wider than
    that share of the side (see the module's docstring)."""
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
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    background_model, animal_model = np.zeros((1, 65)), np.zeros((1, 65))
    try:
        cv2.grabCut(
            bgr,
            mask,
            None,
            background_model,
            animal_model,
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
    closed = animal
    if dark_patch is not None:
        animal = _without_dark_patches(image, animal, seeded, round(dark_patch * max(size)) | 1)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(animal, connectivity=8)
    grown = (
        {}
        if grow_margin is None
        else _grown_extents(bgr, parts, closed, animal_model, background_model, grow_margin)
    )

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
        x0, y0, x1, y1 = x, y, x + w, y + h
        if part in grown:
            gx0, gy0, gx1, gy1 = grown[part]
            x0, y0, x1, y1 = min(x0, gx0), min(y0, gy0), max(x1, gx1), max(y1, gy1)
        boxes.append([x0 / size[0], y0 / size[1], x1 / size[0], y1 / size[1]])
        held.append(held_by_part[part])
    if not boxes:
        return None
    held_arr = np.asarray(held)
    kept = strongest_groups(held_arr, max(float(held_arr.sum()), 1e-12), min_group_share)
    return np.asarray(boxes, dtype=np.float64)[kept], held_arr[kept]
