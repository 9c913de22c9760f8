"""ONNX Runtime inference with its pre- and post-processing (numpy + OpenCV, no torch).

Resizing for the classifier: the whole frame is *squashed* to the square input (aspect ratio
not kept). Camera-trap frames are 4:3 or 16:9 and leopards are often at the edge of the
frame: a centre crop would cut them off, and letterboxing would spend a quarter to 44% of
the 224 x 224 input on padding, shrinking an already small animal. The head is fitted on
features of squashed frames, so the distortion is learned; training must therefore call
`preprocess_for_classifier` too (it is what `ModelBundle.classify` uses).

Detectors follow the `DetectorIO` contract of their manifest entry (letterbox by default,
since box geometry matters there).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from snowtrap.models.boxes import (
    Detection,
    batched_nms,
    clip_xyxy,
    cxcywh_to_xyxy,
    letterbox_geometry,
    normalise_xyxy,
    undo_letterbox_xyxy,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from snowtrap.models.manifest import DetectorIO, ModelEntry
from snowtrap.models.normalisation import Normalisation

__all__ = [
    "DetectorOutputError",
    "ImageBatch",
    "available_cpus",
    "create_session",
    "default_providers",
    "letterbox_rgb",
    "pixels_to_input",
    "preprocess_for_classifier",
    "resize_rgb",
    "run_classifier",
    "run_detector",
]

ImageBatch = np.ndarray | Sequence[np.ndarray]


class DetectorOutputError(ValueError):
    """A detector's outputs do not fit the `DetectorIO` contract in its manifest."""


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, bounded by a cgroup v2 CPU quota if set.

    Kubernetes limits show up only in the cgroup quota, not in `os.cpu_count()`; sizing the
    ONNX Runtime thread pool by the host's cores would oversubscribe a throttled pod.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*providers, "CPUExecutionProvider"]


SPINNING_ENTRIES = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def create_session(
    path: Path, providers: Sequence[str] | None = None, intra_op_threads: int | None = None
):  # -> onnxruntime.InferenceSession (kept untyped so importing this module stays cheap)
    """An InferenceSession with full graph optimisation and a thread pool sized to the pod.

    The pool's threads do not spin-wait for the next run (ONNX Runtime's default): a serving
    process runs a model between decoding, Kafka I/O and other models, and spinning threads
    took those cores. With 2 threads, the classifier spent 12.1 CPU-ms a frame spinning vs
    7.4 without, at the same or better wall time (docs/experiments.md, worker speed).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads or available_cpus()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for entry in SPINNING_ENTRIES:
        options.add_session_config_entry(entry, "0")
    return ort.InferenceSession(
        str(path), sess_options=options, providers=list(providers or default_providers())
    )


def _as_image_list(images: ImageBatch) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = [images]
        elif images.ndim == 4:
            images = list(images)
        else:
            raise ValueError(f"expected (H, W, 3) or (N, H, W, 3), got shape {images.shape}")
    batch = list(images)
    for rgb in batch:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    return batch


def resize_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to exactly (height, width): area averaging when shrinking, bilinear otherwise."""
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return rgb
    shrinking = rgb.shape[0] >= height and rgb.shape[1] >= width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(rgb), (width, height), interpolation=interpolation)


def letterbox_rgb(rgb: np.ndarray, height: int, width: int, pad_value: float = 0.0) -> np.ndarray:
    """Fit inside (height, width) keeping the aspect ratio; centred, padding with `pad_value`.

    float32 (height, width, 3) on the 0..255 scale; `boxes.undo_letterbox_xyxy` maps back.
    """
    _, resized_w, resized_h, left, top = letterbox_geometry(
        rgb.shape[1], rgb.shape[0], width, height
    )
    canvas = np.full((height, width, 3), pad_value, dtype=np.float32)
    canvas[top : top + resized_h, left : left + resized_w] = resize_rgb(rgb, resized_h, resized_w)
    return canvas


