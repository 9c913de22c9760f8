"""Images from HTTP requests through the worker's batch logic, and its outcomes as API answers.

The API does not re-implement decoding, classifying, gating, detecting or cropping: each
request image becomes the same `trap.images` message an uploader would send (built by the
contract), a batch of them goes through `stream.worker.pipeline.process_batch`, and each
outcome comes back as what the API answers: a MegaDetector image entry, or the dead-letter
reason and stage the worker would have written, with its HTTP status.

Everything here is synchronous and CPU-bound; the batcher runs it on its one model thread.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snowtrap.models.bundle import ModelBundle
from snowtrap.stream.contracts import H, TrapImage, build_image_message, image_id_of
from snowtrap.stream.megadetector import fit_boxes_inside_image
from snowtrap.stream.serve.reasons import status_for
from snowtrap.stream.serve.settings import ServeSettings
from snowtrap.stream.topics import TopicNames
from snowtrap.stream.worker.batch_types import ImageResult
from snowtrap.stream.worker.claim_check import ClaimCheckError
from snowtrap.stream.worker.pipeline import (
    InboundMessage,
    PipelineConfig,
    SourceRef,
    process_batch,
)
from snowtrap.stream.worker.pipeline import pipeline_config as worker_pipeline_config

HTTP_CAMERA = "http"
"""The camera id of request images: the contract needs one; answers name the file only."""
SOURCE_TOPIC = "http"
NO_CROPS = 2.0
"""A crop threshold no score reaches: batches where nobody asked for crops skip cutting them."""
SERVE_MESSAGE_BYTES = 1 << 30
"""No Kafka topic limits an HTTP answer: crops keep their quality, records their size."""


@dataclass(frozen=True)
class ImageRequest:
    """One image of a request: its bytes, the name it came under, whether crops are wanted."""

    data: bytes
    file_name: str
    crops: bool = False


@dataclass(frozen=True)
class ImageAnswer:
    """The outcome of one image: an entry (status 200) or a failure with reason and stage."""

    status: int
    entry: dict[str, Any]
    reason: str | None = None
    stage: str | None = None
    error: str | None = None
    is_leopard: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200


def pipeline_config(settings: ServeSettings, bundle: ModelBundle) -> PipelineConfig:
    """The worker's operating point for this bundle, with the API's overrides and limits."""
    return worker_pipeline_config(
        settings, bundle.manifest, topics=TopicNames(), max_message_bytes=SERVE_MESSAGE_BYTES
    )


class Detector:
    """A loaded bundle and its operating point: request images in, answers out."""

    def __init__(self, bundle: ModelBundle, config: PipelineConfig) -> None:
        self.bundle = bundle
        self.config = config
        self._without_crops = dataclasses.replace(config, crop_threshold=NO_CROPS)

    def run(self, images: Sequence[ImageRequest]) -> list[ImageAnswer]:
        """One model batch for the images; one answer each, in order. Never raises for an
        image: what the worker would dead-letter comes back as a failure answer."""
        config = self.config if any(i.crops for i in images) else self._without_crops
        messages = [_inbound(image, index) for index, image in enumerate(images)]
        batch = process_batch(messages, self.bundle, config, _no_claim_checks)
        return [
            _answer(result, image.crops)
            for result, image in zip(batch.results, images, strict=True)
        ]


def _inbound(image: ImageRequest, index: int) -> InboundMessage:
    """The `trap.images` message an uploader would send with these bytes."""
    key, value, headers = build_image_message(
        TrapImage(
            image_id=image_id_of(image.data),
            camera_id=HTTP_CAMERA,
            station_id=HTTP_CAMERA,
            file_name=image.file_name,
            content_type="application/octet-stream",
            capture_time=None,
            sent_at=time.time(),
            payload=image.data,
        )
    )
    return InboundMessage(key, value, dict(headers), SourceRef(SOURCE_TOPIC, 0, index))


def _no_claim_checks(uri: str) -> bytes:
    raise ClaimCheckError("claim_check_forbidden", "the API takes image bytes, not claim checks")


def _answer(result: ImageResult, with_crops: bool) -> ImageAnswer:
    file_name = result.message.headers.get(H.FILE_NAME, b"").decode("utf-8", "replace")
    if result.letter is not None or result.record is None:
        letter = result.letter
        reason = letter.reason if letter else "internal_error"
        stage = letter.stage if letter else "produce"
        error = letter.error if letter else "no record and no dead letter"
        entry = {"file": file_name, "failure": f"{stage}: {reason}", "detections": None}
        return ImageAnswer(status_for(reason), entry, reason, stage, error)
    record = result.record
    entry = fit_boxes_inside_image({**record.megadetector_entry(), "file": file_name})
    if with_crops:
        by_box = {crop.box_index: crop.jpeg for crop in result.crops}
        for index, detection in enumerate(entry["detections"]):
            if index in by_box:
                detection["crop_jpeg_base64"] = base64.b64encode(by_box[index]).decode("ascii")
    entry.update(
        image_id=record.image_id,
        leopard_score=round(record.leopard_score, 6),
        gate_threshold=record.gate_threshold,
        detector_ran=record.detector_ran,
        width=record.width,
        height=record.height,
        is_night=record.is_night,
        model_version=record.model_version,
        timings_ms=record.timings_ms,
    )
    return ImageAnswer(200, entry, is_leopard=result.is_leopard)
