"""End to end on a real broker, workers coming and going mid-run (same consumer group).

- The worker is SIGKILLed (or SIGTERMed) mid-run and a new one takes over: every image has
  exactly one outcome, and nothing is visible twice (each batch is one Kafka transaction).
- A second worker joins mid-run: the partitions are shared, no image is lost or doubled.

Three SIGKILLs with two workers, and the failover time: test_stream_e2e_exactly_once.py.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from helpers.stream_run import assert_exactly_once, start_worker, wait_for_metrics
from helpers.topics import (
    collect_outcomes,
    topic_partitions,
    topic_size,
    wait_for_outcomes,
)
from helpers.trap_cards import prepare_cards, upload_everything
from helpers.worker_process import metric_total

from snowtrap.cli import main as snowtrap_main
from snowtrap.stream.megadetector import validate_megadetector_file
from snowtrap.stream.topics import TopicNames

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def worker_bundle(trained_bundle: Path) -> Path:
    """The model bundle the workers serve: the session's trained bundle (classifier and
    Faster R-CNN from `configs/synthetic-ci.yaml`), as a deployment serves one."""
    return trained_bundle


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_worker_stopped_mid_run_is_replaced_and_every_image_still_ends_once(
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    worker_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
):
    """SIGKILL: nothing runs after it; the batch in flight was never committed, so it is redone
    and its half-written transaction aborted. SIGTERM: the batch in progress is cancelled and
    must not be committed either."""
    topics = kafka_topics
    group = f"e2e-kill-{uuid.uuid4().hex[:8]}"
    cards, uploaded = prepare_cards(tmp_path / "cards", n_good=113, seed=21)
    # Small batches: the kill lands between or inside transactions.
    settings = {"batch_size": 4}

    first = start_worker(
        worker_bundle, kafka_bootstrap, topics, group, tmp_path / "w1.log", **settings
    )
    try:
        upload_everything(kafka_bootstrap, topics, cards, uploaded, tmp_path)
        total = len(uploaded.ids)
        deadline = time.monotonic() + 120
        while True:
            first.check_alive()
            done = topic_size(kafka_bootstrap, topics.detections) + topic_size(
                kafka_bootstrap, topics.deadletter
            )
            if done >= 15:
                break
            assert time.monotonic() < deadline, first.log_tail()
            time.sleep(0.1)
        if how == "SIGKILL":
            assert first.kill() == -9
        else:
            assert first.stop() == 0, first.log_tail()
    finally:
        first.stop()
    time.sleep(1.0)  # anything the dead worker's socket still held has reached the broker
    after_kill = collect_outcomes(kafka_bootstrap, topics, crops=False)
    first_messages = len(after_kill.detections) + len(after_kill.letters)
    left = uploaded.ids - after_kill.done_ids
    assert left, "the first worker finished everything before it could be killed"

    with start_worker(
        worker_bundle, kafka_bootstrap, topics, group, tmp_path / "w2.log", **settings
    ) as second:
        outcomes = wait_for_outcomes(
            kafka_bootstrap, topics, uploaded.ids, timeout_s=150, alive=second.check_alive
        )
        all_messages = len(outcomes.detections) + len(outcomes.letters)
        metrics = wait_for_metrics(second, all_messages - first_messages)
        assert second.stop() == 0, second.log_tail()

    assert_exactly_once(outcomes, uploaded)
    assert outcomes.detected_ids == set(uploaded.good)
    assert outcomes.dead_ids == uploaded.corrupt_ids | uploaded.non_image_ids
    # The second worker did exactly the rest; its /metrics count what it committed.
    second_count = metric_total(metrics, "snowtrap_images_processed_total")
    assert second_count == all_messages - first_messages == len(left)
    print(
        f"{how} after {total - len(left)} of {total} outcomes; the second worker processed "
        f"{second_count:.0f}, 0 published twice"
    )

    # `snowtrap export` of a run with re-done images: one entry per image, failures included.
    for role, name in topics.items():
        monkeypatch.setenv(f"SNOWTRAP_TOPICS__{role.upper()}", name)
    output = tmp_path / "megadetector.json"
    argv = ["export", "--format", "megadetector", str(output), "--include-deadletter"]
    argv += ["--bootstrap-servers", kafka_bootstrap, "--bundle", str(worker_bundle)]
    assert snowtrap_main(argv) == 0
    document = json.loads(output.read_text())
    assert validate_megadetector_file(document) == []
    files = [entry["file"] for entry in document["images"]]
    assert len(files) == len(set(files)) == total
    failures = [entry for entry in document["images"] if entry.get("failure")]
    assert len(failures) == len(uploaded.corrupt_ids | uploaded.non_image_ids)


def test_a_second_worker_joining_mid_run_shares_the_partitions_without_losing_images(
    kafka_bootstrap: str, kafka_topics: TopicNames, worker_bundle: Path, tmp_path: Path
):
    """Scale-out (KEDA adds a pod): the group rebalances while batches are in flight."""
    topics = kafka_topics
    group = f"e2e-scale-{uuid.uuid4().hex[:8]}"
    cards, uploaded = prepare_cards(tmp_path / "cards", n_good=153, seed=23)
    settings = {"batch_size": 4}
    first = start_worker(
        worker_bundle, kafka_bootstrap, topics, group, tmp_path / "w1.log", **settings
    )
    with first:
        upload_everything(kafka_bootstrap, topics, cards, uploaded, tmp_path)
        deadline = time.monotonic() + 120
        while topic_size(kafka_bootstrap, topics.detections) < 15:
            first.check_alive()
            assert time.monotonic() < deadline, first.log_tail()
            time.sleep(0.1)
        with start_worker(
            worker_bundle, kafka_bootstrap, topics, group, tmp_path / "w2.log", **settings
        ) as second:
            outcomes = wait_for_outcomes(
                kafka_bootstrap, topics, uploaded.ids, timeout_s=150, alive=first.check_alive
            )
            second.check_alive()
            deadline = time.monotonic() + 20
            # Each worker counts a batch once its transaction committed; the counters may lag
            # the topics by a moment, so both are re-read until they agree.
            while True:
                counts = [
                    metric_total(worker.metrics(), "snowtrap_images_processed_total")
                    for worker in (first, second)
                ]
                current = collect_outcomes(kafka_bootstrap, topics, crops=False)
                all_messages = len(current.detections) + len(current.letters)
                if sum(counts) == all_messages or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            partitions = [worker.wait_ready()["partitions"] for worker in (first, second)]
            assert second.stop() == 0, second.log_tail()
        assert first.stop() == 0, first.log_tail()

    assert_exactly_once(outcomes, uploaded)
    assert outcomes.detected_ids == set(uploaded.good)
    assert sum(counts) == all_messages == len(uploaded.ids)
    assert sum(partitions) == topic_partitions(kafka_bootstrap, topics.images)
    assert all(partitions), partitions
    print(f"processed per worker {counts}, partitions {partitions}")
