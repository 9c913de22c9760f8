"""End to end on the real broker: crops on `trap.crops` -> `snowtrap matcher` -> identities.

The matcher runs as a deployment runs it (the console script, `SNOWTRAP_*` env vars, its
HTTP port). Three individuals are enrolled before it starts and a fourth while it runs (the
index picks it up incrementally); crops of all four, of an unknown leopard, and a truncated
JPEG are published with the crop contract's builder. Every crop must come out as exactly one
identity record (right individual for the enrolled ones) or one dead letter, and the
sightings must be in the database.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from helpers.reid import leopard_crop
from helpers.topics import consume_all, produce
from helpers.wire import assert_follows_schema
from helpers.worker_process import MatcherProcess, metric_total

from snowtrap.models.decode import strip_metadata_jpeg
from snowtrap.models.reid.matching import DEFAULT_CONFIG, extract_features
from snowtrap.stream.contracts import (
    Crop,
    build_crop_message,
    image_id_of,
    parse_deadletter_message,
)
from snowtrap.stream.contracts.identities import parse_identity_message
from snowtrap.stream.matcher.database import IndividualDB
from snowtrap.stream.topics import TopicNames

ENROLLED = ["SL-101", "SL-102", "SL-103"]
LATE = "SL-104"
UNKNOWN = "UN-555"


def _crop(individual: str, seed: int, camera: str, when: datetime, night: bool = False) -> Crop:
    jpeg = strip_metadata_jpeg(leopard_crop(individual, seed, night=night, camera=camera))
    return Crop(
        image_id=image_id_of(jpeg + individual.encode()),
        box_index=0,
        box=(0.2, 0.5, 0.4, 0.2),
        score=0.93,
        camera_id=camera,
        station_id="ST-1",
        capture_time=when,
        model_version="synthetic-test",
        jpeg=jpeg,
    )


def _enroll(db_path: Path, individual: str) -> None:
    with IndividualDB(db_path) as db:
        features = extract_features(leopard_crop(individual, 11))
        db.enroll(individual, [features], [f"{individual}.png"], DEFAULT_CONFIG)


def wait_for_records(
    bootstrap: str, topic: str, count: int, matcher: MatcherProcess, timeout_s: float = 90
) -> list:
    """The topic's committed records (what a read_committed consumer sees), once `count`."""
    deadline = time.monotonic() + timeout_s
    while len(records := consume_all(bootstrap, topic)) < count:
        matcher.check_alive()
        assert time.monotonic() < deadline, f"{topic}: not {count} in time:\n{matcher.log_tail()}"
        time.sleep(0.5)
    return records


