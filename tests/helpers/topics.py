"""Reading what the worker published, and checking the pipeline's invariant on it.

The invariant (DESIGN.md): every image that entered `trap.images` ends as exactly one
detection record or one dead-letter record. A worker that crashes after producing but before
committing re-does a batch, so the same image may appear again, always under the same image
id; `Outcomes` therefore counts distinct ids and checks that no id is both detected and
dead-lettered.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from snowtrap.stream.contracts import (
    Crop,
    DeadLetter,
    DetectionRecord,
    parse_crop_message,
    parse_deadletter_message,
    parse_detection_message,
)
from snowtrap.stream.topics import TopicNames

FETCH_BYTES = 32 * 1024 * 1024


def _consumer(bootstrap: str, isolation_level: str = "read_committed") -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level=isolation_level,  # read_committed: an aborted batch stays unseen
        max_partition_fetch_bytes=FETCH_BYTES,
        fetch_max_bytes=2 * FETCH_BYTES,
    )


def topic_size(bootstrap: str, topic: str) -> int:
    """Messages on the topic (sum of end offsets; the test topics are fresh, starting at 0)."""
    consumer = _consumer(bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def topic_partitions(bootstrap: str, topic: str) -> int:
    consumer = _consumer(bootstrap)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def consume_all(
    bootstrap: str,
    topic: str,
    timeout_s: float = 60.0,
    *,
    isolation_level: str = "read_committed",
) -> list[Any]:
    """Every record on `topic` up to its end offsets as they are now, by partition/offset
    (`read_uncommitted`: with what open and aborted transactions wrote)."""
    consumer = _consumer(bootstrap, isolation_level)
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            raise AssertionError(f"topic {topic} does not exist")
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while not all(consumer.position(tp) >= ends[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout_s} s")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return sorted(
            (r for r in records if r.offset < ends[TopicPartition(topic, r.partition)]),
            key=lambda r: (r.partition, r.offset),
        )
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes, Any]]) -> int:
    """Send (key, value, headers) messages and wait for every acknowledgement."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=FETCH_BYTES)
    try:
        futures = [
            producer.send(topic, key=key, value=value, headers=list(headers))
            for key, value, headers in messages
        ]
        for future in futures:
            future.get(timeout=60)
        return len(futures)
    finally:
        producer.close(timeout=10)


@dataclass
class Outcomes:
    """What the worker published on the detections, dead-letter and crops topics."""

    detections: list[DetectionRecord] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    crops: list[Crop] = field(default_factory=list)

    @property
    def detected_ids(self) -> set[str]:
        return {record.image_id for record in self.detections}

    @property
    def dead_ids(self) -> set[str]:
        return {letter.image_id for letter in self.letters}

    @property
    def done_ids(self) -> set[str]:
        return self.detected_ids | self.dead_ids

    def latest_records(self) -> dict[str, DetectionRecord]:
        """The last record per image id (what an export keeps)."""
        return {record.image_id: record for record in self.detections}

    def letters_by_id(self) -> dict[str, DeadLetter]:
        return {letter.image_id: letter for letter in self.letters}

    def duplicates(self) -> Counter[str]:
        """Image ids published more than once (re-done after a crash), with their count."""
        counts = Counter(r.image_id for r in self.detections)
        counts.update(letter.image_id for letter in self.letters)
        return Counter({image_id: n for image_id, n in counts.items() if n > 1})

    def invariant_problems(self, expected_ids: set[str]) -> list[str]:
        """Why the invariant does not hold for these uploaded image ids (empty when it does)."""
        problems = []
        missing = expected_ids - self.done_ids
        if missing:
            problems.append(f"{len(missing)} image(s) have no outcome: {sorted(missing)[:5]}")
        unknown = self.done_ids - expected_ids
        if unknown:
            problems.append(f"{len(unknown)} outcome(s) for ids never sent: {sorted(unknown)[:5]}")
        both = self.detected_ids & self.dead_ids
        if both:
            problems.append(f"{len(both)} image(s) both detected and dead: {sorted(both)[:5]}")
        return problems


def collect_outcomes(bootstrap: str, topics: TopicNames, *, crops: bool = True) -> Outcomes:
    """Every detection record, dead letter and (optionally) crop on the topics now."""
    outcomes = Outcomes()
    for record in consume_all(bootstrap, topics.detections):
        outcomes.detections.append(parse_detection_message(record.value))
    for record in consume_all(bootstrap, topics.deadletter):
        outcomes.letters.append(parse_deadletter_message(record.key, record.value, record.headers))
    if crops:
        for record in consume_all(bootstrap, topics.crops):
            outcomes.crops.append(parse_crop_message(record.value, record.headers))
    return outcomes


def wait_for_outcomes(
    bootstrap: str,
    topics: TopicNames,
    expected_ids: set[str],
    timeout_s: float,
    *,
    alive: Any = None,
) -> Outcomes:
    """Poll the output topics until every expected id has an outcome; returns them all.

    `alive`: a callable raising when the worker died (so a crash fails fast, with its log).
    Raises AssertionError naming what is missing at the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        outcomes = collect_outcomes(bootstrap, topics, crops=False)
        if expected_ids <= outcomes.done_ids:
            return collect_outcomes(bootstrap, topics)
        if time.monotonic() > deadline:
            missing = expected_ids - outcomes.done_ids
            raise AssertionError(
                f"{len(missing)} of {len(expected_ids)} images still without an outcome "
                f"after {timeout_s} s"
            )
        if alive is not None:
            alive()
        time.sleep(1.0)
