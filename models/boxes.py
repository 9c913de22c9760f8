"""Box geometry as pure numpy functions, and the `Detection` record.

Conventions: arrays of boxes are float (N, 4). "xyxy" = (x0, y0, x1, y1) corners, "xywh" =
(x, y, width, height) from the top-left corner (MegaDetector's `bbox`), "cxcywh" = centre and
size. "Normalised" means divided by the image width/height, so 0..1 on both axes. Boxes cross
module boundaries as `Detection.box_xywh_normalised`, which needs no image size to interpret.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Detection",
    "batched_nms",
    "box_area",
    "box_intersection",
    "box_iou",
    "clip_xyxy",
    "crop_region_pixels",
    "cxcywh_to_xyxy",
    "denormalise_xyxy",
    "expand_xyxy",
    "letterbox_geometry",
    "nms",
    "normalise_xyxy",
    "strongest_groups",
    "undo_letterbox_xyxy",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]


@dataclass(frozen=True)
class Detection:
    """One detected animal: normalised (x, y, w, h) box, confidence, class name."""

    box_xywh_normalised: tuple[float, float, float, float]
    score: float
    label: str

    def __post_init__(self) -> None:
        if len(self.box_xywh_normalised) != 4 or not all(
            math.isfinite(v) for v in self.box_xywh_normalised
        ):
            raise ValueError(f"box must be 4 finite numbers, got {self.box_xywh_normalised}")


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim == 1 and array.shape[0] == 4:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4), got {array.shape}")
    return array


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    b = _as_boxes(boxes)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    b = _as_boxes(boxes)
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    b = _as_boxes(boxes)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    return np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], 1)


def normalise_xyxy(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixel coordinates -> 0..1 fractions of the image size."""
    return _as_boxes(boxes) / np.array([width, height, width, height], dtype=np.float64)


def denormalise_xyxy(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """0..1 fractions -> pixel coordinates of an image of the given size."""
    return _as_boxes(boxes) * np.array([width, height, width, height], dtype=np.float64)


def clip_xyxy(boxes: np.ndarray, width: float = 1.0, height: float = 1.0) -> np.ndarray:
    """Clip corners into [0, width] x [0, height] (defaults suit normalised boxes)."""
    b = _as_boxes(boxes).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0.0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0.0, height)
    return b


