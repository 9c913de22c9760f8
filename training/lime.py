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
functions in `training.lime_maths`; this module holds the settings and `explain_image`, which
ties them to a scoring function for one image; `training.lime_dataset.explain_dataset` runs a
dataset through processes and writes COCO-style annotations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from snowtrap.training.lime_maths import (
    LimeBoxes,
    ScoreFn,
    best_window_score,
    box_from_region,
    context_region,
    erase_boxes,
    fill_image,
    fit_weighted_ridge,
    group_boxes,
    kernel_weights,
    lime_boxes,
    perturb_batch,
    region_pixels,
    regression_target,
    sample_masks,
    segment_superpixels,
    select_by_positive_share,
    select_by_robust_z,
    window_regions,
)

__all__ = [
    "LimeExplanation",
    "LimeSettings",
    "ScoreFn",
    "explain_image",
    "lime_pass",
    "onnx_score_fn",
    "refine_boxes",
]


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
