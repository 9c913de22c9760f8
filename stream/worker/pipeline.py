"""The worker's batch logic: consumed messages in, the messages to produce out. No Kafka here.

One call of `process_batch` takes a micro-batch of `trap.images` messages through

    contract -> fetch (inline bytes or claim check) -> decode (reduced size)
             -> classify (one model batch) -> gate -> detect (one model batch)
             -> crop (full-resolution decode, margin, JPEG with no metadata) -> messages

and returns, for every input message, exactly one outcome: a detection record (plus its
crops) or a dead letter. Nothing raises out of it: bad headers, undecodable bytes, unreadable
claim checks, model errors and plain bugs all end as dead letters with a reason and a stage.
A model call that fails for the whole batch is retried image by image, so one poisonous image
cannot take its batch-mates down with it; what still fails is dead-lettered.

Everything here is synchronous and CPU-bound: the worker runs it in a thread, off the event
loop, so Kafka heartbeats keep flowing while the models run.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from snowtrap.models.boxes import Detection as BoxDetection
from snowtrap.models.boxes import crop_region_pixels
from snowtrap.models.decode import DecodedImage, DecodeError, DecodeLimits, decode_trap_image
from snowtrap.models.decode import strip_metadata_jpeg as encode_jpeg_without_metadata
from snowtrap.models.manifest import BundleManifest
from snowtrap.stream.contracts import (
    DETECTION_CATEGORIES,
    ContractError,
    Crop,
    DeadLetter,
    Detection,
    DetectionRecord,
    Headers,
    TrapImage,
    build_crop_message,
    build_deadletter_message,
    build_detection_message,
    image_id_of,
    parse_image_message,
)
from snowtrap.stream.topics import TopicNames
from snowtrap.stream.worker.claim_check import ClaimCheckError

STAGE_CONTRACT = "contract"
STAGE_DECODE = "decode"
STAGE_CLASSIFY = "classify"
STAGE_DETECT = "detect"
STAGE_CROP = "crop"
STAGE_PRODUCE = "produce"

REASON_MODEL_ERROR = "model_error"
REASON_INTERNAL_ERROR = "internal_error"

MESSAGE_OVERHEAD_BYTES = 16 * 1024
"""Kept free under the topic's `max.message.bytes` for record-batch framing."""
BOX_DECIMALS = 4
"""MegaDetector files carry boxes with 4 decimals; records are rounded the same way."""
DEFAULT_ANY_SIZE_DETECTOR_SIDE = 1280
"""Analysis size for a detector that takes any size and names no `max_side` of its own."""

OutcomeName = Literal["leopard", "no_leopard", "deadletter"]
OutputKind = Literal["detection", "crop", "deadletter"]
ClaimCheckReader = Callable[[str], bytes]
"""Reads the bytes a claim-check URI points at; raises `ClaimCheckError`."""


class InferenceModels(Protocol):
    """What the pipeline needs from a model bundle (`models.bundle.ModelBundle` is one)."""

    @property
    def has_detector(self) -> bool: ...

    def classify(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def detect(
        self, images: Sequence[np.ndarray], min_score: float | None = None
    ) -> list[list[BoxDetection]]: ...


@dataclass(frozen=True)
class SourceRef:
    """Where a consumed message came from; dead letters and records carry it."""

    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True)
