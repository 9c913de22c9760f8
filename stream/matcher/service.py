"""The matcher's per-crop logic: a `trap.crops` message in, the message to produce out.

No Kafka here: `MatcherService.handle` takes one consumed crop (raw value, headers, source)
and returns exactly one output: an identity record for `trap.identities`, or a dead letter
(contract violation, undecodable JPEG, matching failure). Nothing raises out of it. Every
matched crop is also recorded as a sighting in the individual database.

Everything here is synchronous and CPU-bound, and every database call happens here: the
matcher process runs it on one thread, off the event loop.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any

from snowtrap.models.decode import DecodeError, DecodeLimits, decode_trap_image
from snowtrap.models.reid.matching import DescriptorIndex, MatcherConfig, MatchResult, match_image
from snowtrap.stream.contracts import (
    CONTRACT_VERSION,
    ContractError,
    Crop,
    DeadLetter,
    Headers,
    build_deadletter_message,
    headers_to_dict,
    parse_crop_message,
)
from snowtrap.stream.contracts.identities import build_identity_message, parse_identity_message
from snowtrap.stream.matcher.database import IndividualDB, Sighting

log = logging.getLogger(__name__)

__all__ = ["Handled", "MatcherService", "Output", "Source", "parse_identity_message"]

STAGE_CONTRACT = "contract"
STAGE_DECODE = "decode"
STAGE_MATCH = "match"


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Output:
    """One message to produce: which role's topic, key, value, headers."""

    role: str  # "identities" or "deadletter"
    key: bytes | None
    value: bytes
    headers: Headers


@dataclass(frozen=True)
class Handled:
    output: Output
    result: MatchResult | None
    crop: Crop | None
    reason: str | None = None  # dead letters: why


def identity_record(
    crop: Crop, result: MatchResult, db_version: int, db_chips: int
) -> dict[str, Any]:
    """The `trap.identities` JSON record of one matched crop."""
    return {
        "contract": CONTRACT_VERSION,
        "crop_id": crop.crop_id,
        "image_id": crop.image_id,
        "box_index": crop.box_index,
        "box": list(crop.box),
        "camera_id": crop.camera_id,
        "station_id": crop.station_id,
        "capture_time": crop.capture_time.isoformat() if crop.capture_time else None,
        "detector_model_version": crop.model_version,
        "decision": result.decision.value,
        "individual_id": result.individual_id,
        "score": round(result.top_score, 4),
        "candidates": [candidate.as_dict() for candidate in result.candidates],
        "n_keypoints": result.n_keypoints,
        "query_seconds": round(result.seconds, 4),
        "matcher_version": result.config_version,
        "db_version": db_version,
        "db_chips": db_chips,
        "matched_at": time.time(),
    }


class MatcherService:
    """The individual database, its search index, and the matching of one crop."""

    def __init__(
        self,
        db: IndividualDB,
        config: MatcherConfig,
        limits: DecodeLimits | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.limits = limits or DecodeLimits(max_bytes=16 * 1024 * 1024, max_pixels=40_000_000)
        self.index: DescriptorIndex = db.build_index(config)
        self.db_version = db.version
        self._last_chip = max(self.index.chips, default=0)

    @property
    def n_chips(self) -> int:
        return len(self.index.chips)

    def refresh(self) -> int:
        """Add chips enrolled since the index was built (by `snowtrap individuals enroll`).

        Incremental: new chips go to the index's pending set; returns how many were added.
        """
        version = self.db.version
        if version == self.db_version:
            return 0
        new = self.db.chips_since(self._last_chip)
        self.index.add(new)
        if new:
            self._last_chip = max(chip.chip_id for chip in new)
        self.db_version = version
        if new:
            log.info("index: %d new chip(s), database version %d", len(new), version)
        return len(new)

    def handle(
        self, value: bytes | None, headers: Any, key: bytes | None, source: Source
    ) -> Handled:
        """One crop message -> one output (identity record or dead letter); never raises."""
        raw_headers = headers_to_dict(headers)
        try:
            crop = parse_crop_message(value, raw_headers)
        except ContractError as error:
            return self._dead(value, raw_headers, key, source, error.reason, STAGE_CONTRACT, error)
        try:
            decoded = decode_trap_image(crop.jpeg, self.limits)
        except DecodeError as error:
            return self._dead(
                value, raw_headers, key, source, error.reason.value, STAGE_DECODE, error, crop
            )
        try:
            result = match_image(decoded.rgb, self.index, self.config)
            self.db.record_sighting(
                Sighting(
                    crop_id=crop.crop_id,
                    image_id=crop.image_id,
                    individual_id=result.individual_id,
                    decision=result.decision.value,
                    score=result.top_score,
                    camera_id=crop.camera_id,
                    station_id=crop.station_id,
                    capture_time=crop.capture_time,
                    recorded_at=time.time(),
                )
            )
        except Exception as error:  # a bug or a broken database must not stop the stream
            log.exception("matching crop %s failed", crop.crop_id)
            detail = "".join(traceback.format_exception_only(type(error), error)).strip()
            return self._dead(
                value, raw_headers, key, source, "match_error", STAGE_MATCH, detail, crop
            )
        record = identity_record(crop, result, self.db_version, self.n_chips)
        k, v, h = build_identity_message(record)
        return Handled(Output("identities", k, v, h), result, crop)

    def _dead(
        self,
        value: bytes | None,
        headers: dict[str, bytes],
        key: bytes | None,
        source: Source,
        reason: str,
        stage: str,
        error: object,
        crop: Crop | None = None,
    ) -> Handled:
        letter = DeadLetter(
            reason=reason,
            stage=stage,
            error=str(error),
            source_topic=source.topic,
            source_partition=source.partition,
            source_offset=source.offset,
            key=key,
            value=value,
            headers=headers,
        )
        k, v, h = build_deadletter_message(letter)
        return Handled(Output("deadletter", k, v, h), None, crop, reason)
