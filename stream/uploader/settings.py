"""`UploaderSettings`: everything `snowtrap upload` reads (Kafka fields plus its own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from snowtrap.core.settings import SnowtrapSettings
from snowtrap.stream.ledger import default_ledger_path
from snowtrap.stream.object_store import S3Settings
from snowtrap.stream.settings import KafkaSettings
from snowtrap.stream.topics import MAX_MESSAGE_BYTES

KiB = 1024
MiB = 1024 * KiB


class UploaderSettings(SnowtrapSettings, KafkaSettings):
    """Everything `snowtrap upload` reads: Kafka connection fields plus the uploader's own.

    Env vars `SNOWTRAP_<FIELD>` (e.g. `SNOWTRAP_BOOTSTRAP_SERVERS`, `SNOWTRAP_TOPICS__IMAGES`)
    override the YAML file given with `--config`; command-line flags override both.
    """

    camera_id: str = ""
    station_id: str = ""
    ledger_path: Path = Field(default_factory=default_ledger_path)
    claim_check_store: str | None = None
    """Where images over the limit go: a directory (path or `file://` URI) or `s3://bucket/
    prefix`. None: the image stays where it is and the claim check is its own file:// URI."""
    s3: S3Settings = Field(default_factory=S3Settings)
    """The object store of `s3://` claim checks (endpoint, region, credentials)."""
    strip_gps: bool = True
    """Remove GPS (EXIF GPS IFD, XMP naming GPS) before an image leaves the station, without
    re-encoding; camera id and capture time stay. False sends the bytes exactly as found."""
    ledger_batch_size: int = Field(default=64, ge=1)
    """Images per ledger transaction (pending rows before sending, acknowledged rows after);
    one transaction is one fsync."""
    max_message_bytes: int = Field(default=MAX_MESSAGE_BYTES, gt=64 * KiB)
    """The images topic's `max.message.bytes`; a larger record would be refused."""
    header_room_bytes: int = Field(default=64 * KiB, ge=0)
    """Kept free under `max_message_bytes` for headers, key and batch framing."""
    max_in_flight: int = Field(default=32, ge=1)
    """Sends awaiting acknowledgement at once; bounds memory (images are large)."""
    max_pending_bytes: int = Field(default=64 * MiB, ge=1)
    """Bytes awaiting acknowledgement at once (at least one image is always allowed)."""
    connect_timeout_s: float = Field(default=30.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    delivery_timeout_s: float = Field(default=120.0, gt=0)
    """How long one image may spend in retries before the link counts as lost."""
    retry_backoff_ms: int = Field(default=200, ge=0)
    create_topics: bool = True
    """Create missing snowtrap topics first (needs CreateTopics rights on the cluster)."""
    client_id: str = "snowtrap-uploader"
    metrics_port: int | None = None
    metrics_address: str = "0.0.0.0"
    metrics_textfile: Path | None = None
    """Write the final metrics here in Prometheus text format (node-exporter textfile)."""
    progress: bool = True

    @model_validator(mode="after")
    def _room_under_limit(self) -> UploaderSettings:
        if self.header_room_bytes >= self.max_message_bytes:
            raise ValueError("header_room_bytes must be smaller than max_message_bytes")
        return self

    @property
    def max_inline_bytes(self) -> int:
        """Largest image sent as the message value; anything larger goes as a claim check."""
        return self.max_message_bytes - self.header_room_bytes

    def producer_config(self) -> dict[str, Any]:
        """kafka-python KafkaProducer arguments: idempotent, acks=all, sized for images."""
        request_timeout_ms = int(self.request_timeout_s * 1000)
        linger_ms = 5
        return {
            **self.kafka_python_config(),
            "client_id": self.client_id,
            "enable_idempotence": True,
            "acks": "all",
            "retry_backoff_ms": self.retry_backoff_ms,
            "reconnect_backoff_max_ms": 10_000,
            "request_timeout_ms": request_timeout_ms,
            "delivery_timeout_ms": max(
                int(self.delivery_timeout_s * 1000), request_timeout_ms + linger_ms
            ),
            "linger_ms": linger_ms,
            # A batch must fit the topic limit; a single larger record gets a batch of its own.
            "batch_size": min(1 * MiB, self.max_inline_bytes),
            "max_request_size": max(self.max_message_bytes, MAX_MESSAGE_BYTES),
            "max_in_flight_requests_per_connection": 5,  # the most idempotence allows
            "allow_auto_create_topics": False,
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
            "max_block_ms": int(self.connect_timeout_s * 1000),
        }
