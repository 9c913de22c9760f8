"""What a batch produces: contract detections, crop JPEGs without metadata, detection
records and dead letters that fit the topic's message limit."""

from __future__ import annotations

import dataclasses
import math
import traceback
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from snowtrap.models.boxes import Detection as BoxDetection
from snowtrap.models.boxes import crop_region_pixels
from snowtrap.models.decode import strip_metadata_jpeg as encode_jpeg_without_metadata
from snowtrap.stream.contracts import (
    DeadLetter,
    Detection,
    DetectionRecord,
    Headers,
    build_deadletter_message,
    build_detection_message,
)
from snowtrap.stream.worker.batch_types import (
    BOX_DECIMALS,
    MESSAGE_OVERHEAD_BYTES,
    OutboundMessage,
    OutputKind,
    PipelineConfig,
    WorkItem,
)


def contract_detections(found: Sequence[BoxDetection], config: PipelineConfig) -> list[Detection]:
    """Model detections -> contract detections: known classes, over the threshold, with
    boxes rounded as MegaDetector files round them and still inside the image."""
    detections = []
    for detection in found:
        category = config.categories.get(detection.label)
        if category is None or not detection.score >= config.detection_threshold:
            continue
        bbox = contract_bbox(detection.box_xywh_normalised)
        if bbox is not None:
            detections.append(Detection(category, float(detection.score), bbox))
    detections.sort(key=lambda d: -d.conf)
    return detections


def contract_bbox(
    box: tuple[float, float, float, float],
) -> tuple[float, float, float, float] | None:
    """A normalised (x, y, w, h) rounded to 4 decimals with x + w <= 1 and y + h <= 1.

    Rounding x and w independently can push x + w past 1 (0.12345 + 0.87655), which readers
    of MegaDetector files reject; the size is trimmed instead. None for a box that vanishes.
    """
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None
    x = min(max(round(x, BOX_DECIMALS), 0.0), 1.0)
    y = min(max(round(y, BOX_DECIMALS), 0.0), 1.0)
    w = min(max(round(w, BOX_DECIMALS), 0.0), round(1.0 - x, BOX_DECIMALS))
    h = min(max(round(h, BOX_DECIMALS), 0.0), round(1.0 - y, BOX_DECIMALS))
    if w <= 0.0 or h <= 0.0:
        return None
    return (x, y, w, h)


def crop_jpeg(
    rgb: np.ndarray,
    box: tuple[float, float, float, float],
    margin: float,
    quality: int,
    max_bytes: int,
) -> bytes:
    """The box (grown by `margin` per side) cut from a full-resolution frame as a JPEG with
    no metadata; shrunk until it fits `max_bytes`, so a crop can always be published."""
    height, width = rgb.shape[:2]
    left, top, right, bottom = crop_region_pixels(box, width, height, margin)
    pixels = np.ascontiguousarray(rgb[top:bottom, left:right])
    jpeg = encode_jpeg_without_metadata(pixels, quality)
    while len(jpeg) > max_bytes and min(pixels.shape[:2]) > 16:
        ratio = max(0.25, 0.9 * math.sqrt(max_bytes / len(jpeg)))
        size = (max(1, int(pixels.shape[1] * ratio)), max(1, int(pixels.shape[0] * ratio)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        jpeg = encode_jpeg_without_metadata(pixels, quality)
    if len(jpeg) > max_bytes:
        raise ValueError(f"crop JPEG of {len(jpeg)} bytes exceeds {max_bytes}")
    return jpeg


def record_message(record: DetectionRecord) -> tuple[bytes, bytes, Headers]:
    """The detections-topic message of a record (the contract builds it)."""
    return build_detection_message(record)


def outbound(
    kind: OutputKind, topic: str, built: tuple[bytes | None, bytes, Headers]
) -> OutboundMessage:
    key, value, headers = built
    return OutboundMessage(kind, topic, key, value, headers)


def message_size(key: bytes | None, value: bytes, headers: Headers) -> int:
    return len(key or b"") + len(value) + sum(len(k) + len(v) + 8 for k, v in headers)


def dead_letter(item: WorkItem, reason: str, stage: str, error: str) -> None:
    message = item.result.message
    item.result.letter = DeadLetter(
        reason=reason,
        stage=stage,
        error=error,
        source_topic=message.source.topic,
        source_partition=message.source.partition,
        source_offset=message.source.offset,
        key=message.key,
        value=message.value,
        headers=dict(message.headers),
    )
    item.result.record = None
    item.result.crops = []
    item.detections = []


def fit_dead_letter(letter: DeadLetter, max_message_bytes: int) -> DeadLetter:
    """A dead letter that fits the topic: the original value, or only a note if too large.

    The images topic and the dead-letter topic share the same limit, so only an image right
    at the limit (plus the dead-letter headers) or one with giant headers gets here.
    """
    budget = max_message_bytes - MESSAGE_OVERHEAD_BYTES
    key, value, headers = build_deadletter_message(letter)
    if message_size(key, value, headers) <= budget:
        return letter
    note = f" [original value of {len(letter.value or b'')} bytes dropped: over the limit]"
    slim = dataclasses.replace(letter, value=None, error=letter.error + note)
    key, value, headers = build_deadletter_message(slim)
    if message_size(key, value, headers) <= budget:
        return slim
    small_headers = {k: v for k, v in letter.headers.items() if len(k) + len(v) <= 1024}
    return dataclasses.replace(slim, headers=small_headers, error=slim.error + " [headers cut]")


def describe_error(exc: BaseException) -> str:
    """The error and where it came from, short enough for a header."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
    return f"{type(exc).__name__}: {exc}" + (f" at {where}" if where else "")