def pixels_to_input(batch_nhwc: np.ndarray, normalisation: Normalisation) -> np.ndarray:
    """(N, H, W, 3) RGB pixels on 0..255 -> the float32 NCHW tensor the graph expects.

    One pass converts and transposes (uint8 NHWC straight into a new float32 NCHW array), and
    the scaling happens in place on that copy: a tenth of the time of converting first and
    transposing after (2.0 -> 0.2 ms a 224 x 224 frame with normalisation out of the graph).
    """
    x = np.asarray(batch_nhwc)
    if normalisation.channel_order == "BGR":
        x = x[..., ::-1]
    x = x.transpose(0, 3, 1, 2).astype(np.float32, order="C")  # always a fresh copy
    if normalisation.scale == "0-1":
        x *= np.float32(1.0 / 255.0)
    if not normalisation.applied_in_graph:
        x -= np.asarray(normalisation.mean, dtype=np.float32)[:, None, None]
        x *= (1.0 / np.asarray(normalisation.std, dtype=np.float32))[:, None, None]
    return x


def preprocess_for_classifier(
    images: ImageBatch, normalisation: Normalisation, size: int | tuple[int, int]
) -> np.ndarray:
    """RGB uint8 image(s) of any size -> float32 (N, 3, H, W) classifier input.

    Each frame is squashed to `size` (see the module docstring), then put on the
    normalisation's scale and channel order, and normalised unless the graph does it.
    """
    height, width = (size, size) if isinstance(size, int) else size
    resized = [resize_rgb(rgb, height, width) for rgb in _as_image_list(images)]
    if not resized:
        return np.zeros((0, 3, height, width), dtype=np.float32)
    return pixels_to_input(np.stack(resized), normalisation)


def run_classifier(
    session, entry: ModelEntry, images: ImageBatch, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray | None]:
    """Leopard probabilities (N,) float32, and the features when the graph outputs them."""
    if entry.input_size is None:
        raise ValueError("classifier entry has no input_size")
    input_name = entry.inputs[0].name
    output_names = [spec.name for spec in entry.outputs]
    normalisation = entry.normalisation.to_normalisation()
    batch = _as_image_list(images)
    probabilities: list[np.ndarray] = []
    features: list[np.ndarray] = []
    for start in range(0, len(batch), batch_size):
        tensor = preprocess_for_classifier(
            batch[start : start + batch_size], normalisation, entry.input_size
        )
        outputs = session.run(output_names, {input_name: tensor})
        probabilities.append(np.asarray(outputs[0], dtype=np.float32).reshape(-1))
        if len(outputs) > 1:
            features.append(np.asarray(outputs[1], dtype=np.float32))
    if not probabilities:
        return np.zeros(0, dtype=np.float32), None
    return np.concatenate(probabilities), (np.concatenate(features) if features else None)


def _prepare_for_detector(rgb: np.ndarray, io: DetectorIO) -> tuple[np.ndarray, tuple[int, int]]:
    """One image -> (H, W, 3) float32 0..255 canvas for the graph, and the canvas size (w, h)."""
    if io.input_size is not None:
        height, width = io.input_size
        if io.resize == "letterbox":
            return letterbox_rgb(rgb, height, width, io.pad_value), (width, height)
        return resize_rgb(rgb, height, width).astype(np.float32), (width, height)
    height, width = rgb.shape[:2]
    if io.max_side is not None and max(height, width) > io.max_side:
        ratio = io.max_side / max(height, width)
        height, width = max(1, round(height * ratio)), max(1, round(width * ratio))
        rgb = resize_rgb(rgb, height, width)
    return rgb.astype(np.float32), (width, height)


def _pad_on_scale(entry: ModelEntry) -> DetectorIO:
    """The letterbox pad value is given on the input scale; canvases are built on 0..255."""
    io = entry.io
    assert io is not None
    if entry.normalisation.scale == "0-1":
        return io.model_copy(update={"pad_value": io.pad_value * 255.0})
    return io


