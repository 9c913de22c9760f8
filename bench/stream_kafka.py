"""The stream benches' Kafka side: feeding `trap.images` and watching what the worker publishes.

- `preload`: every frame on the images topic before a worker starts (a backlog: measures the
  worker alone, at saturation);
- `send_steady`: frames at a fixed rate on a clock of their own (open loop: a late send does
  not delay the next one), each stamped `sent-at` when it leaves;
- `Watcher`: a read_committed consumer on the detections and dead-letter topics, in a thread,
  noting when each outcome became visible (what a downstream reader sees: with transactions,
  after the commit).

Frames go round-robin over the partitions (the key stays the camera id, as the contract
wants), so two workers get an even share.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.stream_frames import BenchFrame
from snowtrap.stream.contracts import (
    TrapImage,
    build_image_message,
    image_id_of,
    parse_deadletter_message,
    parse_detection_message,
)
from snowtrap.stream.topics import TopicNames

FETCH_BYTES = 32 * 1024 * 1024


@contextlib.contextmanager
def bench_broker(bootstrap: str | None, workdir: Path) -> Iterator[tuple[str, str]]:
    """(bootstrap servers, where they came from): the one given (argument or
    KAFKA_BOOTSTRAP_SERVERS), else the project's local broker on 127.0.0.1 for the run."""
    given = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if given:
        yield given, "given"
        return
    from snowtrap.devtools.kafka_broker import LocalKafkaBroker

    local = LocalKafkaBroker(workdir / "kafka")
    local.start()
    try:
        yield local.bootstrap_servers, "local broker on 127.0.0.1 started by the bench"
    finally:
        local.stop()


def _producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=0,
        max_request_size=FETCH_BYTES,
    )


def image_message(frame: BenchFrame, sent_at: float) -> tuple[bytes, bytes, list]:
    """The frame as the uploader sends it (camera = the survey's camera folder)."""
    camera = frame.path.parent.name
    return build_image_message(
        TrapImage(
            image_id=image_id_of(frame.jpeg),
            camera_id=camera,
            station_id="bench-station",
            file_name=frame.path.name,
            content_type="image/jpeg",
            capture_time=None,
            sent_at=sent_at,
            payload=frame.jpeg,
        )
    )


def preload(bootstrap: str, topic: str, frames: Sequence[BenchFrame], partitions: int) -> None:
    """Every frame on the topic, acknowledged, before anything consumes it."""
    producer = _producer(bootstrap)
    try:
        futures = []
        for index, frame in enumerate(frames):
            key, value, headers = image_message(frame, time.time())
            futures.append(
                producer.send(
                    topic, key=key, value=value, headers=headers, partition=index % partitions
                )
            )
        for future in futures:
            future.get(timeout=120)
    finally:
        producer.close(timeout=10)


def send_steady(
    bootstrap: str, topic: str, frames: Sequence[BenchFrame], partitions: int, rate: float
) -> float:
    """Send one frame every 1/rate s on a fixed schedule; returns the achieved send rate."""
    producer = _producer(bootstrap)
    try:
        began = time.perf_counter()
        futures = []
        for index, frame in enumerate(frames):
            due = began + index / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            key, value, headers = image_message(frame, time.time())
            futures.append(
                producer.send(
                    topic, key=key, value=value, headers=headers, partition=index % partitions
                )
            )
        producer.flush(timeout=120)
        for future in futures:
            future.get(timeout=120)
        elapsed = time.perf_counter() - began
        return (len(frames) - 1) / elapsed if len(frames) > 1 and elapsed > 0 else float("nan")
    finally:
        producer.close(timeout=10)


@dataclass
class Seen:
    """One outcome as the watcher saw it."""

    image_id: str
    kind: str  # "detection" or "deadletter"
    visible_at: float  # wall clock when the consumer got it
    produced_at: float  # the record's Kafka timestamp (the worker's producer)
    sent_at: float | None = None  # detection records carry the uploader's sent-at
    leopard: bool = False
    detector_ran: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)


class Watcher:
    """Outcomes on the detections and dead-letter topics, as they become visible."""

    def __init__(self, bootstrap: str, topics: TopicNames) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            isolation_level="read_committed",
            fetch_max_wait_ms=20,
            max_partition_fetch_bytes=FETCH_BYTES,
        )
        self.topics = topics
        self.seen: dict[str, Seen] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-watcher", daemon=True)

    def __enter__(self) -> Watcher:
        partitions = []
        for topic in (self.topics.detections, self.topics.deadletter):
            ids = self.consumer.partitions_for_topic(topic) or {0}
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.consumer.close()

    def _run(self) -> None:
        while not self.stopping.is_set():
            for tp, records in self.consumer.poll(timeout_ms=50).items():
                now = time.time()
                for record in records:
                    self._note(tp.topic, record, now)

    def _note(self, topic: str, record: object, now: float) -> None:
        produced = record.timestamp / 1000.0  # type: ignore[attr-defined]
        if topic == self.topics.detections:
            parsed = parse_detection_message(record.value)  # type: ignore[attr-defined]
            seen = Seen(
                parsed.image_id,
                "detection",
                now,
                produced,
                parsed.sent_at,
                bool(parsed.detections),
                parsed.detector_ran,
                dict(parsed.timings_ms),
            )
        else:
            letter = parse_deadletter_message(
                record.key,  # type: ignore[attr-defined]
                record.value,  # type: ignore[attr-defined]
                record.headers,  # type: ignore[attr-defined]
            )
            seen = Seen(letter.image_id, "deadletter", now, produced)
        with self.lock:
            self.seen.setdefault(seen.image_id, seen)

    def wait_for(self, ids: set[str], timeout_s: float, alive: object = None) -> list[Seen]:
        """Block until every id has an outcome (raises after `timeout_s`); their outcomes."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                done = ids <= self.seen.keys()
                if done:
                    return [self.seen[i] for i in ids]
                missing = len(ids - self.seen.keys())
            if time.monotonic() > deadline:
                raise TimeoutError(f"{missing} of {len(ids)} images without an outcome")
            if alive is not None:
                alive()  # type: ignore[operator]
            time.sleep(0.1)
