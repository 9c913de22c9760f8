"""The worker's batch logic: consumed messages in, the messages to produce out. No Kafka here.

One call of `process_batch` takes a micro-batch of `trap.images` messages through

    contract -> fetch (inline bytes or claim check) -> decode (as large as the classifier
             needs) -> classify (one model batch) -> gate -> decode at the detector's size
             (past the gate, when larger) -> detect -> crop (full-resolution decode, margin,
             JPEG with no metadata; frames with boxes only) -> messages

and returns, for every input message, exactly one outcome: a detection record (plus its
crops) or a dead letter. Nothing raises out of it: bad headers, undecodable bytes, unreadable
claim checks, model errors and plain bugs all end as dead letters with a reason and a stage.
A model call that fails for the whole batch is retried image by image, so one poisonous image
cannot take its batch-mates down with it; what still fails is dead-lettered.

Everything here is synchronous and CPU-bound: the worker runs it in a thread, off the event
loop, so Kafka heartbeats keep flowing while the models run. Decoding and cropping fan out
over `decode_threads` threads; the models run after them, on ONNX Runtime's own pool.

The data it works on (messages, config, results, stage names) is in `batch_types`; what it
builds for the topics (contract detections, crop JPEGs, records, dead letters) in `outputs`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from snowtrap.models.boxes import Detection as BoxDetection
from snowtrap.models.decode import DecodeError, DecodeLimits, decode_trap_image
from snowtrap.models.inference import available_cpus
from snowtrap.models.manifest import BundleManifest
from snowtrap.stream.contracts import (
    DETECTION_CATEGORIES,
    ContractError,
    Crop,
    DetectionRecord,
    build_crop_message,
    build_deadletter_message,
    image_id_of,
    parse_image_message,
)
from snowtrap.stream.topics import TopicNames
from snowtrap.stream.worker.batch_types import (
    CLASSIFIER_DECODE_COVER,
    DEFAULT_ANY_SIZE_DETECTOR_SIDE,
    MESSAGE_OVERHEAD_BYTES,
    REASON_INTERNAL_ERROR,
    REASON_MODEL_ERROR,
    STAGE_CLASSIFY,
    STAGE_CONTRACT,
    STAGE_CROP,
    STAGE_DECODE,
    STAGE_DETECT,
    STAGE_PRODUCE,
    BatchResult,
    ClaimCheckReader,
    ImageResult,
    InboundMessage,
    InferenceModels,
    OperatingPointSettings,
    PipelineConfig,
    SourceRef,
    WorkItem,
)
from snowtrap.stream.worker.claim_check import ClaimCheckError
from snowtrap.stream.worker.outputs import (
    contract_detections,
    crop_jpeg,
    dead_letter,
    describe_error,
    fit_dead_letter,
    message_size,
    outbound,
    record_message,
)

__all__ = [  # the batch logic's entry point and the types a caller needs with it
    "BatchResult",
    "InboundMessage",
    "PipelineConfig",
    "SourceRef",
    "analysis_side_for",
    "categories_for",
    "classifier_size_for",
    "process_batch",
]


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


def classifier_size_for(manifest: BundleManifest) -> tuple[int, int]:
    """(width, height) the classifier squashes every frame to; the first decode covers twice
    that (`batch_types.CLASSIFIER_DECODE_COVER`)."""
    classifier = manifest.models["classifier"]
    assert classifier.input_size is not None  # the manifest validator guarantees it
    height, width = classifier.input_size
    return width, height


def categories_for(manifest: BundleManifest) -> dict[str, str]:
    """Class name -> category id: class i is category i + 1 when the contract knows it."""
    return {
        name: str(index + 1)
        for index, name in enumerate(manifest.class_names)
        if str(index + 1) in DETECTION_CATEGORIES
    }


def pipeline_config(
    settings: OperatingPointSettings,
    manifest: BundleManifest,
    *,
    topics: TopicNames,
    max_message_bytes: int,
    claim_check_roots: tuple[Path, ...] = (),
) -> PipelineConfig:
    """The pipeline's operating point: settings where given, else the bundle's manifest."""
    thresholds = manifest.thresholds

    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    return PipelineConfig(
        topics=topics,
        model_name=manifest.name,
        model_version=manifest.version,
        categories=categories_for(manifest),
        gate_threshold=pick(settings.gate_threshold, thresholds.classifier_gate),
        detection_threshold=pick(settings.detection_threshold, thresholds.detection_confidence),
        crop_threshold=pick(settings.crop_threshold, thresholds.crop),
        detect_all=settings.detect_all,
        analysis_max_side=settings.analysis_max_side or analysis_side_for(manifest),
        classifier_size=classifier_size_for(manifest) if settings.decode_for_classifier else None,
        decode_threads=settings.decode_threads,
        crop_margin=settings.crop_margin,
        crop_jpeg_quality=settings.crop_jpeg_quality,
        limits=DecodeLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        ),
        max_message_bytes=max_message_bytes,
        claim_check_roots=claim_check_roots,
    )


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
    work = [WorkItem(ImageResult(message)) for message in messages]
    seconds: dict[str, float] = {}

    pool = _decode_pool(config.decode_threads or available_cpus())
    started = clock()
    pool.each(lambda item: _parse_fetch_decode(item, config, read_claim_check, clock), work)
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
        pool.each(lambda item: _decode_for_detector(item, config, clock), candidates)
        seconds[STAGE_DECODE] += clock() - started
        candidates = [item for item in candidates if item.alive]
    if candidates:
        started = clock()
        _detect(candidates, models, config)
        seconds[STAGE_DETECT] = clock() - started

    to_crop = [
        item
        for item in work
        if item.alive and any(d.conf >= config.crop_threshold for d in item.detections)
    ]
    if to_crop:
        started = clock()
        pool.each(lambda item: _crop(item, config, clock), to_crop)
        seconds[STAGE_CROP] = clock() - started

    for item in work:
        _finish(item, models, config, wall_clock())
    return BatchResult([item.result for item in work], seconds)


class _DecodePool:
    """Runs per-image work (decode, crop) of a batch on a few threads: Pillow's codecs release
    the GIL, so 2 cores decode 2 images at once. Created once per thread count."""

    def __init__(self, threads: int) -> None:
        self.executor = None
        if threads > 1:
            self.executor = ThreadPoolExecutor(threads, thread_name_prefix="snowtrap-decode")

    def each(self, work: Callable[[WorkItem], None], items: Sequence[WorkItem]) -> None:
        if self.executor is None or len(items) < 2:
            for item in items:
                work(item)
            return
        for _ in self.executor.map(work, items):  # re-raises what a call raised, in order
            pass


@functools.cache
def _decode_pool(threads: int) -> _DecodePool:
    return _DecodePool(max(1, threads))


def _parse_fetch_decode(
    item: WorkItem, config: PipelineConfig, read_claim_check: ClaimCheckReader, clock: Callable
) -> None:
    message = item.result.message
    try:
        image = parse_image_message(message.key, message.value, message.headers)
    except ContractError as exc:
        dead_letter(item, exc.reason, STAGE_CONTRACT, str(exc))
        return
    except Exception as exc:  # a contract bug must not stop the batch
        dead_letter(item, REASON_INTERNAL_ERROR, STAGE_CONTRACT, describe_error(exc))
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
        if config.classifier_size is not None and not config.detect_all:
            width, height = config.classifier_size
            cover = (width * CLASSIFIER_DECODE_COVER, height * CLASSIFIER_DECODE_COVER)
            item.decoded = decode_trap_image(item.data, config.limits, min_size=cover)
        else:
            item.decoded = decode_trap_image(item.data, config.limits, config.analysis_max_side)
    except (ClaimCheckError, DecodeError) as exc:
        reason = exc.reason if isinstance(exc, ClaimCheckError) else exc.reason.value
        dead_letter(item, reason, STAGE_DECODE, str(exc))
    except Exception as exc:  # Pillow has more ways to fail than it documents
        dead_letter(item, "decode_failed", STAGE_DECODE, describe_error(exc))
    finally:
        item.timings_ms[STAGE_DECODE] = (clock() - started) * 1000.0


def _decode_for_detector(item: WorkItem, config: PipelineConfig, clock: Callable) -> None:
    """The detector's pixels: the first decode when it is large enough (or the whole frame),
    else the frame decoded again at the analysis size (a few frames: those past the gate)."""
    decoded = item.decoded
    assert decoded is not None
    height, width = decoded.rgb.shape[:2]
    if max(height, width) >= config.analysis_max_side or (width, height) == (
        decoded.width,
        decoded.height,
    ):
        item.for_detector = decoded.rgb
        return
    started = clock()
    try:
        item.for_detector = decode_trap_image(
            item.data, config.limits, config.analysis_max_side
        ).rgb
    except DecodeError as exc:
        dead_letter(item, exc.reason.value, STAGE_DECODE, str(exc))
    except Exception as exc:
        dead_letter(item, "decode_failed", STAGE_DECODE, describe_error(exc))
    finally:
        item.timings_ms[STAGE_DECODE] += (clock() - started) * 1000.0


def _classify(items: list[WorkItem], models: InferenceModels) -> None:
    def run(batch: list[WorkItem]) -> list[float]:
        rgbs = [item.decoded.rgb for item in batch if item.decoded is not None]
        scores = np.asarray(models.classify(rgbs), dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(batch):
            raise ModelOutputError(f"classifier gave {scores.shape[0]} scores for {len(batch)}")
        if not np.all(np.isfinite(scores)) or np.any((scores < 0) | (scores > 1)):
            raise ModelOutputError(f"classifier scores outside [0, 1]: {scores.tolist()[:8]}")
        return [float(s) for s in scores]

    for item, score in _model_stage(items, run, STAGE_CLASSIFY):
        item.score = score


def _detect(items: list[WorkItem], models: InferenceModels, config: PipelineConfig) -> None:
    def run(batch: list[WorkItem]) -> list[list[BoxDetection]]:
        rgbs = [item.for_detector for item in batch if item.for_detector is not None]
        found = models.detect(rgbs, min_score=config.detection_threshold)
        if len(found) != len(batch):
            raise ModelOutputError(f"detector gave {len(found)} results for {len(batch)}")
        return found

    for item, found in _model_stage(items, run, STAGE_DETECT):
        item.detector_ran = True
        item.detections = contract_detections(found, config)


def _model_stage(
    items: list[WorkItem], run: Callable[[list[WorkItem]], list[Any]], stage: str
) -> list[tuple[WorkItem, Any]]:
    """`run` over the items (with the one-by-one fallback), timed per image; failures become
    dead letters of this stage, and the items that succeeded come back with their output."""
    started = time.perf_counter()
    outcomes = _run_with_fallback(items, run)
    per_image_ms = (time.perf_counter() - started) * 1000.0 / len(items)
    succeeded = []
    for item, outcome in zip(items, outcomes, strict=True):
        item.timings_ms[stage] = per_image_ms
        if isinstance(outcome, BaseException):
            dead_letter(item, REASON_MODEL_ERROR, stage, describe_error(outcome))
        else:
            succeeded.append((item, outcome))
    return succeeded


class ModelOutputError(RuntimeError):
    """A model ran but its output does not fit what it promised (count, range)."""


def _run_with_fallback(
    items: list[WorkItem], run: Callable[[list[WorkItem]], list[Any]]
) -> list[Any]:
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


def _crop(item: WorkItem, config: PipelineConfig, clock: Callable) -> None:
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
        dead_letter(item, exc.reason.value, STAGE_CROP, str(exc))
    except Exception as exc:
        dead_letter(item, "crop_failed", STAGE_CROP, describe_error(exc))
    finally:
        item.timings_ms[STAGE_CROP] = (clock() - started) * 1000.0


def _finish(item: WorkItem, models: InferenceModels, config: PipelineConfig, now: float) -> None:
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
            outputs = [outbound("detection", config.topics.detections, record_message(record))]
            outputs += [
                outbound("crop", config.topics.crops, build_crop_message(crop))
                for crop in result.crops
            ]
            for output in outputs:
                size = message_size(output.key, output.value, output.headers)
                if size > config.max_message_bytes - MESSAGE_OVERHEAD_BYTES:
                    raise ContractError(
                        f"{output.kind}_too_large", f"{size} bytes over the topic's limit"
                    )
        except ContractError as exc:
            result.crops = []
            dead_letter(item, exc.reason, STAGE_PRODUCE, str(exc))
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
        outbound(
            "deadletter",
            config.topics.deadletter,
            build_deadletter_message(fit_dead_letter(result.letter, config.max_message_bytes)),
        )
    ]