class InboundMessage:
    """One consumed `trap.images` message, exactly as it arrived."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    source: SourceRef


@dataclass(frozen=True)
class OutboundMessage:
    """One message to produce: (topic, key, value, headers) built by `stream.contracts`."""

    kind: OutputKind
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


@dataclass(frozen=True)
class PipelineConfig:
    """The operating point of one worker: thresholds, sizes, limits, model identity."""

    topics: TopicNames
    model_name: str
    model_version: str
    categories: Mapping[str, str]
    """Detector class name -> MegaDetector category id; other classes are not reported."""
    gate_threshold: float
    detection_threshold: float
    crop_threshold: float
    detect_all: bool = False
    analysis_max_side: int = 640
    crop_margin: float = 0.15
    crop_jpeg_quality: int = 90
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    max_message_bytes: int = 16 * 1024 * 1024
    claim_check_roots: tuple[Path, ...] = ()


@dataclass
class ImageResult:
    """The single outcome of one input message, and the messages that carry it."""

    message: InboundMessage
    image: TrapImage | None = None
    record: DetectionRecord | None = None
    crops: list[Crop] = field(default_factory=list)
    letter: DeadLetter | None = None
    is_leopard: bool = False
    outputs: list[OutboundMessage] = field(default_factory=list)

    @property
    def outcome(self) -> OutcomeName:
        if self.letter is not None:
            return "deadletter"
        return "leopard" if self.is_leopard else "no_leopard"

    @property
    def camera_id(self) -> str | None:
        return self.image.camera_id if self.image is not None else None


@dataclass
class BatchResult:
    """Outcomes in input order, and the seconds each stage took for the whole batch."""

    results: list[ImageResult]
    stage_seconds: dict[str, float]


# --- configuration from settings + manifest -------------------------------------------------


def analysis_side_for(manifest: BundleManifest) -> int:
    """The longest image side the bundle's models can use: a larger decode is wasted work."""
    classifier = manifest.models["classifier"]
    assert classifier.input_size is not None  # the manifest validator guarantees it
    side = max(classifier.input_size)
    detector = manifest.models.get("detector")
    if detector is not None and detector.io is not None:
        io = detector.io
        if io.input_size is not None:
            side = max(side, *io.input_size)
        else:
            side = max(side, io.max_side or DEFAULT_ANY_SIZE_DETECTOR_SIDE)
    return side


def categories_for(manifest: BundleManifest) -> dict[str, str]:
    """Class name -> category id: class i is category i + 1 when the contract knows it."""
    return {
        name: str(index + 1)
        for index, name in enumerate(manifest.class_names)
        if str(index + 1) in DETECTION_CATEGORIES
    }


# --- the batch ------------------------------------------------------------------------------


@dataclass
class _Work:
    """One image on its way through the stages (mutable scratch state)."""

    result: ImageResult
    data: bytes = b""
    decoded: DecodedImage | None = None
    score: float = 0.0
    detector_ran: bool = False
    detections: list[Detection] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.result.letter is None


def process_batch(
    messages: Sequence[InboundMessage],
    models: InferenceModels,
    config: PipelineConfig,
    read_claim_check: ClaimCheckReader,
    *,
    clock: Callable[[], float] = time.perf_counter,
    wall_clock: Callable[[], float] = time.time,
) -> BatchResult:
    """Every message of a micro-batch to exactly one outcome and its output messages."""
    work = [_Work(ImageResult(message)) for message in messages]
    seconds: dict[str, float] = {}

    started = clock()
    for item in work:
        _parse_fetch_decode(item, config, read_claim_check, clock)
    seconds[STAGE_DECODE] = clock() - started

    alive = [item for item in work if item.alive]
    if alive:
        started = clock()
        _classify(alive, models)
        seconds[STAGE_CLASSIFY] = clock() - started

    candidates = [
        item
        for item in work
        if item.alive
        and models.has_detector
        and (config.detect_all or item.score >= config.gate_threshold)
    ]
    if candidates:
        started = clock()
        _detect(candidates, models, config)
        seconds[STAGE_DETECT] = clock() - started

    started = clock()
    cropped_any = False
    for item in work:
        if item.alive and any(d.conf >= config.crop_threshold for d in item.detections):
            cropped_any = True
            _crop(item, config, clock)
    if cropped_any:
        seconds[STAGE_CROP] = clock() - started

    for item in work:
        _finish(item, models, config, wall_clock())
    return BatchResult([item.result for item in work], seconds)


def _parse_fetch_decode(
    item: _Work, config: PipelineConfig, read_claim_check: ClaimCheckReader, clock: Callable
) -> None:
    message = item.result.message
    try:
        image = parse_image_message(message.key, message.value, message.headers)
    except ContractError as exc:
        _dead_letter(item, exc.reason, STAGE_CONTRACT, str(exc))
        return
    except Exception as exc:  # a contract bug must not stop the batch
        _dead_letter(item, REASON_INTERNAL_ERROR, STAGE_CONTRACT, _describe(exc))
        return
    item.result.image = image
    started = clock()
    try:
        if image.payload is not None:
            item.data = image.payload
        else:
            assert image.claim_check is not None
            item.data = read_claim_check(image.claim_check)
            if image_id_of(item.data) != image.image_id:
                raise ClaimCheckError(
                    "image_id_mismatch", "sha256 of the claim-check bytes differs from image-id"
                )
        item.decoded = decode_trap_image(item.data, config.limits, config.analysis_max_side)
    except (ClaimCheckError, DecodeError) as exc:
        reason = exc.reason if isinstance(exc, ClaimCheckError) else exc.reason.value
        _dead_letter(item, reason, STAGE_DECODE, str(exc))
    except Exception as exc:  # Pillow has more ways to fail than it documents
        _dead_letter(item, "decode_failed", STAGE_DECODE, _describe(exc))
    finally:
        item.timings_ms[STAGE_DECODE] = (clock() - started) * 1000.0


