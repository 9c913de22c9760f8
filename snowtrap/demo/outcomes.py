"""Reading the worker's outcomes: detection records, dead letters and crops."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Results:
    detections: dict[str, Any] = field(default_factory=dict)
    """Image id -> DetectionRecord."""
    letters: dict[str, Any] = field(default_factory=dict)
    """Image id -> DeadLetter."""
    crops: int = 0
    last_outcome_at: float = 0.0

    @property
    def done(self) -> set[str]:
        return set(self.detections) | set(self.letters)


class OutputReader:
    """One consumer over the detections, dead-letter and crops topics, from their start."""

    def __init__(self, bootstrap: str, topics: Any) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topics = topics
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            # the worker writes in transactions: only committed outcomes count
            isolation_level="read_committed",
            max_partition_fetch_bytes=32 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        self.partitions = [
            TopicPartition(topic, p)
            for topic in (topics.detections, topics.deadletter, topics.crops)
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self.results = Results()

    def poll(self, timeout_ms: int = 500) -> None:
        from snowtrap.stream.contracts import parse_deadletter_message, parse_detection_message

        for partition, records in self.consumer.poll(timeout_ms=timeout_ms).items():
            for record in records:
                if partition.topic == self.topics.detections:
                    detection = parse_detection_message(record.value)
                    self.results.detections[detection.image_id] = detection
                elif partition.topic == self.topics.deadletter:
                    letter = parse_deadletter_message(record.key, record.value, record.headers)
                    self.results.letters[letter.image_id] = letter
                else:
                    self.results.crops += 1
                    continue
                self.results.last_outcome_at = time.time()

    def read_to_end(self, settle_s: float = 1.5) -> None:
        """Read until the end offsets stop moving (crops may trail their detection record)."""
        previous: dict[Any, int] | None = None
        while True:
            ends = self.consumer.end_offsets(self.partitions)
            if ends == previous:
                return
            while any(self.consumer.position(tp) < ends[tp] for tp in self.partitions):
                self.poll(200)
            previous = ends
            time.sleep(settle_s)

    def close(self) -> None:
        self.consumer.close()