def box_area(boxes: np.ndarray) -> np.ndarray:
    b = _as_boxes(boxes)
    return (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas of xyxy boxes: (N, 4) x (M, 4) -> (N, M)."""
    a, b = _as_boxes(a), _as_boxes(b)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return (bottom_right - top_left).clip(min=0).prod(axis=2)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection-over-union of xyxy boxes: (N, 4) x (M, 4) -> (N, M)."""
    a, b = _as_boxes(a), _as_boxes(b)
    inter = box_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    nested_share: float | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept xyxy boxes, highest score first.

    Same semantics as `torchvision.ops.nms` (boxes with IoU > threshold are suppressed).
    With `nested_share`, a box is also suppressed when it and a kept, higher-scoring box
    are nested: the smaller of the two lies at least that share inside the other, whichever
    of them is smaller. A detector trained on LIME's boxes also boxes parts of an animal
    (head, flank) and draws loose boxes around a well-boxed one; the IoU of such a pair is
    only their area ratio (0.3-0.5 on the synthetic run), so IoU alone keeps both.
    """
    b = _as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if b.shape[0] != s.shape[0]:
        raise ValueError(f"{b.shape[0]} boxes but {s.shape[0]} scores")
    order = np.argsort(-s, kind="stable")
    areas = box_area(b)
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        top_left = np.maximum(b[best, :2], b[rest, :2])
        bottom_right = np.minimum(b[best, 2:], b[rest, 2:])
        inter = (bottom_right - top_left).clip(min=0).prod(axis=1)
        union = areas[best] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        survives = iou <= iou_threshold
        if nested_share is not None:
            smaller = np.minimum(areas[best], areas[rest])
            nested = np.where(smaller > 0, inter / np.where(smaller > 0, smaller, 1.0), 1.0)
            survives &= nested < nested_share
        order = rest[survives]
    return np.array(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou_threshold: float,
    nested_share: float | None = None,
) -> np.ndarray:
    """Class-aware NMS (see `nms`): boxes of different labels never suppress each other."""
    b = _as_boxes(boxes)
    if b.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    labels = np.asarray(labels).reshape(-1)
    # Shift each class into its own disjoint region, then one NMS pass (torchvision's trick).
    offsets = labels.astype(np.float64) * (float(b.max() - b.min()) + 1.0)
    return nms(b + offsets[:, None], scores, iou_threshold, nested_share)


def expand_xyxy(
    boxes: np.ndarray, margin: float, width: float = 1.0, height: float = 1.0
) -> np.ndarray:
    """Grow each box by `margin` x its own size on every side, clipped to the image.

    Crops for individual identification keep some context around the animal (tail, flanks).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    b = _as_boxes(boxes)
    grow_w = (b[:, 2] - b[:, 0]) * margin
    grow_h = (b[:, 3] - b[:, 1]) * margin
    grown = np.stack([b[:, 0] - grow_w, b[:, 1] - grow_h, b[:, 2] + grow_w, b[:, 3] + grow_h], 1)
    return clip_xyxy(grown, width, height)


def crop_region_pixels(
    box_xywh_normalised: tuple[float, float, float, float],
    width: int,
    height: int,
    margin: float = 0.0,
) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) pixel region of a normalised box on a full-resolution image.

    Always at least 1 x 1 pixel and inside the image, so `rgb[y0:y1, x0:x1]` is never empty.
    """
    xyxy = denormalise_xyxy(xywh_to_xyxy(np.array(box_xywh_normalised)), width, height)
    x0, y0, x1, y1 = (float(v) for v in expand_xyxy(xyxy, margin, width, height)[0])
    left = min(max(math.floor(x0), 0), width - 1)
    top = min(max(math.floor(y0), 0), height - 1)
    right = max(min(math.ceil(x1), width), left + 1)
    bottom = max(min(math.ceil(y1), height), top + 1)
    return left, top, right, bottom


def letterbox_geometry(
    src_width: int, src_height: int, dst_width: int, dst_height: int
) -> tuple[float, int, int, int, int]:
    """Aspect-preserving fit of a source image into a destination canvas.

    Returns (scale, resized_width, resized_height, pad_left, pad_top): the image is resized by
    `scale` and pasted at (pad_left, pad_top); the rest of the canvas is padding.
    """
    scale = min(dst_width / src_width, dst_height / src_height)
    resized_w = max(1, min(dst_width, round(src_width * scale)))
    resized_h = max(1, min(dst_height, round(src_height * scale)))
    return scale, resized_w, resized_h, (dst_width - resized_w) // 2, (dst_height - resized_h) // 2


def undo_letterbox_xyxy(
    boxes: np.ndarray, src_width: int, src_height: int, dst_width: int, dst_height: int
) -> np.ndarray:
    """Boxes in letterboxed-canvas pixels -> normalised boxes on the source image, clipped."""
    _, resized_w, resized_h, pad_left, pad_top = letterbox_geometry(
        src_width, src_height, dst_width, dst_height
    )
    b = _as_boxes(boxes) - np.array([pad_left, pad_top, pad_left, pad_top], dtype=np.float64)
    return clip_xyxy(normalise_xyxy(b, resized_w, resized_h))


def strongest_groups(held: np.ndarray, total: float, min_share: float) -> list[int]:
    """Indices of the groups worth a box, strongest first: those holding at least
    `min_share` of `total`, and always the strongest (one animal is there whatever the
    noise)."""
    shares = np.asarray(held, dtype=np.float64) / total
    order = np.argsort(-shares, kind="stable")
    return [int(i) for rank, i in enumerate(order) if rank == 0 or shares[i] >= min_share]
