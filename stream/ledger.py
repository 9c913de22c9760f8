"""The uploader's ledger: which images the broker has acknowledged, kept in local SQLite.

A camera station's link drops, its power fails, an operator presses Ctrl-C. The ledger is
what makes a re-run send exactly what is missing, with two row kinds:

- `pending`: written (one transaction per batch) *before* the images are sent, with the
  run's id; each run also records, per partition, the offset from which its records can
  be (`run_partitions.scan_from`, moved forward as its acknowledgements come in);
- `acknowledged`: written (one transaction per batch of acknowledgements) after Kafka
  acknowledged the record (acks=all); the pending row goes in the same transaction.

A crash between Kafka's acknowledgement and the ledger write leaves pending rows. The next
run (`stream.uploader.recovery`) reads the partitions from those runs' `scan_from` offsets,
finds which pending images Kafka has (by the image-id header), records them as acknowledged
and forgets the rest, which it then sends. So no image is sent twice, and none is lost.

Key: (image id, topic). The image id is the sha256 of the bytes as sent, so a file copied
to another folder or renamed is recognised as already sent.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

SCHEMA_VERSION = 2
KNOWN_VERSIONS = (0, 1, 2)
"""0: a new file; 1: acknowledged rows only (read as is, the new tables are added)."""

_IMAGE_COLUMNS = """\
    path          TEXT    NOT NULL,
    file_name     TEXT    NOT NULL,
    camera_id     TEXT    NOT NULL,
    station_id    TEXT    NOT NULL,
    size_bytes    INTEGER NOT NULL,
    claim_check   TEXT,
    bootstrap     TEXT    NOT NULL,
    PRIMARY KEY (image_id, topic)"""
"""The image's columns, shared by a pending row and the acknowledged row that replaces it."""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS acknowledged (
    image_id      TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    partition     INTEGER NOT NULL,
    offset        INTEGER NOT NULL,
    broker_time   REAL,
    recorded_at   REAL    NOT NULL,
{_IMAGE_COLUMNS}
);
CREATE TABLE IF NOT EXISTS pending (
    image_id      TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    queued_at     REAL    NOT NULL,
{_IMAGE_COLUMNS}
);
CREATE TABLE IF NOT EXISTS run_partitions (
    run_id        TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    partition     INTEGER NOT NULL,
    scan_from     INTEGER NOT NULL,
    PRIMARY KEY (run_id, topic, partition)
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
            if version not in KNOWN_VERSIONS:
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
        """Store one acknowledgement; False when the image was already recorded (first wins)."""
        return self.record_many([ack]) == 1

    def record_many(self, acks: Iterable[Acknowledgement], run_id: str | None = None) -> int:
        """Store acknowledgements in one transaction, clear their pending rows, and move the
        run's scan start past them; returns how many were new (first acknowledgement wins)."""
        new = 0
        with self._transaction() as db:
            for ack in acks:
                cursor = db.execute(
                    "INSERT INTO acknowledged (image_id, topic, partition, offset, broker_time, "
                    "recorded_at, path, file_name, camera_id, station_id, size_bytes, "
                    "claim_check, bootstrap) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
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
                new += cursor.rowcount
                db.execute(
                    "DELETE FROM pending WHERE image_id = ? AND topic = ?",
                    (ack.image_id, ack.topic),
                )
                if run_id is not None:
                    db.execute(
                        "UPDATE run_partitions SET scan_from = max(scan_from, ?) "
                        "WHERE run_id = ? AND topic = ? AND partition = ?",
                        (ack.offset + 1, run_id, ack.topic, ack.partition),
                    )
        return new

    # -- before sending: pending rows and runs -------------------------------------------

    def begin_run(self, topic: str, partition_ends: dict[int, int]) -> str:
        """A new run id, remembering where each partition of `topic` ended before it sent."""
        run_id = uuid.uuid4().hex
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO run_partitions (run_id, topic, partition, scan_from) "
                "VALUES (?, ?, ?, ?)",
                [(run_id, topic, p, end) for p, end in partition_ends.items()],
            )
        return run_id

    def end_run(self, run_id: str) -> None:
        """Forget the run's scan starts once none of its images is pending any more."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM run_partitions WHERE run_id = ? "
                "AND NOT EXISTS (SELECT 1 FROM pending WHERE pending.run_id = ?)",
                (run_id, run_id),
            )

    def mark_pending(self, run_id: str, acks: Iterable[Acknowledgement]) -> None:
        """Note images about to be sent (their offsets unknown yet), in one transaction."""
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO pending (image_id, topic, run_id, queued_at, path, file_name, "
                "camera_id, station_id, size_bytes, claim_check, bootstrap) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (image_id, topic) "
                "DO UPDATE SET run_id = excluded.run_id, queued_at = excluded.queued_at",
                [
                    (a.image_id, a.topic, run_id, time.time(), a.path, a.file_name,
                     a.camera_id, a.station_id, a.size_bytes, a.claim_check, a.bootstrap)
                    for a in acks
                ],
            )  # fmt: skip

    def forget_pending(self, topic: str, image_ids: Iterable[str]) -> None:
        """Images that certainly never reached Kafka (not sent, or refused): no longer pending."""
        with self._transaction() as db:
            db.executemany(
                "DELETE FROM pending WHERE image_id = ? AND topic = ?",
                [(image_id, topic) for image_id in image_ids],
            )

    def pending(self, topic: str) -> dict[str, Acknowledgement]:
        """Images sent but never recorded as acknowledged (a crash or lost link), by id;
        partition and offset are unknown (-1)."""
        rows = self._db.execute(
            "SELECT image_id, topic, path, file_name, camera_id, station_id, size_bytes, "
            "claim_check, bootstrap FROM pending WHERE topic = ?",
            (topic,),
        )
        return {
            row[0]: Acknowledgement(row[0], row[1], -1, -1, None, 0.0, *row[2:]) for row in rows
        }

    def scan_plan(self, topic: str) -> dict[int, int]:
        """Per partition, the lowest offset a pending image of `topic` can have."""
        rows = self._db.execute(
            "SELECT partition, min(scan_from) FROM run_partitions WHERE topic = ? AND run_id IN "
            "(SELECT DISTINCT run_id FROM pending WHERE topic = ?) GROUP BY partition",
            (topic, topic),
        )
        return {int(partition): int(offset) for partition, offset in rows}

    def resolve_pending(
        self, topic: str, found: dict[str, tuple[int, int, float | None]]
    ) -> tuple[int, int]:
        """After reading the partitions from `scan_plan`: pending images Kafka has (`found`:
        image id -> partition, offset, broker time) become acknowledged, the rest are
        forgotten (they are sent again). Returns (recovered, forgotten)."""
        pending = self.pending(topic)
        acks = [
            replace(ack, partition=p, offset=o, broker_time=t, recorded_at=time.time())
            for image_id, ack in pending.items()
            if image_id in found
            for p, o, t in [found[image_id]]
        ]
        self.record_many(acks)
        with self._transaction() as db:
            db.execute(
                "DELETE FROM run_partitions WHERE topic = ? AND run_id IN "
                "(SELECT run_id FROM pending WHERE topic = ?)",
                (topic, topic),
            )
            db.execute("DELETE FROM pending WHERE topic = ?", (topic,))
        return len(acks), len(pending) - len(acks)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One durable transaction (one fsync), so batches cost one write, not one per row."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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
