"""Exactly once on a real broker, with the trained bundle: workers SIGKILLed mid-stream.

Two workers share the group and images keep arriving; three times the worker holding the
most busy partitions is SIGKILLed, and a replacement joins. Each batch's outputs and input
offsets are one Kafka transaction, so what a `read_committed` consumer sees holds no image
twice, not even as an identical copy, and every image has its one outcome. The time from each
SIGKILL to the next outcome of a partition the dead worker held is printed (the failover
figure; not asserted).

The broker restart: tests/test_stream_e2e_broker_restart.py; the matcher: test_matcher_e2e.py.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from helpers.stream_run import (
    SESSION_TIMEOUT_S,
    SteadyFeed,
    assert_exactly_once,
    start_worker,
    wait_for_outcome_from,
)
from helpers.topics import collect_outcomes, consume_all, wait_for_outcomes
from helpers.trap_cards import prepare_cards, upload_everything
from helpers.worker_process import WorkerProcess
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from snowtrap.stream.contracts import H
from snowtrap.stream.topics import TopicNames

pytestmark = pytest.mark.kafka

KILLS = 3
FEED_RATE = 3.0
"""Images per second sent during the kills, so every partition has work when one dies."""


def image_offsets(bootstrap: str, topics: TopicNames) -> dict[str, tuple[int, int]]:
    """Image id -> (partition, offset) where it was uploaded on `trap.images`."""
    return {
        dict(record.headers)[H.IMAGE_ID].decode(): (record.partition, record.offset)
        for record in consume_all(bootstrap, topics.images)
    }


def image_partitions(bootstrap: str, topics: TopicNames) -> dict[str, int]:
    """Image id -> the `trap.images` partition it was uploaded to."""
    return {image_id: at[0] for image_id, at in image_offsets(bootstrap, topics).items()}


def busiest_worker(workers: list[WorkerProcess], fed: set[int]) -> tuple[int, set[int]]:
    """The worker holding the most partitions that get images (its index and partitions)."""
    held = [set(worker.wait_ready()["partition_ids"]) for worker in workers]
    index = max(range(len(workers)), key=lambda i: len(held[i] & fed))
    assert held[index] & fed, f"no worker holds a partition that gets images: {held}"
    return index, held[index] & fed


def stalled_partitions(
    bootstrap: str,
    topics: TopicNames,
    group: str,
    expected: set[str],
    workers: list[WorkerProcess],
) -> str:
    """Where the images without an outcome wait: per `trap.images` partition their offsets, the
    group's committed offset and the end offset; how many of them have an outcome that only a
    `read_uncommitted` reader sees (written in a transaction never committed); who holds what."""
    missing = expected - collect_outcomes(bootstrap, topics, crops=False).done_ids
    offsets: dict[int, list[int]] = {}
    for image_id, (partition, offset) in image_offsets(bootstrap, topics).items():
        if image_id in missing:
            offsets.setdefault(partition, []).append(offset)
    committed, ends = group_offsets(bootstrap, group, topics.images)
    uncommitted = missing & uncommitted_outcome_ids(bootstrap, topics)
    lines = [
        f"partition {p}: offsets {sorted(found)} missing; group committed {committed.get(p)}, "
        f"end {ends.get(p)}"
        for p, found in sorted(offsets.items())
    ]
    held = {worker.log_path.stem: worker.wait_ready()["partition_ids"] for worker in workers}
    return (
        "; ".join(lines)
        + f"; {len(uncommitted)} of the missing have an outcome outside committed transactions"
        + f"; partitions held {held}"
    )


def group_offsets(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offset and the end offset, per partition of `topic`."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        committed = {
            tp.partition: meta.offset
            for tp, meta in admin.list_group_offsets({group: None})[group].items()
            if tp.topic == topic
        }
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = {tp.partition: end for tp, end in consumer.end_offsets(partitions).items()}
        return committed, ends
    finally:
        admin.close()
        consumer.close()


def uncommitted_outcome_ids(bootstrap: str, topics: TopicNames) -> set[str]:
    """Image ids of every outcome record, committed or not (`read_uncommitted`)."""
    return {
        image_id.decode()
        for topic in (topics.detections, topics.deadletter)
        for record in consume_all(bootstrap, topic, isolation_level="read_uncommitted")
        if (image_id := dict(record.headers or []).get(H.IMAGE_ID)) is not None
    }


def test_three_worker_sigkills_leave_every_image_exactly_once(
    kafka_bootstrap: str, kafka_topics: TopicNames, trained_bundle: Path, tmp_path: Path
):
    topics = kafka_topics
    group = f"e2e-eos-{uuid.uuid4().hex[:8]}"
    cards, uploaded = prepare_cards(tmp_path / "cards", n_good=73, seed=31)
    settings = {"batch_size": 4}

    def new_worker(n: int) -> WorkerProcess:
        return start_worker(
            trained_bundle, kafka_bootstrap, topics, group, tmp_path / f"w{n}.log", **settings
        )

    workers = [new_worker(0), new_worker(1)]
    feed = SteadyFeed(kafka_bootstrap, topics.images, list(uploaded.good.values()), FEED_RATE)
    stalls: list[float | None] = []
    try:
        upload_everything(kafka_bootstrap, topics, cards, uploaded, tmp_path)
        fed_partitions = set(image_partitions(kafka_bootstrap, topics).values())
        feed.start()
        for kill in range(KILLS):
            time.sleep(3.0)  # the group settles after the last join; batches are in flight
            index, held = busiest_worker(workers, fed_partitions)
            victim = workers[index]
            killed_at = time.monotonic()
            assert victim.kill() == -9
            victim.stop()
            time.sleep(1.0)  # a commit the victim had already sent may still land: not new
            known = collect_outcomes(kafka_bootstrap, topics, crops=False).done_ids
            survivor = workers[1 - index]
            stall = wait_for_outcome_from(
                kafka_bootstrap, topics, held, known, since=killed_at, timeout_s=90,
                alive=survivor.check_alive,
            )  # fmt: skip
            stalls.append(stall)
            print(
                f"kill {kill + 1}: worker on partitions {sorted(held)} SIGKILLed with "
                f"{len(known)} outcomes out; next outcome of those partitions after "
                + (f"{stall:.1f} s" if stall is not None else "none within 90 s")
            )
            workers[index] = new_worker(kill + 2)
        fed = feed.stop()
        uploaded.ids |= fed
        try:
            outcomes = wait_for_outcomes(
                kafka_bootstrap, topics, uploaded.ids, timeout_s=240, alive=workers[0].check_alive
            )
        except AssertionError as error:  # say where the missing images wait, and who holds it
            raise AssertionError(
                f"{error}; "
                + stalled_partitions(kafka_bootstrap, topics, group, uploaded.ids, workers)
            ) from None
        for worker in workers:
            assert worker.stop() == 0, worker.log_tail()
    finally:
        feed.stop()
        for worker in workers:
            worker.stop()

    assert_exactly_once(outcomes, uploaded)
    assert outcomes.detected_ids == set(uploaded.good) | fed
    assert outcomes.dead_ids == uploaded.corrupt_ids | uploaded.non_image_ids
    assert all(stall is not None for stall in stalls), stalls
    print(
        f"{KILLS} SIGKILLs, {len(uploaded.ids)} images ({len(fed)} sent during the kills): "
        f"{len(outcomes.detections)} detection records and {len(outcomes.letters)} dead letters "
        "read_committed (0 duplicates); kill -> next outcome of the dead worker's partitions: "
        + ", ".join(f"{s:.1f} s" for s in stalls if s is not None)
        + f" (session timeout {SESSION_TIMEOUT_S:g} s)"
    )
