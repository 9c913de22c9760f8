"""One stream bench scenario: fresh topics, worker subprocesses (as deployed), a feed, outcomes.

A scenario starts its workers (`snowtrap worker`, one consumer group), waits until every one
holds its partitions, then feeds the images topic one of three ways:

- `burst`: a plain producer sends every frame as fast as the broker takes them, so the
  workers always have a backlog: their saturation throughput;
- `steady`: one frame every 1/rate s (open loop), for latency under a load they can carry;
- `uploader`: the real uploader sends the card in one burst (a station dumping an SD card),
  on the same machine: end to end.

Throughput is the steady-state rate of the outcomes' Kafka timestamps (the middle 80% of the
records, so start-up and the last partial batches do not count); latency is `sent-at` -> the
outcome becoming visible to a read_committed consumer.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from helpers.worker_process import WorkerProcess, metric_by, metric_total

from bench.stream_frames import BenchFrame
from bench.stream_kafka import Seen, Watcher, preload, send_steady
from snowtrap.stream.contracts import image_id_of
from snowtrap.stream.topics import TopicNames, ensure_topics

Feed = Literal["burst", "steady", "uploader"]
STAGES = ("decode", "classify", "detect", "crop", "produce")


@dataclass
class Scenario:
    name: str
    feed: Feed
    workers: int = 1
    partitions: int = 2
    rate: float | None = None
    """Images/s of a steady feed."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Worker settings (SNOWTRAP_* env) on top of the bench's."""


@dataclass
class ScenarioResult:
    scenario: Scenario
    seen: list[Seen]
    metrics: list[dict[str, dict[tuple[tuple[str, str], ...], float]]]
    sent_rate: float | None = None
    worker_cpu_s: float = float("nan")
    """CPU seconds the workers used (all threads) from the first send to the last outcome."""

    @property
    def cpu_ms_per_image(self) -> float:
        return self.worker_cpu_s * 1000.0 / self.images if self.images else float("nan")

    @property
    def images(self) -> int:
        return len(self.seen)

    @property
    def rate(self) -> float:
        """Steady-state outcomes/s from the records' Kafka timestamps (middle 80%)."""
        return steady_rate([s.produced_at for s in self.seen])

    @property
    def end_to_end_rate(self) -> float:
        """All images over first send -> last outcome visible."""
        first = min(s.sent_at for s in self.seen if s.sent_at is not None)
        return self.images / (max(s.visible_at for s in self.seen) - first)

    def latency_s(self, q: float) -> float:
        values = [s.visible_at - s.sent_at for s in self.seen if s.sent_at is not None]
        return float(np.percentile(values, q)) if values else float("nan")

    @property
    def leopard_outcomes(self) -> int:
        return sum(1 for s in self.seen if s.leopard)

    @property
    def detector_runs(self) -> int:
        return sum(1 for s in self.seen if s.detector_ran)

    @property
    def deadletters(self) -> int:
        return sum(1 for s in self.seen if s.kind == "deadletter")

    def total(self, name: str, **labels: str) -> float:
        return sum(metric_total(m, name, **labels) for m in self.metrics)

    @property
    def crops(self) -> int:
        return int(self.total("snowtrap_crops_published_total"))

    def stage_ms_per_image(self) -> dict[str, float]:
        """Worker seconds per stage (all batches) over the images: the cost breakdown."""
        sums: dict[str, float] = {}
        for metrics in self.metrics:
            for stage, value in metric_by(
                metrics, "snowtrap_stage_latency_seconds_sum", "stage"
            ).items():
                sums[stage] = sums.get(stage, 0.0) + value
        return {stage: sums[stage] * 1000.0 / self.images for stage in STAGES if stage in sums}

    @property
    def mean_batch(self) -> float:
        count = self.total("snowtrap_batch_size_count")
        return self.total("snowtrap_batch_size_sum") / count if count else float("nan")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_rate(timestamps: Sequence[float]) -> float:
    ordered = sorted(timestamps)
    if len(ordered) < 10:
        return float("nan")
    low, high = len(ordered) // 10, len(ordered) - 1 - len(ordered) // 10
    span = ordered[high] - ordered[low]
    return (high - low) / span if span > 0 else float("nan")


@contextlib.contextmanager
def running_workers(
    bundle: Path, bootstrap: str, topics: TopicNames, scenario: Scenario, work: Path
) -> Iterator[list[WorkerProcess]]:
    """The scenario's workers, started together, each holding its share of partitions."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    settings = {"batch_size": 16, "log_level": "warning", **scenario.settings}
    workers = [
        WorkerProcess(bundle, bootstrap, topics, group, work / f"{group}-{i}.log", **settings)
        for i in range(scenario.workers)
    ]
    with contextlib.ExitStack() as stack:
        for worker in workers:
            stack.enter_context(worker.start())
        deadline = time.monotonic() + 180
        while True:  # every worker ready and the partitions spread (rebalance settled)
            shares = [w.wait_ready(timeout_s=180).get("partitions", 1) for w in workers]
            if all(share >= 1 for share in shares) and sum(shares) == scenario.partitions:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"partitions never spread over the workers: {shares}")
            time.sleep(0.5)
        yield workers


def run_scenario(
    scenario: Scenario,
    frames: Sequence[BenchFrame],
    bundle: Path,
    bootstrap: str,
    work: Path,
    upload: Any = None,
    timeout_s: float = 600.0,
) -> ScenarioResult:
    """Run one scenario on fresh topics; `upload(topics) -> image ids` for the uploader feed."""
    topics = TopicNames().with_suffix(f".bench-{uuid.uuid4().hex[:8]}")
    ensure_topics(bootstrap, topics, partitions_by_role={"images": scenario.partitions})
    sent_rate = None
    with (
        running_workers(bundle, bootstrap, topics, scenario, work) as workers,
        Watcher(bootstrap, topics) as watcher,
    ):
        cpu_before = sum(process_cpu_seconds(worker.pid) for worker in workers)
        if scenario.feed == "uploader":
            ids = set(upload(topics))
        else:
            ids = {image_id_of(frame.jpeg) for frame in frames}
            if scenario.feed == "burst":
                preload(bootstrap, topics.images, frames, scenario.partitions)
            else:
                assert scenario.rate is not None
                sent_rate = send_steady(
                    bootstrap, topics.images, frames, scenario.partitions, scenario.rate
                )

        def alive() -> None:
            for worker in workers:
                worker.check_alive()

        seen = watcher.wait_for(ids, timeout_s, alive)
        cpu_s = sum(process_cpu_seconds(worker.pid) for worker in workers) - cpu_before
        time.sleep(0.5)  # the last batch's metrics are counted after its produce
        metrics = [worker.metrics() for worker in workers]
    return ScenarioResult(scenario, seen, metrics, sent_rate, cpu_s)