def _classify(items: list[_Work], models: InferenceModels) -> None:
    def run(batch: list[_Work]) -> list[float]:
        rgbs = [item.decoded.rgb for item in batch if item.decoded is not None]
        scores = np.asarray(models.classify(rgbs), dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(batch):
            raise ModelOutputError(f"classifier gave {scores.shape[0]} scores for {len(batch)}")
        if not np.all(np.isfinite(scores)) or np.any((scores < 0) | (scores > 1)):
            raise ModelOutputError(f"classifier scores outside [0, 1]: {scores.tolist()[:8]}")
        return [float(s) for s in scores]

    started = time.perf_counter()
    outcomes = _run_with_fallback(items, run)
    per_image_ms = (time.perf_counter() - started) * 1000.0 / len(items)
    for item, outcome in zip(items, outcomes, strict=True):
        item.timings_ms[STAGE_CLASSIFY] = per_image_ms
        if isinstance(outcome, BaseException):
            _dead_letter(item, REASON_MODEL_ERROR, STAGE_CLASSIFY, _describe(outcome))
        else:
            item.score = outcome


def _detect(items: list[_Work], models: InferenceModels, config: PipelineConfig) -> None:
    def run(batch: list[_Work]) -> list[list[BoxDetection]]:
        rgbs = [item.decoded.rgb for item in batch if item.decoded is not None]
        found = models.detect(rgbs, min_score=config.detection_threshold)
        if len(found) != len(batch):
            raise ModelOutputError(f"detector gave {len(found)} results for {len(batch)}")
        return found

    started = time.perf_counter()
    outcomes = _run_with_fallback(items, run)
    per_image_ms = (time.perf_counter() - started) * 1000.0 / len(items)
    for item, outcome in zip(items, outcomes, strict=True):
        item.timings_ms[STAGE_DETECT] = per_image_ms
        if isinstance(outcome, BaseException):
            _dead_letter(item, REASON_MODEL_ERROR, STAGE_DETECT, _describe(outcome))
            continue
        item.detector_ran = True
        item.detections = contract_detections(outcome, config)


class ModelOutputError(RuntimeError):
    """A model ran but its output does not fit what it promised (count, range)."""


def _run_with_fallback(items: list[_Work], run: Callable[[list[_Work]], list[Any]]) -> list[Any]:
    """`run` on the whole batch; if that fails, on each image alone, keeping each error."""
    try:
        return list(run(items))
    except Exception as batch_error:
        if len(items) == 1:
            return [batch_error]
    outcomes: list[Any] = []
    for item in items:
        try:
            outcomes.extend(run([item]))
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


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


def _crop(item: _Work, config: PipelineConfig, clock: Callable) -> None:
    image, decoded = item.result.image, item.decoded
    assert image is not None and decoded is not None
    started = clock()
    try:
        full = decoded
        if decoded.rgb.shape[1] < decoded.width or decoded.rgb.shape[0] < decoded.height:
            full = decode_trap_image(item.data, config.limits)
        item.result.crops = [
            Crop(
                image_id=image.image_id,
                box_index=index,
                box=detection.bbox,
                score=detection.conf,
                camera_id=image.camera_id,
                station_id=image.station_id,
                capture_time=image.capture_time or decoded.capture_time,
                model_version=config.model_version,
                jpeg=crop_jpeg(
                    full.rgb,
                    detection.bbox,
                    config.crop_margin,
                    config.crop_jpeg_quality,
                    config.max_message_bytes - MESSAGE_OVERHEAD_BYTES,
                ),
            )
            for index, detection in enumerate(item.detections)
            if detection.conf >= config.crop_threshold
        ]
    except DecodeError as exc:
        _dead_letter(item, exc.reason.value, STAGE_CROP, str(exc))
    except Exception as exc:
        _dead_letter(item, "crop_failed", STAGE_CROP, _describe(exc))
    finally:
        item.timings_ms[STAGE_CROP] = (clock() - started) * 1000.0


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


def _finish(item: _Work, models: InferenceModels, config: PipelineConfig, now: float) -> None:
    """Build the detection record (or keep the dead letter) and the messages to produce."""
    result = item.result
    if item.alive:
        image, decoded = result.image, item.decoded
        assert image is not None and decoded is not None
        record = DetectionRecord(
            image_id=image.image_id,
            file=f"{image.camera_id}/{image.file_name}",
            detections=item.detections,
            leopard_score=item.score,
            gate_threshold=config.gate_threshold,
            detector_ran=item.detector_ran,
            model_name=config.model_name,
            model_version=config.model_version,
            camera_id=image.camera_id,
            station_id=image.station_id,
            capture_time=image.capture_time or decoded.capture_time,
            width=decoded.width,
            height=decoded.height,
            is_night=decoded.looks_like_night_ir,
            sent_at=image.sent_at,
            processed_at=now,
            timings_ms={k: round(v, 3) for k, v in item.timings_ms.items()},
            source=result.message.source.as_dict(),
        )
        try:
            outputs = [_outbound("detection", config.topics.detections, record_message(record))]
            outputs += [
                _outbound("crop", config.topics.crops, build_crop_message(crop))
                for crop in result.crops
            ]
            for output in outputs:
                size = _message_size(output.key, output.value, output.headers)
                if size > config.max_message_bytes - MESSAGE_OVERHEAD_BYTES:
                    raise ContractError(
                        f"{output.kind}_too_large", f"{size} bytes over the topic's limit"
                    )
        except ContractError as exc:
            result.crops = []
            _dead_letter(item, exc.reason, STAGE_PRODUCE, str(exc))
        else:
            result.record = record
            result.is_leopard = (
                bool(record.detections)
                if models.has_detector
                else item.score >= config.gate_threshold
            )
            result.outputs = outputs
            return
    assert result.letter is not None
    result.outputs = [
        _outbound(
            "deadletter",
            config.topics.deadletter,
            build_deadletter_message(_fit_dead_letter(result.letter, config.max_message_bytes)),
        )
    ]


def record_message(record: DetectionRecord) -> tuple[bytes, bytes, Headers]:
    """The detections-topic message of a record (the contract builds it)."""
    return build_detection_message(record)


def _outbound(
    kind: OutputKind, topic: str, built: tuple[bytes | None, bytes, Headers]
) -> OutboundMessage:
    key, value, headers = built
    return OutboundMessage(kind, topic, key, value, headers)


def _message_size(key: bytes | None, value: bytes, headers: Headers) -> int:
    return len(key or b"") + len(value) + sum(len(k) + len(v) + 8 for k, v in headers)


def _dead_letter(item: _Work, reason: str, stage: str, error: str) -> None:
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


def _fit_dead_letter(letter: DeadLetter, max_message_bytes: int) -> DeadLetter:
    """A dead letter that fits the topic: the original value, or only a note if too large.

    The images topic and the dead-letter topic share the same limit, so only an image right
    at the limit (plus the dead-letter headers) or one with giant headers gets here.
    """
    budget = max_message_bytes - MESSAGE_OVERHEAD_BYTES
    key, value, headers = build_deadletter_message(letter)
    if _message_size(key, value, headers) <= budget:
        return letter
    note = f" [original value of {len(letter.value or b'')} bytes dropped: over the limit]"
    slim = dataclasses.replace(letter, value=None, error=letter.error + note)
    key, value, headers = build_deadletter_message(slim)
    if _message_size(key, value, headers) <= budget:
        return slim
    small_headers = {k: v for k, v in letter.headers.items() if len(k) + len(v) <= 1024}
    return dataclasses.replace(slim, headers=small_headers, error=slim.error + " [headers cut]")


def _describe(exc: BaseException) -> str:
    """The error and where it came from, short enough for a header."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
    return f"{type(exc).__name__}: {exc}" + (f" at {where}" if where else "")
