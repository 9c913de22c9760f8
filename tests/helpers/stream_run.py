"""Running workers in the end-to-end tests, and the checks made on their outputs."""

from __future__ import annotations

import time
from pathlib import Path

from helpers.topics import Outcomes
from helpers.trap_cards import Uploaded
from helpers.worker_process import WorkerProcess, metric_total
from snowtrap.stream.topics import TopicNames

SESSION_TIMEOUT_S = 8.0
"""Short consumer-group session in these tests, so a killed worker's partitions move on fast."""


def start_worker(
    bundle: Path, bootstrap: str, topics: TopicNames, group: str, log: Path, **settings: object
) -> WorkerProcess:
    worker = WorkerProcess(
        bundle,
        bootstrap,
        topics,
        group,
        log,
        session_timeout_s=SESSION_TIMEOUT_S,
        **settings,
    ).start()
    try:
        worker.wait_ready()
    except BaseException:
        worker.stop()
        raise
    return worker


def is_stand_in(manifest: object) -> bool:
    """True for the test bundle, whose detector is a class-activation-map stand-in."""
    notes = " ".join(manifest.provenance.notes)  # type: ignore[attr-defined]
    return "stand-in" in notes


def assert_invariant(outcomes: Outcomes, uploaded: Uploaded) -> None:
    """Each uploaded id once: detected or dead, never both; repeats only under the same id."""
    assert outcomes.invariant_problems(uploaded.ids) == []
    assert len(outcomes.done_ids) == len(uploaded.ids)
    # A record or letter published twice is the same image re-done: identical outcome.
    for image_id in outcomes.duplicates():
        records = [r for r in outcomes.detections if r.image_id == image_id]
        letters = [letter for letter in outcomes.letters if letter.image_id == image_id]
        assert not (records and letters), image_id
        assert len({(r.file, tuple(r.detections)) for r in records}) <= 1, image_id
        assert len({(x.reason, x.stage) for x in letters}) <= 1, image_id


def wait_for_metrics(worker: WorkerProcess, processed: int, timeout_s: float = 20.0) -> dict:
    """/metrics once the worker has counted `processed` outcomes (counting follows the acks)."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = worker.metrics()
        if metric_total(metrics, "snowtrap_images_processed_total") >= processed:
            return metrics
        if time.monotonic() > deadline:
            raise AssertionError(f"worker counted fewer than {processed} images: {metrics}")
        time.sleep(0.5)


def wait_for_zero_lag(worker: WorkerProcess, partitions: int, timeout_s: float = 20.0) -> dict:
    """The consumer-lag gauges once every partition of the images topic reads 0."""
    deadline = time.monotonic() + timeout_s
    while True:
        lag = worker.metrics().get("snowtrap_consumer_lag_messages", {})
        if len(lag) == partitions and not any(lag.values()):
            return lag
        if time.monotonic() > deadline:
            raise AssertionError(f"consumer lag of {partitions} partitions not all 0: {lag}")
        time.sleep(0.5)
