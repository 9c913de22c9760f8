"""The uploader's ledger: which images the broker has acknowledged, kept in local SQLite.

A camera station's link drops, its power fails, an operator presses Ctrl-C. The ledger is
what makes a re-run send only what is missing: a row is written only after Kafka
acknowledged the record (acks=all), one transaction per acknowledgement, so a crash loses at
most the acknowledgements still in flight, whose images are then sent again. Duplicates
carry the same image id, which consumers drop.

Key: (image id, topic). The image id is the sha256 of the bytes, so a file copied to
another folder or renamed is recognised as already sent.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS acknowledged (
    image_id      TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    partition     INTEGER NOT NULL,
    offset        INTEGER NOT NULL,
    broker_time   REAL,
    recorded_at   REAL    NOT NULL,
    path          TEXT    NOT NULL,
    file_name     TEXT    NOT NULL,
    camera_id     TEXT    NOT NULL,
    station_id    TEXT    NOT NULL,
    size_bytes    INTEGER NOT NULL,
    claim_check   TEXT,
    bootstrap     TEXT    NOT NULL,
    PRIMARY KEY (image_id, topic)
);
"""


def default_ledger_path() -> Path:
    """`$XDG_STATE_HOME/snowtrap/uploads.sqlite3` (default `~/.local/state/...`)."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "snowtrap" / "uploads.sqlite3"


@dataclass(frozen=True)
class Acknowledgement:
    """One image the broker acknowledged, as the ledger stores it."""

    image_id: str
    topic: str
    partition: int
    offset: int
    broker_time: float | None
    """Record timestamp the broker returned (Unix seconds), when it returned one."""
    recorded_at: float
    path: str
    file_name: str
    camera_id: str
    station_id: str
    size_bytes: int
    claim_check: str | None
    bootstrap: str


class LedgerError(RuntimeError):
    """The ledger file cannot be opened or has an unknown schema."""


class UploadLedger:
    """SQLite ledger of acknowledged sends; safe to share between processes (WAL, busy wait)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit, so each record() is its own durable transaction.
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise LedgerError(f"cannot open upload ledger {self.path}: {error}") from error
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: an acknowledged send must survive a power cut at a solar-powered station.
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise LedgerError(
                    f"{self.path}: ledger schema version {version}, this uploader knows "
                    f"{SCHEMA_VERSION}"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as error:
            self._db.close()
            raise LedgerError(f"cannot use upload ledger {self.path}: {error}") from error

    def lookup(self, image_id: str, topic: str) -> Acknowledgement | None:
        """The acknowledgement of this image on this topic, if the broker ever gave one."""
        row = self._db.execute(
            "SELECT image_id, topic, partition, offset, broker_time, recorded_at, path, "
            "file_name, camera_id, station_id, size_bytes, claim_check, bootstrap "
            "FROM acknowledged WHERE image_id = ? AND topic = ?",
            (image_id, topic),
        ).fetchone()
        return Acknowledgement(*row) if row else None

    def record(self, ack: Acknowledgement) -> bool:
        """Store an acknowledgement; False when the image was already recorded (first wins)."""
        cursor = self._db.execute(
            "INSERT INTO acknowledged (image_id, topic, partition, offset, broker_time, "
            "recorded_at, path, file_name, camera_id, station_id, size_bytes, claim_check, "
            "bootstrap) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (image_id, topic) DO NOTHING",
            (
                ack.image_id,
                ack.topic,
                ack.partition,
                ack.offset,
                ack.broker_time,
                ack.recorded_at or time.time(),
                ack.path,
                ack.file_name,
                ack.camera_id,
                ack.station_id,
                ack.size_bytes,
                ack.claim_check,
                ack.bootstrap,
            ),
        )
        return cursor.rowcount == 1

    def count(self, topic: str | None = None) -> int:
        """Acknowledged images, on one topic or on all."""
        if topic is None:
            return int(self._db.execute("SELECT count(*) FROM acknowledged").fetchone()[0])
        return int(
            self._db.execute(
                "SELECT count(*) FROM acknowledged WHERE topic = ?", (topic,)
            ).fetchone()[0]
        )

    def image_ids(self, topic: str) -> set[str]:
        """Every image id acknowledged on `topic` (for tests and audits)."""
        rows = self._db.execute("SELECT image_id FROM acknowledged WHERE topic = ?", (topic,))
        return {row[0] for row in rows}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> UploadLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
