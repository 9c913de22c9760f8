"""`LiveSettings`: everything `snowtrap live` reads, in one typed object.

Same conventions as every stream process: env vars override a YAML file given with `--config`,
which overrides the defaults. The Kafka connection is the shared `KafkaSettings`
(`SNOWTRAP_BOOTSTRAP_SERVERS`, SASL/TLS, `SNOWTRAP_TOPICS__CROPS`...), so the page reads the same
cluster and topics as the worker beside it; the page's own fields sit under `live`
(`SNOWTRAP_LIVE__PORT`, `SNOWTRAP_LIVE__ROOT_PATH`...; in YAML a `live:` mapping), so they never
mix with another process's values in a shared environment.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from snowtrap.core.settings import SnowtrapSettings
from snowtrap.stream.http_server import url_path_prefix
from snowtrap.stream.settings import KafkaSettings
from snowtrap.stream.topics import MAX_MESSAGE_BYTES


class LivePage(BaseModel):
    """The page's HTTP side, what it keeps in memory, and how it reads the topics."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 in a container)."""
    port: int = Field(default=8470, ge=0, le=65535)
    """HTTP port; 0 lets the OS pick a free one (the address is printed)."""
    root_path: str = ""
    """Public path prefix the page is served under behind a proxy, e.g. `/live`: every link,
    the event stream and the crop URLs carry it. The app answers with and without it, so a
    proxy may pass the prefix through or strip it."""

    sightings: int = Field(default=24, ge=1, le=500)
    """Newest leopard crops kept (with their JPEGs, in memory) and shown."""
    window_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    """Per-camera and dead-letter counts cover this many hours back from now; on start the
    page reads the topics from this far back, so a restart shows the same counts."""
    push_interval_s: float = Field(default=0.5, gt=0, le=60)
    """How often each open page is sent the state when it has changed."""
    keepalive_s: float = Field(default=15.0, gt=0, le=300)
    """Each open page gets the state at least this often (proxies keep the stream open, and
    counts age out of the window)."""

    client_id: str = "snowtrap-live"
    connect_timeout_s: float = Field(default=30.0, gt=0)
    retry_interval_s: float = Field(default=3.0, gt=0)
    """Wait between tries while Kafka or the topics are missing."""

    @field_validator("root_path")
    @classmethod
    def _normalise_root_path(cls, value: str) -> str:
        return url_path_prefix(value)


class LiveSettings(SnowtrapSettings, KafkaSettings):
    """The Kafka connection (inherited, `SNOWTRAP_*`) and the page (`live`, `SNOWTRAP_LIVE__*`)."""

    live: LivePage = Field(default_factory=LivePage)

    def consumer_config(self) -> dict[str, Any]:
        """A group-less consumer: the page commits nothing and moves no one's offsets."""
        timeout_ms = int(self.live.connect_timeout_s * 1000)
        return {
            **self.kafka_python_config(),
            "client_id": self.live.client_id,
            "group_id": None,
            "enable_auto_commit": False,
            # Dead letters carry the original image, up to the topic limit.
            "max_partition_fetch_bytes": MAX_MESSAGE_BYTES + 1024 * 1024,
            "fetch_max_bytes": 2 * MAX_MESSAGE_BYTES + 1024 * 1024,
            "bootstrap_timeout_ms": timeout_ms,
            "request_timeout_ms": max(timeout_ms, 30_000),
        }
