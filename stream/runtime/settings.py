"""`StreamProcessSettings`: what every Faust stream process reads, whatever it computes.

Values come from `SNOWTRAP_<FIELD>` env vars (nested with `__`, e.g. `SNOWTRAP_TOPICS__CROPS`),
then an optional YAML file given with `--config`, then the defaults. Each process subclasses
this with its own fields and its own defaults (group id, client id, batch size, metrics port).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from snowtrap.core.settings import SnowtrapSettings
from snowtrap.stream.settings import KafkaSettings
from snowtrap.stream.topics import MAX_MESSAGE_BYTES


class StreamProcessSettings(SnowtrapSettings, KafkaSettings):
    """Kafka connection (inherited), consumer group, batching, probes, timeouts, logging."""

    group_id: str = "snowtrap"
    """Consumer group; every replica of one process shares it (the Faust app id)."""
    client_id: str = "snowtrap"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a new group starts: every message already in the topic must be processed."""
    create_topics: bool = True
    """Create missing snowtrap topics at start (needs CreateTopics rights on the cluster)."""

    batch_size: int = Field(default=16, ge=1, le=512)
    """Messages per batch at most."""
    batch_timeout_ms: int = Field(default=200, ge=1, le=60_000)
    """How long a partial batch waits for more messages before it is processed."""
    max_message_bytes: int = Field(default=MAX_MESSAGE_BYTES, gt=64 * 1024)
    """The output topics' `max.message.bytes`; the producer's request limit follows it."""

    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9400, ge=1, le=65535)
    """/metrics, /healthz and /readyz."""
    lag_interval_s: float = Field(default=10.0, gt=0)
    """How often consumer lag per partition is measured."""
    liveness_stall_s: float = Field(default=30.0, gt=0)
    """/healthz fails when the event loop has not ticked for this long."""
    produce_timeout_s: float = Field(default=60.0, gt=0)
    """How long an output or a transaction commit may wait for the broker before the batch
    fails (it is then aborted, the process stops, and a restart redoes it): a broker restart
    shorter than this is ridden out."""
    session_timeout_s: float = Field(default=10.0, ge=6.0, le=300.0)
    """How long the group waits for a silent member (killed, OOM, partitioned) before its
    partitions go to the others: most of the time a killed process's partitions stall.
    Heartbeats come from the consumer's own thread every `session_timeout_s / 10` (at most
    3 s), so a batch the models take long over does not evict a live member. 6 s is the
    broker's default minimum."""
    transaction_timeout_s: float = Field(default=60.0, ge=1.0, le=900.0)
    """How long the broker keeps a transaction open before aborting it. A killed process's
    open transaction is aborted as soon as another takes its partitions (same transactional
    id); this bounds it when none does. The broker caps it at `transaction.max.timeout.ms`."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    data_dir: Path | None = None
    """Faust's working directory; None: a temporary directory (no Faust state is kept)."""
