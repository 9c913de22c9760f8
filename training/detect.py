"""Detect stage: fine-tune Faster R-CNN (EfficientNet-Lite0 + FPN) on the LIME boxes.

The detector learns from the boxes LIME drew, never from hand labels; ground truth, where the
data has it, is only used to score it. Frames without a leopard go in as background-only
images.

Augmentation is box-aware and pure numpy (`augment_frame`): horizontal flip, a random
scale/crop window, colour jitter, and conversion to infrared-like greyscale (night frames).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from snowtrap.training.evaluate import average_precision, box_match_stats

__all__ = [
    "AugmentSettings",
    "DetectorTrainSettings",
    "TrainingFrame",
    "augment_frame",
    "detector_average_precision",
    "load_training_frames",
    "predict_frames",
    "relabel_with_detector",
    "resize_for_detector",
    "self_train_detector",
    "self_training_boxes",
    "train_detector",
]


@dataclass(frozen=True)
class AugmentSettings:
    flip_probability: float = 0.5
    crop_probability: float = 0.5
    min_crop_side: float = 0.6  # the crop window keeps at least this share of each side
    min_box_visible: float = 0.5  # boxes with less of their area left are dropped
    colour_jitter: float = 0.25  # brightness/contrast/saturation ranges +- this
    greyscale_probability: float = 0.2  # infrared-like night frame


@dataclass(frozen=True)
class DetectorTrainSettings:
    epochs: int = 6
    batch_size: int = 4
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iterations: int = 30
    negatives_per_positive: float = 0.5  # background-only frames mixed in per LIME-boxed frame
    # Self-training: relabel the leopard frames with the detector's own confident boxes and
    # train on; the detector averages LIME's box noise, so its boxes are better labels.
    self_training_rounds: int = 0
    self_training_score: float = 0.5
    self_training_epochs: int = 2
    seed: int = 0
    threads: int | None = None


@dataclass
class TrainingFrame:
    """A frame held in memory at detector scale: (H, W, 3) uint8 and pixel xyxy boxes."""

    image_id: str
    rgb: np.ndarray
    boxes: np.ndarray  # (K, 4) pixel xyxy on `rgb`; (0, 4) for background frames
    scale: float  # rgb pixels per source pixel


# --- pure augmentation --------------------------------------------------------------------


def _clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    return clipped


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)


def augment_frame(
    rgb: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, settings: AugmentSettings
) -> tuple[np.ndarray, np.ndarray]:
    """One random box-aware augmentation of (H, W, 3) uint8 + pixel xyxy boxes."""
    image = np.asarray(rgb)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    height, width = image.shape[:2]
    if rng.random() < settings.crop_probability:
        crop_w = round(width * rng.uniform(settings.min_crop_side, 1.0))
        crop_h = round(height * rng.uniform(settings.min_crop_side, 1.0))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        moved = b - np.array([left, top, left, top], dtype=np.float64)
        clipped = _clip_boxes(moved, crop_w, crop_h)
        visible = _area(clipped) / np.maximum(_area(b), 1e-9)
        keep = visible >= settings.min_box_visible
        # A crop that cuts an animal in half teaches the detector half-animals: skip it.
        if np.all(keep | (visible <= 0.0)):
            image = image[top : top + crop_h, left : left + crop_w]
            b = clipped[keep]
            height, width = crop_h, crop_w
    if rng.random() < settings.flip_probability:
        image = image[:, ::-1]
        b = np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)
    out = image.astype(np.float32)
    if settings.colour_jitter > 0:
        j = settings.colour_jitter
        out = out * rng.uniform(1 - j, 1 + j)  # brightness
        mean = out.mean()
        out = (out - mean) * rng.uniform(1 - j, 1 + j) + mean  # contrast
        grey = out.mean(axis=2, keepdims=True)
        out = (out - grey) * rng.uniform(1 - j, 1 + j) + grey  # saturation
    if rng.random() < settings.greyscale_probability:
        out = np.repeat(out @ np.array([0.299, 0.587, 0.114], dtype=np.float32), 3).reshape(
            out.shape
        )
    return np.ascontiguousarray(out.clip(0, 255).astype(np.uint8)), b.reshape(-1, 4)


def resize_for_detector(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink so the longer side is at most `max_side`; returns the image and its scale."""
    from snowtrap.models.inference import resize_rgb

    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale >= 1.0:
        return rgb, 1.0
    return resize_rgb(rgb, round(height * scale), round(width * scale)), scale