def _decode_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray | None,
    io: DetectorIO,
    class_names: Sequence[str],
    source_size: tuple[int, int],
    canvas_size: tuple[int, int],
    min_score: float,
) -> list[Detection]:
    """Raw graph outputs for one image -> Detections on the source image, best first."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels is None:
        labels = np.full(scores.shape, io.label_offset, dtype=np.int64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if not boxes.shape[0] == scores.shape[0] == labels.shape[0]:
        raise DetectorOutputError(
            f"{boxes.shape[0]} boxes, {scores.shape[0]} scores, {labels.shape[0]} labels"
        )
    keep = scores >= min_score
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if boxes.shape[0] == 0:
        return []
    if io.box_format == "xywh":
        boxes = xywh_to_xyxy(boxes)
    elif io.box_format == "cxcywh":
        boxes = cxcywh_to_xyxy(boxes)
    canvas_w, canvas_h = canvas_size
    if io.box_units == "normalised":
        boxes = boxes * np.array([canvas_w, canvas_h, canvas_w, canvas_h], dtype=np.float64)
    if io.input_size is not None and io.resize == "letterbox":
        normalised = undo_letterbox_xyxy(boxes, *source_size, canvas_w, canvas_h)
    else:  # squashed or fed at its own (possibly reduced) size: the canvas is the whole frame
        normalised = clip_xyxy(normalise_xyxy(boxes, canvas_w, canvas_h))
    if not io.nms_applied or io.nested_share is not None:
        kept = batched_nms(normalised, scores, labels, io.nms_iou, io.nested_share)
        normalised, scores, labels = normalised[kept], scores[kept], labels[kept]
    class_index = labels - io.label_offset
    if np.any((class_index < 0) | (class_index >= len(class_names))):
        raise DetectorOutputError(
            f"labels {sorted(set(labels.tolist()))} outside the {len(class_names)} class names "
            f"(label_offset {io.label_offset})"
        )
    xywh = xyxy_to_xywh(normalised)
    order = np.argsort(-scores, kind="stable")
    return [
        Detection(
            box_xywh_normalised=(
                float(xywh[i, 0]),
                float(xywh[i, 1]),
                float(xywh[i, 2]),
                float(xywh[i, 3]),
            ),
            score=float(scores[i]),
            label=class_names[int(class_index[i])],
        )
        for i in order
        if xywh[i, 2] > 0 and xywh[i, 3] > 0
    ]


def run_detector(
    session,
    entry: ModelEntry,
    class_names: Sequence[str],
    images: ImageBatch,
    min_score: float,
    batch_size: int = 8,
) -> list[list[Detection]]:
    """Detections per image, boxes normalised to each source image, per `entry.io`."""
    if entry.io is None:
        raise ValueError("detector entry has no 'io' contract")
    io = _pad_on_scale(entry)
    normalisation = entry.normalisation.to_normalisation()
    input_name = entry.inputs[0].name
    names = [io.boxes_output, io.scores_output]
    names += [n for n in (io.labels_output, io.num_detections_output) if n is not None]
    batch = _as_image_list(images)
    results: list[list[Detection]] = []
    step = batch_size if io.input_rank == 4 else 1
    for start in range(0, len(batch), step):
        chunk = batch[start : start + step]
        prepared = [_prepare_for_detector(rgb, io) for rgb in chunk]
        tensor = pixels_to_input(np.stack([canvas for canvas, _ in prepared]), normalisation)
        if io.input_rank == 3:
            tensor = tensor[0]
        outputs = dict(zip(names, session.run(names, {input_name: tensor}), strict=True))
        for i, (rgb, (_, canvas_size)) in enumerate(zip(chunk, prepared, strict=True)):
            boxes, scores = outputs[io.boxes_output], outputs[io.scores_output]
            labels = outputs[io.labels_output] if io.labels_output else None
            if io.input_rank == 4:
                boxes, scores = boxes[i], scores[i]
                labels = labels[i] if labels is not None else None
                if io.num_detections_output is not None:
                    count = int(np.asarray(outputs[io.num_detections_output]).reshape(-1)[i])
                    boxes, scores = boxes[:count], scores[:count]
                    labels = labels[:count] if labels is not None else None
            source_size = (rgb.shape[1], rgb.shape[0])
            results.append(
                _decode_detections(
                    boxes, scores, labels, io, class_names, source_size, canvas_size, min_score
                )
            )
    return results