def test_matcher_end_to_end(kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path) -> None:
    db_path = tmp_path / "individuals.sqlite"
    for individual in ENROLLED:
        _enroll(db_path, individual)
    start = datetime(2026, 1, 12, 20, 0, 0)
    shown = [
        ("SL-101", _crop("SL-101", 23, "C201", start)),
        ("SL-101", _crop("SL-101", 41, "C202", start + timedelta(days=1), night=True)),
        ("SL-102", _crop("SL-102", 37, "C201", start + timedelta(hours=3))),
        ("SL-103", _crop("SL-103", 53, "C203", start + timedelta(hours=5), night=True)),
        (LATE, _crop(LATE, 29, "C202", start + timedelta(hours=7))),
        (UNKNOWN, _crop(UNKNOWN, 31, "C203", start + timedelta(hours=9))),
    ]
    crops = [crop for _, crop in shown]
    expected = {crop.crop_id: (individual, crop) for individual, crop in shown}
    truncated = build_crop_message(_crop("SL-102", 61, "C201", start))
    broken = (truncated[0], truncated[1][: len(truncated[1]) // 3], truncated[2])

    matcher = MatcherProcess(
        db_path,
        kafka_bootstrap,
        kafka_topics,
        f"matcher-{uuid.uuid4().hex[:8]}",
        tmp_path / "matcher.log",
        refresh_interval_s=1,
        session_timeout_s=10,
        batch_size=4,
    )
    with matcher:
        matcher.wait_ready(timeout_s=90)
        _enroll(db_path, LATE)  # enrolled while the matcher runs: picked up incrementally
        produce(kafka_bootstrap, kafka_topics.crops, [build_crop_message(c) for c in crops])
        produce(kafka_bootstrap, kafka_topics.crops, [broken])

        wait_for_records(kafka_bootstrap, kafka_topics.identities, len(crops), matcher)
        wait_for_records(kafka_bootstrap, kafka_topics.deadletter, 1, matcher)
        metrics = matcher.metrics()

    outputs = consume_all(kafka_bootstrap, kafka_topics.identities)
    records = [parse_identity_message(record.value) for record in outputs]
    for record in outputs:  # the matcher's real output follows the checked-in JSON Schema
        assert_follows_schema("identity_record", record.value)
    assert sorted(r["crop_id"] for r in records) == sorted(expected)
    by_crop = {r["crop_id"]: r for r in records}
    for crop_id, (individual, crop) in expected.items():
        record = by_crop[crop_id]
        if individual == UNKNOWN:
            assert record["decision"] == "new_candidate", record
            assert record["individual_id"] is None
        else:
            assert record["decision"] == "known", record
            assert record["individual_id"] == individual, record
        assert record["image_id"] == crop.image_id
        assert record["camera_id"] == crop.camera_id
        assert record["matcher_version"] == DEFAULT_CONFIG.version
        assert record["candidates"] and len(record["candidates"]) <= DEFAULT_CONFIG.top_k
    assert by_crop[crops[4].crop_id]["db_version"] == 4  # the late enrolment was seen

    (letter_record,) = consume_all(kafka_bootstrap, kafka_topics.deadletter)
    letter = parse_deadletter_message(letter_record.key, letter_record.value, letter_record.headers)
    assert (letter.stage, letter.reason) == ("decode", "truncated")
    assert letter.source_topic == kafka_topics.crops

    with IndividualDB(db_path) as db:
        sightings = db.sightings("SL-101")
        assert [s.camera_id for s in sightings] == ["C201", "C202"]
        assert [s.capture_time for s in sightings] == [crops[0].capture_time, crops[1].capture_time]
        assert [s.crop_id for s in db.sightings(LATE)] == [crops[4].crop_id]
        assert len(db.sightings()) == len(crops)

    assert metric_total(metrics, "snowtrap_matcher_crops_total", outcome="matched") == len(crops)
    assert metric_total(metrics, "snowtrap_matcher_crops_total", outcome="deadletter") == 1
    assert metric_total(metrics, "snowtrap_matcher_decisions_total", decision="known") == 5
    assert metric_total(metrics, "snowtrap_matcher_query_latency_seconds_count") == len(crops)


def test_matcher_killed_mid_stream_hands_over_to_its_standby_and_a_second_replica_refuses(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    """One writer per database: a second matcher on the same SQLite file exits 3 with a clear
    error; one started with `db_lock_wait_s` stands by, and when the first is SIGKILLed
    mid-stream it takes the lock, the partitions and the rest of the crops. Each crop ends as
    exactly one identity record (none twice, read_committed) and one sighting."""
    db_path = tmp_path / "individuals.sqlite"
    for individual in ENROLLED:
        _enroll(db_path, individual)
    start = datetime(2026, 2, 3, 21, 0, 0)
    crops = [
        _crop(ENROLLED[n % 3], 100 + n, f"C20{n % 3}", start + timedelta(minutes=n))
        for n in range(24)
    ]
    group = f"matcher-{uuid.uuid4().hex[:8]}"
    common = {"batch_size": 2, "session_timeout_s": 8, "refresh_interval_s": 1}

    def matcher(name: str, **settings: object) -> MatcherProcess:
        return MatcherProcess(
            db_path, kafka_bootstrap, kafka_topics, group, tmp_path / f"{name}.log",
            **common, **settings,
        )  # fmt: skip

    first, standby, extra = matcher("first"), matcher("standby", db_lock_wait_s=300), matcher("x")
    try:
        with first:
            first.wait_ready(timeout_s=90)
            standby.start()  # waits for the lock the first one holds
            with extra:
                assert extra.process is not None and extra.process.wait(timeout=60) == 3
            assert "already served by another matcher" in extra.log_tail(), extra.log_tail()
            standby.check_alive()

            produce(kafka_bootstrap, kafka_topics.crops, [build_crop_message(c) for c in crops])
            before = len(wait_for_records(kafka_bootstrap, kafka_topics.identities, 6, first))
            killed_at = time.monotonic()
            assert first.kill() == -9
            standby.wait_ready(timeout_s=120)
            took_over = time.monotonic() - killed_at
            wait_for_records(kafka_bootstrap, kafka_topics.identities, len(crops), standby)
            assert standby.stop() == 0, standby.log_tail()
    finally:
        standby.stop()

    assert "standing by" in standby.log_tail(400)
    records = [
        parse_identity_message(r.value)
        for r in consume_all(kafka_bootstrap, kafka_topics.identities)
    ]
    assert sorted(r["crop_id"] for r in records) == sorted(c.crop_id for c in crops)
    assert consume_all(kafka_bootstrap, kafka_topics.deadletter) == []
    with IndividualDB(db_path) as db:
        assert sorted(s.crop_id for s in db.sightings()) == sorted(c.crop_id for c in crops)
    print(
        f"matcher SIGKILLed after {before} of {len(crops)} identities; the standby was ready "
        f"{took_over:.1f} s later and finished: {len(records)} identity records, 0 duplicates"
    )