def load_training_frames(
    items: Sequence[tuple[str, Path, np.ndarray]], max_side: int
) -> list[TrainingFrame]:
    """(image id, path, normalised xyxy boxes) -> frames in memory at detector scale."""
    from snowtrap.training.image_files import read_rgb

    frames = []
    for image_id, path, boxes in items:
        rgb, scale = resize_for_detector(read_rgb(path), max_side)
        height, width = rgb.shape[:2]
        pixel_boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array(
            [width, height, width, height]
        )
        frames.append(TrainingFrame(image_id, rgb, pixel_boxes, scale))
    return frames


# --- training -----------------------------------------------------------------------------


def _to_tensors(rgb: np.ndarray, boxes: np.ndarray) -> tuple[Any, dict[str, Any]]:
    import torch

    image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()
    target = {
        "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.ones(len(boxes), dtype=torch.int64),
    }
    return image, target


def _epoch_order(
    positives: int, negatives: Sequence[int], ratio: float, rng: np.random.Generator
) -> list[int]:
    """Indices for one epoch: every positive, plus a fresh random draw of negatives."""
    count = min(len(negatives), round(positives * ratio))
    chosen = rng.choice(np.asarray(negatives), size=count, replace=False) if count else []
    order = np.r_[np.arange(positives), np.asarray(chosen, dtype=int)]
    rng.shuffle(order)
    return order.tolist()


def train_detector(
    model: Any,
    positives: Sequence[TrainingFrame],
    negatives: Sequence[TrainingFrame],
    settings: DetectorTrainSettings,
    augment: AugmentSettings,
    epochs: int | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """SGD with warm-up and cosine decay; returns per-epoch mean losses and seconds."""
    import torch
    from tqdm import tqdm

    from snowtrap.models.inference import available_cpus

    torch.set_num_threads(settings.threads or available_cpus())
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    frames = list(positives) + list(negatives)
    negative_ids = list(range(len(positives), len(frames)))
    epochs = settings.epochs if epochs is None else epochs
    per_epoch = len(positives) + min(
        len(negative_ids), round(len(positives) * settings.negatives_per_positive)
    )
    total_iterations = max(1, epochs * math.ceil(per_epoch / settings.batch_size))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(
        parameters,
        lr=settings.learning_rate,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )

    def learning_rate(step: int) -> float:
        if step < settings.warmup_iterations:
            return (step + 1) / settings.warmup_iterations
        progress_share = (step - settings.warmup_iterations) / max(
            1, total_iterations - settings.warmup_iterations
        )
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress_share, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, learning_rate)
    model.train()
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        started = time.perf_counter()
        order = _epoch_order(len(positives), negative_ids, settings.negatives_per_positive, rng)
        rng.shuffle(order)
        losses: list[float] = []
        batches = range(0, len(order), settings.batch_size)
        bar = tqdm(batches, desc=f"detector epoch {epoch + 1}/{epochs}", disable=not progress)
        for start in bar:
            images, targets = [], []
            for index in order[start : start + settings.batch_size]:
                frame = frames[index]
                rgb, boxes = augment_frame(frame.rgb, frame.boxes, rng, augment)
                image, target = _to_tensors(rgb, boxes)
                images.append(image)
                targets.append(target)
            loss_parts = model(images, targets)
            loss = sum(loss_parts.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"detector loss is {float(loss)} at epoch {epoch + 1}")
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 10.0)
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        history.append(
            {
                "epoch": epoch + 1,
                "mean_loss": float(np.mean(losses)) if losses else float("nan"),
                "images": len(order),
                "seconds": time.perf_counter() - started,
            }
        )
    model.eval()
    return history


