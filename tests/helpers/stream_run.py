"""Running workers in the end-to-end tests, and the checks made on their outputs."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from kafka import KafkaProducer

from helpers.messages import image_message
from helpers.topics import FETCH_BYTES, Outcomes, collect_outcomes
from helpers.trap_cards import TrapFile, Uploaded
from helpers.worker_process import WorkerProcess, metric_total
from snowtrap.stream.contracts import DeadLetter, DetectionRecord, image_id_of
from snowtrap.stream.topics import TopicNames

SESSION_TIMEOUT_S = 8.0
"""Short consumer-group session in these tests, so a killed worker's partitions move on fast."""


CI_BUNDLE_OPERATING_POINT = {"detection_threshold": 0.15, "crop_threshold": 0.2}
"""Worker thresholds for the session's trained bundle. `configs/synthetic-ci.yaml` trains the
detector for minutes (heldout mAP@0.5 about 0.05): its boxes on the e2e frames score 0.15-0.3,
under the manifest's 0.5 / 0.7, so the tests set the operating point as an operator would
(worker settings override the manifest) to send boxes and crops through the stream."""


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


def assert_exactly_once(outcomes: Outcomes, uploaded: Uploaded) -> None:
    """The invariant, and as a `read_committed` consumer sees the topics: one raw record per
    image (no duplicate at all, not even an identical one) and one crop per (image, box)."""
    assert_invariant(outcomes, uploaded)
    assert not outcomes.duplicates(), f"raw duplicates: {dict(outcomes.duplicates())}"
    assert len(outcomes.detections) + len(outcomes.letters) == len(uploaded.ids)
    crops = Counter(crop.crop_id for crop in outcomes.crops)
    assert not [crop_id for crop_id, n in crops.items() if n > 1], "duplicate crops"


def source_partition(outcome: DetectionRecord | DeadLetter) -> int:
    """The `trap.images` partition an outcome's image was consumed from."""
    if isinstance(outcome, DeadLetter):
        return outcome.source_partition
    return int(outcome.source["partition"])


def wait_for_outcome_from(
    bootstrap: str,
    topics: TopicNames,
    partitions: set[int],
    known: set[str],
    since: float,
    timeout_s: float,
    alive: Callable[[], None] | None = None,
) -> float | None:
    """Seconds from `since` (a `time.monotonic()`) until a new outcome (an image id not in
    `known`) of an image consumed from one of `partitions` is visible to a `read_committed`
    consumer; None if none came within `timeout_s`."""
    while time.monotonic() - since < timeout_s:
        outcomes = collect_outcomes(bootstrap, topics, crops=False)
        for outcome in [*outcomes.detections, *outcomes.letters]:
            if outcome.image_id not in known and source_partition(outcome) in partitions:
                return time.monotonic() - since
        if alive is not None:
            alive()
        time.sleep(0.2)
    return None


class SteadyFeed(threading.Thread):
    """Sends trap frames at a steady open-loop rate until stopped, each under a new image id
    (the frame plus a trailer a JPEG decoder ignores), so every partition keeps getting work."""

    def __init__(self, bootstrap: str, topic: str, frames: Sequence[TrapFile], rate: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.frames, self.rate = bootstrap, topic, frames, rate
        self.sent_ids: set[str] = set()
        self.stop_event = threading.Event()

    @property
    def sent(self) -> int:
        return len(self.sent_ids)

    def run(self) -> None:
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", max_request_size=FETCH_BYTES
        )
        started = time.monotonic()
        try:
            n = 0
            while not self.stop_event.is_set():
                frame = self.frames[n % len(self.frames)]
                data = frame.path.read_bytes() + f"feed-{n}".encode()
                name = f"{frame.path.stem}-{n}.jpg"
                key, value, headers = image_message(data, name, camera_id=frame.camera_id)
                producer.send(self.topic, key=key, value=value, headers=headers).get(timeout=60)
                self.sent_ids.add(image_id_of(data))
                n += 1
                self.stop_event.wait(max(0.0, started + n / self.rate - time.monotonic()))
        finally:
            producer.close(timeout=10)

    def stop(self) -> set[str]:
        """Stop sending; the ids of everything sent."""
        self.stop_event.set()
        if self.ident is not None:  # started
            self.join(30)
        return set(self.sent_ids)


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
