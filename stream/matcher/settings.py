"""Everything `snowtrap matcher` reads, in one typed object (same conventions as the worker).

`SNOWTRAP_<FIELD>` env vars (nested with `__`, e.g. `SNOWTRAP_TOPICS__CROPS`) override a YAML
file given with `--config`, which overrides the defaults. `SNOWTRAP_DB_PATH` is also what
`snowtrap individuals` uses, so the CLI and the matcher share one database by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from snowtrap.core.settings import SnowtrapSettings
from snowtrap.models.reid.matching import DEFAULT_CONFIG, MatcherConfig
from snowtrap.stream.settings import KafkaSettings
from snowtrap.stream.topics import MAX_MESSAGE_BYTES

MiB = 1024 * 1024


class MatcherSettings(SnowtrapSettings, KafkaSettings):
    """The matcher's settings: Kafka connection (inherited), database, operating point."""

    db_path: Path = Path("individuals.sqlite")
    """The SQLite individual database (created if missing)."""
    group_id: str = "snowtrap-matcher"
    client_id: str = "snowtrap-matcher"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    create_topics: bool = True

    known_threshold: float = Field(default=DEFAULT_CONFIG.known_threshold, gt=0)
    """Verified score at or above which the top candidate is reported as known."""
    min_keypoints: int = Field(default=DEFAULT_CONFIG.min_keypoints, ge=1)
    """Fewer keypoints than this: not_enough_texture."""
    shortlist: int = Field(default=DEFAULT_CONFIG.shortlist, ge=1, le=50)
    """Candidates spatially verified per query."""
    top_k: int = Field(default=DEFAULT_CONFIG.top_k, ge=1, le=50)
    """Candidates listed in each identity record."""
    refresh_interval_s: float = Field(default=5.0, gt=0)
    """How often the database is checked for chips enrolled by another process."""

    batch_size: int = Field(default=8, ge=1, le=256)
    batch_timeout_ms: int = Field(default=200, ge=1, le=60_000)
    max_message_bytes: int = Field(default=MAX_MESSAGE_BYTES, gt=64 * 1024)
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9401, ge=1, le=65535)
    """/metrics, /healthz and /readyz."""
    lag_interval_s: float = Field(default=10.0, gt=0)
    liveness_stall_s: float = Field(default=30.0, gt=0)
    produce_timeout_s: float = Field(default=60.0, gt=0)
    session_timeout_s: float = Field(default=60.0, ge=6.0, le=300.0)
    commit_interval_s: float = Field(default=1.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    data_dir: Path | None = None
    """Faust's working directory; None: a temporary directory (no Faust state is kept)."""

    @model_validator(mode="after")
    def _topics_distinct(self) -> MatcherSettings:
        names = {self.topics.crops, self.topics.identities, self.topics.deadletter}
        if len(names) != 3:
            raise ValueError("the crops, identities and deadletter topics must differ")
        return self

    def matcher_config(self) -> MatcherConfig:
        """The matching operating point: feature settings fixed, decision settings from here."""
        from dataclasses import replace

        return replace(
            DEFAULT_CONFIG,
            known_threshold=self.known_threshold,
            min_keypoints=self.min_keypoints,
            shortlist=self.shortlist,
            top_k=self.top_k,
        )