def predict_frames(
    model: Any, frames: Sequence[np.ndarray], progress: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """torch inference: per frame (normalised xyxy boxes, scores)."""
    import torch
    from tqdm import tqdm

    model.eval()
    results = []
    for rgb in tqdm(frames, desc="detector eval", disable=not progress):
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()
        with torch.no_grad():
            out = model([image])[0]
        height, width = rgb.shape[:2]
        boxes = out["boxes"].numpy().astype(np.float64) / np.array([width, height, width, height])
        results.append((boxes, out["scores"].numpy().astype(np.float64)))
    return results


def self_training_boxes(
    boxes: np.ndarray, scores: np.ndarray, fallback: np.ndarray, min_score: float
) -> np.ndarray:
    """The detector's boxes scoring at least `min_score`; `fallback` (LIME's) when none does.

    Pixel xyxy in, pixel xyxy out. A frame with no confident box and no fallback gets (0, 4):
    the caller leaves it out rather than train it as background, since the classifier did
    say leopard."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    kept_boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[scores >= min_score]
    if kept_boxes.shape[0]:
        return kept_boxes
    return np.asarray(fallback, dtype=np.float64).reshape(-1, 4)


def relabel_with_detector(
    model: Any, frames: Sequence[TrainingFrame], min_score: float
) -> tuple[list[TrainingFrame], int]:
    """One self-training step: each frame with the detector's confident boxes (or its own
    boxes when none is confident); frames left with no box are dropped.

    Returns the frames and how many of them the detector relabelled."""
    predictions = predict_frames(model, [f.rgb for f in frames])
    relabelled, by_detector = [], 0
    for frame, (boxes, scores) in zip(frames, predictions, strict=True):
        height, width = frame.rgb.shape[:2]
        pixel = boxes * np.array([width, height, width, height])
        chosen = self_training_boxes(pixel, scores, frame.boxes, min_score)
        by_detector += bool(np.any(scores >= min_score))
        if chosen.shape[0]:
            relabelled.append(TrainingFrame(frame.image_id, frame.rgb, chosen, frame.scale))
    return relabelled, by_detector


def self_train_detector(
    model: Any,
    positives: Sequence[TrainingFrame],
    unexplained: Sequence[TrainingFrame],
    negatives: Sequence[TrainingFrame],
    settings: DetectorTrainSettings,
    augment: AugmentSettings,
    progress: bool = True,
) -> tuple[list[dict[str, float]], list[dict[str, int]]]:
    """`settings.self_training_rounds` rounds of relabel-then-train, after `train_detector`.

    `positives` carry LIME's boxes; `unexplained` are leopard frames without boxes, which
    join a round once the detector finds one in them. Returns the epochs' history and one
    record per round (frames, boxes, how many the detector relabelled)."""
    lime_ids = {f.image_id for f in positives}
    history: list[dict[str, float]] = []
    rounds: list[dict[str, int]] = []
    for round_index in range(settings.self_training_rounds):
        relabelled, by_detector = relabel_with_detector(
            model, [*positives, *unexplained], settings.self_training_score
        )
        rounds.append(
            {
                "round": round_index + 1,
                "frames": len(relabelled),
                "relabelled_by_detector": by_detector,
                "unexplained_frames": len(unexplained),
                "boxes": int(sum(f.boxes.shape[0] for f in relabelled)),
                "from_unexplained": sum(f.image_id not in lime_ids for f in relabelled),
            }
        )
        history += train_detector(
            model,
            relabelled,
            negatives,
            settings,
            augment,
            epochs=settings.self_training_epochs,
            progress=progress,
        )
    return history, rounds


def detector_average_precision(
    predictions: Sequence[tuple[np.ndarray, np.ndarray]],
    truth: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """mAP@iou (one class: AP) plus IoU stats of the best-scoring boxes against the truth."""
    boxes = [p[0] for p in predictions]
    scores = [p[1] for p in predictions]
    confident = [b[s >= 0.5] for b, s in zip(boxes, scores, strict=True)]
    positives = [i for i, t in enumerate(truth) if np.asarray(t).size]
    stats = box_match_stats([confident[i] for i in positives], [truth[i] for i in positives])
    return {
        "frames": len(truth),
        "frames_with_boxes": len(positives),
        "map_at_iou": iou_threshold,
        "map": average_precision(boxes, scores, truth, iou_threshold),
        "iou_at_score_0_5": stats.to_dict(),
    }
