"""The page's Kafka reader: a thread that follows the four output topics into `LiveState`.

A group-less kafka-python consumer (as `snowtrap export` uses: it commits nothing, so the page
never moves anyone's offsets) is assigned every partition of `trap.detections`, `trap.crops`,
`trap.identities` and `trap.deadletter`, starts at the first record of the counting window
(24 h back by default, so a page started late counts the same as one that ran all day), and
then follows new records. Missing topics or an unreachable cluster are shown on the page and
retried; they never stop the process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from snowtrap.stream.live.settings import LiveSettings
from snowtrap.stream.live.state import ROLES, LiveState, Role

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500
MAX_POLL_RECORDS = 200


class TopicFollower(threading.Thread):
    """Reads the topics into the state until `stop()`; reconnects after any Kafka error."""

    def __init__(self, settings: LiveSettings, state: LiveState) -> None:
        super().__init__(name="snowtrap-live-kafka", daemon=True)
        self.settings = settings
        self.state = state
        self._stopping = threading.Event()
        topics = settings.topics
        self.roles: dict[str, Role] = {getattr(topics, role): role for role in ROLES}
        self._next_offsets: dict[Any, int] = {}
        """Where each partition goes on after a reconnect, so nothing is counted twice."""

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        from kafka import KafkaConsumer

        while not self._stopping.is_set():
            consumer = None
            try:
                consumer = KafkaConsumer(**self.settings.consumer_config())
                if self._assign(consumer):
                    self._follow(consumer)
            except Exception as error:  # KafkaError, OSError, anything: shown, then retried
                log.warning("reading Kafka at %s: %r", self.settings.bootstrap_servers, error)
                self.state.set_kafka(connected=False, error=f"Kafka: {error!r}")
            finally:
                if consumer is not None:
                    consumer.close()
            self._stopping.wait(self.settings.live.retry_interval_s)

    def _assign(self, consumer: Any) -> bool:
        """Assign every partition and seek to the window's start (after a reconnect: where it
        left off); False if topics are missing."""
        from kafka import TopicPartition

        available = consumer.topics()
        missing = sorted(topic for topic in self.roles if topic not in available)
        if missing:
            self.state.set_kafka(connected=True, error=f"waiting for topics {', '.join(missing)}")
            return False
        partitions = [
            TopicPartition(topic, partition)
            for topic in self.roles
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        window_start_ms = int((time.time() - self.settings.live.window_hours * 3600) * 1000)
        starts = consumer.offsets_for_times(dict.fromkeys(partitions, window_start_ms))
        for partition in partitions:
            found = starts.get(partition)
            if partition in self._next_offsets:
                consumer.seek(partition, self._next_offsets[partition])
            elif found is None:
                consumer.seek_to_end(partition)  # nothing in the window: only new records
            else:
                consumer.seek(partition, found.offset)
        self._ends = consumer.end_offsets(partitions)
        self.state.set_kafka(connected=True, caught_up=False, error=None)
        log.info("reading %d partitions from %s back", len(partitions), self._window_text())
        return True

    def _follow(self, consumer: Any) -> None:
        caught_up = False
        while not self._stopping.is_set():
            batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_POLL_RECORDS)
            for partition, records in batches.items():
                role = self.roles[partition.topic]
                for record in records:
                    self.state.apply_record(
                        role, record.key, record.value, record.headers, record.timestamp
                    )
                    self._next_offsets[partition] = record.offset + 1
            if not caught_up and all(
                consumer.position(partition) >= end for partition, end in self._ends.items()
            ):
                caught_up = True
                self.state.set_kafka(caught_up=True)
                log.info(
                    "caught up: %d records from the last %s", self.state.kafka.records,
                    self._window_text(),
                )  # fmt: skip

    def _window_text(self) -> str:
        return f"{self.settings.live.window_hours:g} h"
