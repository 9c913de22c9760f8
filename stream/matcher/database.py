"""The individual database: SQLite holding individuals, enrolled chips and sightings.

Tables:

- `individuals`: one row per named leopard;
- `chips`: enrolled chips with their keypoints (float32 N x 4) and RootSIFT descriptors
  (quantised to uint8, N x 128) as blobs, so the index is rebuilt at start without
  re-extracting anything;
- `sightings`: what the matcher saw: crop/image id, camera, capture time, decision, score,
  the individual (NULL for a new candidate); one row per crop id (a re-delivered crop
  replaces its row instead of counting twice);
- `meta`: `db_version`, bumped on every enrolment, reported in every identity record.

One connection per `IndividualDB`; use it from one thread at a time (the matcher process
runs every database call on its single matching thread).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from snowtrap.models.reid.features import ChipFeatures, MatcherConfig, dequantise, quantise
from snowtrap.models.reid.matching import DescriptorIndex, EnrolledChip

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS individuals (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chips (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    individual_id TEXT NOT NULL REFERENCES individuals(id),
    source TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    n_keypoints INTEGER NOT NULL,
    keypoints BLOB NOT NULL,
    descriptors BLOB NOT NULL,
    config_version TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS chips_individual ON chips(individual_id);
CREATE TABLE IF NOT EXISTS sightings (
    crop_id TEXT PRIMARY KEY,
    image_id TEXT NOT NULL,
    individual_id TEXT,
    decision TEXT NOT NULL,
    score REAL NOT NULL,
    camera_id TEXT NOT NULL,
    station_id TEXT NOT NULL DEFAULT '',
    capture_time TEXT,
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sightings_individual ON sightings(individual_id, capture_time);
"""


@dataclass(frozen=True)
class Sighting:
    crop_id: str
    image_id: str
    individual_id: str | None
    decision: str
    score: float
    camera_id: str
    station_id: str = ""
    capture_time: datetime | None = None
    recorded_at: float = 0.0


@dataclass(frozen=True)
class IndividualSummary:
    individual_id: str
    chips: int
    sightings: int
    cameras: int
    first_seen: str | None
    last_seen: str | None


class IndividualDB:
    """The SQLite database of individuals; `path` may be ':memory:'."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('db_version', '0')")
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> IndividualDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- versions and contents ----------------------------------------------------------------

    @property
    def version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='db_version'").fetchone()
        return int(row[0])

    def individual_ids(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT id FROM individuals ORDER BY id")]

    def chip_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM chips").fetchone()[0])

    # -- enrolment ----------------------------------------------------------------------------

    def enroll(
        self,
        individual_id: str,
        features: Sequence[ChipFeatures],
        sources: Sequence[str],
        config: MatcherConfig,
    ) -> list[EnrolledChip]:
        """Store chips of one individual (created if new); returns them with their ids."""
        if not individual_id.strip():
            raise ValueError("an individual needs a non-empty id")
        now = time.time()
        enrolled: list[EnrolledChip] = []
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO individuals (id, created_at) VALUES (?, ?)",
                (individual_id, now),
            )
            for chip, source in zip(features, sources, strict=True):
                cursor = self.conn.execute(
                    "INSERT INTO chips (individual_id, source, width, height, n_keypoints, "
                    "keypoints, descriptors, config_version, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        individual_id,
                        source,
                        chip.width,
                        chip.height,
                        len(chip),
                        chip.keypoints.astype(np.float32).tobytes(),
                        quantise(chip.descriptors).tobytes(),
                        config.version,
                        now,
                    ),
                )
                stored = ChipFeatures(
                    chip.keypoints.astype(np.float32),
                    dequantise(quantise(chip.descriptors)),
                    chip.width,
                    chip.height,
                )
                enrolled.append(EnrolledChip(int(cursor.lastrowid or 0), individual_id, stored))
            self.conn.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='db_version'"
            )
        return enrolled

    def iter_chips(self) -> Iterator[EnrolledChip]:
        rows = self.conn.execute(
            "SELECT id, individual_id, width, height, n_keypoints, keypoints, descriptors "
            "FROM chips ORDER BY id"
        )
        for chip_id, individual, width, height, n, kp, desc in rows:
            keypoints = np.frombuffer(kp, np.float32).reshape(n, 4).copy()
            descriptors = dequantise(np.frombuffer(desc, np.uint8).reshape(n, 128))
            features = ChipFeatures(keypoints, descriptors, int(width), int(height))
            yield EnrolledChip(int(chip_id), individual, features)

    def build_index(self, config: MatcherConfig) -> DescriptorIndex:
        """The search index over every enrolled chip (built once, at start)."""
        index = DescriptorIndex(config)
        index.add(self.iter_chips(), rebuild=True)
        return index

    def chips_since(self, chip_id: int) -> list[EnrolledChip]:
        """Chips enrolled after `chip_id` (another process enrolled them): for refreshes."""
        return [chip for chip in self.iter_chips() if chip.chip_id > chip_id]

    # -- sightings ----------------------------------------------------------------------------

    def record_sighting(self, sighting: Sighting) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO sightings (crop_id, image_id, individual_id, decision, "
                "score, camera_id, station_id, capture_time, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sighting.crop_id,
                    sighting.image_id,
                    sighting.individual_id,
                    sighting.decision,
                    float(sighting.score),
                    sighting.camera_id,
                    sighting.station_id,
                    sighting.capture_time.isoformat() if sighting.capture_time else None,
                    sighting.recorded_at or time.time(),
                ),
            )

    def sightings(self, individual_id: str | None = None) -> list[Sighting]:
        query = (
            "SELECT crop_id, image_id, individual_id, decision, score, camera_id, station_id, "
            "capture_time, recorded_at FROM sightings"
        )
        params: tuple[str, ...] = ()
        if individual_id is not None:
            query += " WHERE individual_id = ?"
            params = (individual_id,)
        query += " ORDER BY COALESCE(capture_time, ''), recorded_at"
        out = []
        for row in self.conn.execute(query, params):
            out.append(
                Sighting(
                    crop_id=row[0],
                    image_id=row[1],
                    individual_id=row[2],
                    decision=row[3],
                    score=row[4],
                    camera_id=row[5],
                    station_id=row[6],
                    capture_time=datetime.fromisoformat(row[7]) if row[7] else None,
                    recorded_at=row[8],
                )
            )
        return out

    def summaries(self) -> list[IndividualSummary]:
        rows = self.conn.execute(
            "SELECT i.id, "
            "(SELECT COUNT(*) FROM chips c WHERE c.individual_id = i.id), "
            "COUNT(s.crop_id), COUNT(DISTINCT s.camera_id), MIN(s.capture_time), "
            "MAX(s.capture_time) "
            "FROM individuals i LEFT JOIN sightings s ON s.individual_id = i.id "
            "GROUP BY i.id ORDER BY i.id"
        )
        return [IndividualSummary(*row) for row in rows]
