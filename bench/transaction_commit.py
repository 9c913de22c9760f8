"""The worker's exactly-once commit alone: one batch's transactions, linger 0 vs 5 ms.

A worker batch of 16 frames read from 2 partitions ends in `PartitionTransactions.commit_batch`:
per input partition begin, send the outputs (detection records, a crop), add the group's
offsets, commit. The worker waits for it before it takes the next batch, so its wall time is
the worker's "produce" stage. This bench times that call against a local broker with the
producers as shipped (`linger_ms` 0) and with the 5 ms linger they had before, alternating
rounds in one run so the ratio holds on a noisy machine.

Usage: python bench/transaction_commit.py [--batches 60] [--rounds 3] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT)]

import numpy as np  # noqa: E402
from faust.types import TP  # noqa: E402

from bench.machine import describe_machine  # noqa: E402
from bench.stream_kafka import bench_broker  # noqa: E402
from snowtrap.stream.runtime.settings import StreamProcessSettings  # noqa: E402
from snowtrap.stream.runtime.transactions import Output, PartitionTransactions  # noqa: E402
from snowtrap.stream.topics import TopicNames, ensure_topics  # noqa: E402

FRAMES = 16
TOPICS = TopicNames().with_suffix(".bench-commit")
RECORD = (TOPICS.detections, b"camera", b"r" * 1500, [("content-type", b"application/json")])
CROP = (TOPICS.crops, b"camera", b"c" * 25_000, [("content-type", b"image/jpeg")])


class LingeringTransactions(PartitionTransactions):
    """The shipped producers with another `linger_ms` (the peer of the comparison)."""

    def __init__(self, settings: StreamProcessSettings, linger_ms: int) -> None:
        super().__init__(settings)
        self.linger_ms = linger_ms

    def producer_config(self, tp: TP) -> dict[str, Any]:
        return {**super().producer_config(tp), "linger_ms": self.linger_ms}


async def time_batches(
    bootstrap: str, linger_ms: int | None, batches: int, tag: str
) -> list[float]:
    """Milliseconds per `commit_batch` of a 16-frame batch from 2 partitions (first 5 dropped:
    producers and coordinator warming up)."""
    settings = StreamProcessSettings(
        bootstrap_servers=bootstrap, group_id=f"bench-commit-{tag}", client_id=f"bench-{tag}"
    )
    transactions = (
        PartitionTransactions(settings)
        if linger_ms is None
        else LingeringTransactions(settings, linger_ms)
    )
    partitions = [TP(TOPICS.images, 0), TP(TOPICS.images, 1)]
    await transactions.assign(partitions)
    took = []
    try:
        for batch in range(batches + 5):
            offsets = [(partitions[i % 2], batch * FRAMES // 2 + i // 2) for i in range(FRAMES)]
            outputs: list[tuple[TP, Output]] = [(partitions[i % 2], RECORD) for i in range(FRAMES)]
            outputs += [(partitions[0], CROP), (partitions[1], CROP)]
            started = time.perf_counter()
            await transactions.commit_batch(offsets, outputs)
            took.append((time.perf_counter() - started) * 1000)
    finally:
        await transactions.close()
    return took[5:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=60, help="timed batches per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers")
    args = parser.parse_args()
    variants = {"as shipped (linger 0)": None, "linger 5 ms (before)": 5}
    results: dict[str, list[float]] = {name: [] for name in variants}
    with (
        tempfile.TemporaryDirectory(prefix="snowtrap-bench-") as tmp,
        bench_broker(args.bootstrap, Path(tmp)) as (bootstrap, origin),
    ):
        ensure_topics(bootstrap, TOPICS, partitions_by_role={"images": 2})
        for round_ in range(args.rounds):
            for index, (name, linger) in enumerate(variants.items()):
                tag = f"{round_}-{index}"
                results[name] += asyncio.run(time_batches(bootstrap, linger, args.batches, tag))
    print("\nexactly-once commit of one worker batch (PartitionTransactions.commit_batch)")
    for key, value in describe_machine().items():
        print(f"  {key:26} {value}")
    print(f"  {'broker':26} {origin}")
    print(
        f"  {'batch':26} {FRAMES} frames from 2 partitions: {FRAMES} records of "
        f"{len(RECORD[2])} B + 2 crops of {len(CROP[2]) // 1000} kB, 2 transactions"
    )
    print(f"  {'runs':26} {args.rounds} alternating rounds x {args.batches} batches each\n")
    print(f"{'producers':24} {'p50 ms':>7} {'p90 ms':>7} {'ms/frame':>8}")
    for name, took in results.items():
        p50, p90 = np.percentile(took, [50, 90])
        print(f"{name:24} {p50:7.1f} {p90:7.1f} {p50 / FRAMES:8.2f}")
    shipped, before = (float(np.median(results[name])) for name in variants)
    print(f"\nlinger 5 / linger 0, median batch commit: {before / shipped:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
