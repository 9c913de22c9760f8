"""`ExportSettings`: everything `snowtrap export` reads, and the error it stops with."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from snowtrap.core.settings import SnowtrapSettings
from snowtrap.stream.settings import KafkaSettings
from snowtrap.stream.topics import MAX_MESSAGE_BYTES

FORMATS = ("megadetector",)


class ExportSettings(SnowtrapSettings, KafkaSettings):
    """What `snowtrap export` reads (SNOWTRAP_* env vars, `--config` YAML, flags)."""

    typical_detection_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Default confidence the review tools show boxes from; also what the CSV counts."""
    conservative_detection_threshold: float = Field(default=0.2, ge=0.0, le=1.0)
    """Lower default for reviewers who would rather see every possible leopard."""
    file_template: str = "{file}"
    """Image path in the output; fields: file (the record's, `<camera>/<uploaded path>`),
    camera_id, station_id, image_id. E.g. `{station_id}/{file}`."""
    connect_timeout_s: float = Field(default=30.0, gt=0)
    idle_timeout_s: float = Field(default=60.0, gt=0)
    """Give up when records are known to remain but none arrive for this long."""
    client_id: str = "snowtrap-export"

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> ExportSettings:
        if self.conservative_detection_threshold > self.typical_detection_threshold:
            raise ValueError("conservative_detection_threshold must not exceed the typical one")
        try:
            self.file_template.format(camera_id="c", station_id="s", file="f", image_id="i")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"file_template {self.file_template!r}: {error}") from error
        return self

    def consumer_config(self) -> dict[str, Any]:
        """A group-less consumer (nothing committed: an export never moves anyone's offsets)."""
        timeout_ms = int(self.connect_timeout_s * 1000)
        return {
            **self.kafka_python_config(),
            "client_id": self.client_id,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            # Only committed transactions: a worker batch cut short (killed, aborted) left
            # records that never happened; reading them would count an image twice.
            "isolation_level": "read_committed",
            # Dead letters carry the original image, up to the topic limit.
            "max_partition_fetch_bytes": MAX_MESSAGE_BYTES + 1024 * 1024,
            "fetch_max_bytes": 2 * MAX_MESSAGE_BYTES + 1024 * 1024,
            "bootstrap_timeout_ms": timeout_ms,
            "request_timeout_ms": max(timeout_ms, 30_000),
        }


class ExportError(RuntimeError):
    """The export could not be done (Kafka, range or an invalid result); nothing written."""
