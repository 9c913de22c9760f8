"""Everything `snowtrap matcher` reads, in one typed object (same conventions as the worker;
the settings every stream process shares come from `StreamProcessSettings`).

`SNOWTRAP_<FIELD>` env vars (nested with `__`, e.g. `SNOWTRAP_TOPICS__CROPS`) override a YAML
file given with `--config`, which overrides the defaults. `SNOWTRAP_DB_PATH` is also what
`snowtrap individuals` uses, so the CLI and the matcher share one database by default.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from snowtrap.models.reid.matching import DEFAULT_CONFIG, MatcherConfig
from snowtrap.stream.runtime.settings import StreamProcessSettings


class MatcherSettings(StreamProcessSettings):
    """The matcher's settings: the shared stream settings (inherited), database, operating point."""

    db_path: Path = Path("individuals.sqlite")
    """The SQLite individual database (created if missing)."""
    group_id: str = "snowtrap-matcher"
    client_id: str = "snowtrap-matcher"

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
    db_lock_wait_s: float = Field(default=0.0, ge=0)
    """One matcher per database: how long a second one waits, as a standby, for the first
    to stop before giving up (exit 3); 0 refuses at once."""

    batch_size: int = Field(default=8, ge=1, le=256)
    """Crops per batch at most."""
    metrics_port: int = Field(default=9401, ge=1, le=65535)
    """/metrics, /healthz and /readyz."""

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
