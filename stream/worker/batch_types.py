"""The data of the worker's batch logic: messages in and out, its configuration, per-image
results and scratch state, stage and reason names."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from snowtrap.models.boxes import Detection as BoxDetection
from snowtrap.models.decode import DecodedImage, DecodeLimits
from snowtrap.stream.contracts import (
    Crop,
    DeadLetter,
    Detection,
    DetectionRecord,
    Headers,
    TrapImage,
)
from snowtrap.stream.topics import TopicNames

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
CLASSIFIER_DECODE_COVER = 2
"""The first decode covers twice the classifier's input on each axis. Covering it just (1/4
DCT scale for 1280 x 960 -> 224 x 224) moved the demo bundle's scores by a mean 0.016 (max
0.30) against a full decode and put 2 of the 20 leopard frames it passes under the gate (300
bench frames); twice (1/2 scale, 640 x 480) moved them 0.006 (max 0.11) and changed no gate
decision, for 1.4 ms more decoding a frame."""
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


class OperatingPointSettings(Protocol):
    """The settings fields that set a pipeline's operating point: the worker's and the
    detection API's settings both have them (`pipeline.pipeline_config` reads them)."""

    gate_threshold: float | None
    detection_threshold: float | None
    crop_threshold: float | None
    detect_all: bool
    analysis_max_side: int | None
    decode_for_classifier: bool
    decode_threads: int | None
    crop_margin: float
    crop_jpeg_quality: int
    max_image_bytes: int
    max_image_pixels: int


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
    """Longest side of the decode the detector sees (the bundle's detector input)."""
    classifier_size: tuple[int, int] | None = None
    """(width, height) the classifier squashes a frame to. When set, every frame is decoded
    only as large as covering `CLASSIFIER_DECODE_COVER` times that needs (a 1280 x 960 JPEG
    at 1/2 for 224 x 224), and the frames the detector gets are decoded again at
    `analysis_max_side` unless the first decode is already that large. None, or `detect_all`
    (every frame goes to the detector): one decode at `analysis_max_side` for both models."""
    decode_threads: int | None = None
    """Threads decoding and cropping the images of a batch in parallel (Pillow releases the
    GIL); None: the CPUs this process may use. The models run after decoding, not beside it."""
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


@dataclass
class WorkItem:
    """One image on its way through the stages (mutable scratch state)."""

    result: ImageResult
    data: bytes = b""
    decoded: DecodedImage | None = None
    """The first decode: what the classifier needs (or the analysis size)."""
    for_detector: np.ndarray | None = None
    """The pixels the detector gets, at the analysis size (set for detector candidates)."""
    score: float = 0.0
    detector_ran: bool = False
    detections: list[Detection] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.result.letter is None
