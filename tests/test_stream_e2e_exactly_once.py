"""Exactly once on a real broker, with the trained bundle: workers SIGKILLed mid-stream.

Two workers share the group; three times one of them is SIGKILLed while it holds partitions
with work left, and a replacement joins. Each batch's outputs and input offsets are one Kafka
transaction, so what a `read_committed` consumer sees holds no image twice, not even as an
identical copy, and every image has its one outcome. The time from each SIGKILL to the next
outcome of a partition the dead worker held is printed (the failover figure; not asserted).

The broker restart: tests/test_stream_e2e_broker_restart.py; the matcher: test_matcher_e2e.py.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from helpers.stream_run import (
    SESSION_TIMEOUT_S,
    assert_exactly_once,
    start_worker,
    wait_for_outcome_from,
)
from helpers.topics import collect_outcomes, consume_all, wait_for_outcomes
from helpers.trap_cards import prepare_cards, upload_everything
from helpers.worker_process import WorkerProcess

from snowtrap.stream.contracts import H
from snowtrap.stream.topics import TopicNames

pytestmark = pytest.mark.kafka

KILLS = 3


def image_partitions(bootstrap: str, topics: TopicNames) -> dict[str, int]:
    """Image id -> the `trap.images` partition it was uploaded to."""
    out = {}
    for record in consume_all(bootstrap, topics.images):
        headers = dict(record.headers)
        out[headers[H.IMAGE_ID].decode()] = record.partition
    return out


def victim_with_most_work(
    workers: list[WorkerProcess], left: set[str], partition_of: dict[str, int]
) -> tuple[int, set[int]]:
    """The worker whose partitions hold the most images still without an outcome."""
    best = (-1, 0, set[int]())
    for index, worker in enumerate(workers):
        held = set(worker.wait_ready()["partition_ids"])
        work = sum(1 for image_id in left if partition_of.get(image_id) in held)
        if work > best[1]:
            best = (index, work, held)
    assert best[0] >= 0, "no worker holds a partition with work left"
    return best[0], best[2]


def wait_for_done(
    bootstrap: str, topics: TopicNames, count: int, workers: list[WorkerProcess]
) -> set[str]:
    """The ids with an outcome, once there are at least `count`."""
    deadline = time.monotonic() + 180
    while True:
        done = collect_outcomes(bootstrap, topics, crops=False).done_ids
        if len(done) >= count:
            return done
        for worker in workers:
            worker.check_alive()
        assert time.monotonic() < deadline, workers[0].log_tail()
        time.sleep(0.5)


def test_three_worker_sigkills_leave_every_image_exactly_once(
    kafka_bootstrap: str, kafka_topics: TopicNames, trained_bundle: Path, tmp_path: Path
):
    topics = kafka_topics
    group = f"e2e-eos-{uuid.uuid4().hex[:8]}"
    cards, uploaded = prepare_cards(tmp_path / "cards", n_good=153, seed=31)
    settings = {"batch_size": 4}

    def new_worker(n: int) -> WorkerProcess:
        return start_worker(
            trained_bundle, kafka_bootstrap, topics, group, tmp_path / f"w{n}.log", **settings
        )

    workers = [new_worker(0), new_worker(1)]
    stalls: list[float | None] = []
    try:
        upload_everything(kafka_bootstrap, topics, cards, uploaded, tmp_path)
        partition_of = image_partitions(kafka_bootstrap, topics)
        total = len(uploaded.ids)
        done_at_kill = total // 5  # the first kill, then a few outcomes after each rejoin
        for kill in range(KILLS):
            done = wait_for_done(kafka_bootstrap, topics, done_at_kill, workers)
            index, held = victim_with_most_work(workers, uploaded.ids - done, partition_of)
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
                f"kill {kill + 1}: worker on partitions {sorted(held)} SIGKILLed after "
                f"{len(known)} of {total} outcomes; next outcome of those partitions after "
                + (f"{stall:.1f} s" if stall is not None else "none within 90 s")
            )
            workers[index] = new_worker(kill + 2)
            done_at_kill = len(known) + 6

        outcomes = wait_for_outcomes(
            kafka_bootstrap, topics, uploaded.ids, timeout_s=240, alive=workers[0].check_alive
        )
        for worker in workers:
            assert worker.stop() == 0, worker.log_tail()
    finally:
        for worker in workers:
            worker.stop()

    assert_exactly_once(outcomes, uploaded)
    assert outcomes.detected_ids == set(uploaded.good)
    assert outcomes.dead_ids == uploaded.corrupt_ids | uploaded.non_image_ids
    assert all(stall is not None for stall in stalls), stalls
    print(
        f"{KILLS} SIGKILLs, {total} images: {len(outcomes.detections)} detection records and "
        f"{len(outcomes.letters)} dead letters read_committed (0 duplicates); kill -> next "
        f"outcome of the dead worker's partitions: "
        + ", ".join(f"{s:.1f} s" for s in stalls if s is not None)
        + f" (session timeout {SESSION_TIMEOUT_S:g} s)"
    )
