"""Soak: a worker and the matcher under steady load for a long time (30 minutes by default).

Not part of the test run. Starts the project's local Kafka broker (unless
KAFKA_BOOTSTRAP_SERVERS or --bootstrap names one), one `snowtrap worker` and one `snowtrap
matcher` (three individuals enrolled) as deployed, then sends synthetic trap frames
(`training.synthetic`, 640 x 480, each sent once under its own image id) at a steady open-loop
rate. Every `--sample-s` it prints one row: images sent, outcomes, the resident memory (RSS)
of the worker and of the matcher (each with its child processes), and what each still has to
do (records after its group's committed offset, read as a `read_committed` consumer would).
At the end the load stops and the table says whether memory stayed flat (RSS growth from the
first sample after warm-up to the last under 5%) and whether both backlogs went back to zero.

Usage: python bench/soak.py [--minutes 30] [--rate 2] [--bundle DIR|test] [--sample-s 60]
       [--set WORKER_SETTING=VALUE ...]
Without --bundle: the trained demo bundle (what `snowtrap demo` serves), trained first when
it is not there (about 12 minutes on 2 cores, once).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from bench.machine import machine_line  # noqa: E402
from bench.stream_kafka import bench_broker  # noqa: E402

RSS_GROWTH_LIMIT = 0.05
INDIVIDUALS = ("SL-201", "SL-202", "SL-203")


@dataclass
class Sample:
    minute: float
    sent: int
    outcomes: int
    worker_rss_mib: float
    matcher_rss_mib: float
    worker_backlog: int
    matcher_backlog: int


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants, in MiB (0 once it is gone)."""
    total_kib = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
    return total_kib / 1024


def backlog(bootstrap: str, topic: str, group: str) -> int:
    """Records (committed ones only) after the group's committed offsets: what is left to do.

    End offsets overcount under transactions (each commit marker takes an offset), so the
    records are read and counted rather than the offsets subtracted."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(  # in the group only to read its offsets: never subscribes
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=32 * 1024 * 1024,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        count = 0
        for tp in partitions:
            start = consumer.committed(tp)
            consumer.seek(tp, start if start is not None else consumer.beginning_offsets([tp])[tp])
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            if time.monotonic() > deadline:
                return -1
            for tp, records in consumer.poll(timeout_ms=500).items():
                count += sum(1 for r in records if r.offset < ends[tp])
        return count
    finally:
        consumer.close()


def resolve_bundle(given: str | None) -> tuple[Path, str]:
    if given == "test":
        from helpers.bundle import test_bundle

        return test_bundle("detector"), "tests' stand-in bundle (CAM detector)"
    if given:
        return Path(given), "given"
    from rich.console import Console

    from snowtrap.demo.settings import DemoSettings
    from snowtrap.demo.steps import find_or_train_bundle

    return find_or_train_bundle(DemoSettings(), None, Console()), "trained demo bundle"


def enroll(db_path: Path) -> None:
    from helpers.reid import leopard_crop

    from snowtrap.models.reid.matching import DEFAULT_CONFIG, extract_features
    from snowtrap.stream.matcher.database import IndividualDB

    with IndividualDB(db_path) as db:
        for individual in INDIVIDUALS:
            features = extract_features(leopard_crop(individual, 11))
            db.enroll(individual, [features], [f"{individual}.png"], DEFAULT_CONFIG)


def growth(samples: list[Sample], field: str) -> float:
    """Relative growth of a field from the first sample after warm-up to the last."""
    base = samples[1] if len(samples) > 2 else samples[0]
    first, last = getattr(base, field), getattr(samples[-1], field)
    return (last - first) / first if first else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=2.0, help="images per second sent")
    parser.add_argument("--frames", type=int, default=60, help="distinct frames cycled")
    parser.add_argument("--sample-s", type=float, default=60.0)
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a worker setting, e.g. crop_threshold=0.2 (repeatable)",
    )
    args = parser.parse_args()

    from helpers.stream_run import SteadyFeed
    from helpers.topics import collect_outcomes, consume_all
    from helpers.trap_cards import make_trap_images
    from helpers.worker_process import MatcherProcess, WorkerProcess

    from snowtrap.stream.topics import TopicNames, ensure_topics

    bundle, bundle_note = resolve_bundle(args.bundle)
    with (
        tempfile.TemporaryDirectory(prefix="snowtrap-soak-") as tmp,
        bench_broker(args.bootstrap, Path(tmp)) as (bootstrap, _),
    ):
        work = Path(tmp)
        topics = TopicNames().with_suffix(f".soak-{uuid.uuid4().hex[:8]}")
        ensure_topics(bootstrap, topics)
        print(f"generating {args.frames} frames...", flush=True)
        frames = make_trap_images(work / "frames", args.frames, seed=77)
        enroll(work / "individuals.sqlite")
        worker_group, matcher_group = (
            f"soak-w-{uuid.uuid4().hex[:6]}",
            f"soak-m-{uuid.uuid4().hex[:6]}",
        )
        worker_settings = dict(item.split("=", 1) for item in args.set)
        worker = WorkerProcess(
            bundle, bootstrap, topics, worker_group, work / "worker.log", **worker_settings
        ).start()
        matcher = MatcherProcess(
            work / "individuals.sqlite", bootstrap, topics, matcher_group, work / "matcher.log"
        ).start()
        load = SteadyFeed(bootstrap, topics.images, frames, args.rate)
        samples: list[Sample] = []
        try:
            worker.wait_ready(180)
            matcher.wait_ready(180)
            started = time.monotonic()
            load.start()
            end = started + args.minutes * 60
            print(f"load {args.rate:g} images/s for {args.minutes:g} min\n{HEADER}", flush=True)
            while True:
                time.sleep(max(0.0, min(args.sample_s, end - time.monotonic())))
                worker.check_alive()
                matcher.check_alive()
                outcomes = collect_outcomes(bootstrap, topics, crops=False)
                sample = Sample(
                    minute=(time.monotonic() - started) / 60,
                    sent=load.sent,
                    outcomes=len(outcomes.done_ids),
                    worker_rss_mib=rss_mib(worker.pid),
                    matcher_rss_mib=rss_mib(matcher.pid),
                    worker_backlog=backlog(bootstrap, topics.images, worker_group),
                    matcher_backlog=backlog(bootstrap, topics.crops, matcher_group),
                )
                samples.append(sample)
                print(row(sample), flush=True)
                if time.monotonic() >= end:
                    break
            load.stop()
            drain_started = time.monotonic()
            while True:  # the load stopped: both backlogs must go back to zero
                left = (
                    backlog(bootstrap, topics.images, worker_group),
                    backlog(bootstrap, topics.crops, matcher_group),
                )
                if left == (0, 0) or time.monotonic() - drain_started > 300:
                    break
                time.sleep(2)
            drained_s = time.monotonic() - drain_started
            outcomes = collect_outcomes(bootstrap, topics)
            identities = len(consume_all(bootstrap, topics.identities))
            print_table(
                args, bundle_note, samples, load.sent, outcomes, identities, left, drained_s
            )
            return 0 if left == (0, 0) else 1
        finally:
            load.stop()
            worker.stop()
            matcher.stop()


HEADER = (
    "| minute | sent | outcomes | worker RSS MiB | matcher RSS MiB | worker backlog "
    "| matcher backlog |\n|---:|---:|---:|---:|---:|---:|---:|"
)


def row(s: Sample) -> str:
    return (
        f"| {s.minute:.1f} | {s.sent} | {s.outcomes} | {s.worker_rss_mib:.0f} | "
        f"{s.matcher_rss_mib:.0f} | {s.worker_backlog} | {s.matcher_backlog} |"
    )


def print_table(
    args: argparse.Namespace,
    bundle_note: str,
    samples: list[Sample],
    sent: int,
    outcomes: object,
    identities: int,
    left: tuple[int, int],
    drained_s: float,
) -> None:
    done = outcomes.done_ids  # type: ignore[attr-defined]
    records = len(outcomes.detections) + len(outcomes.letters)  # type: ignore[attr-defined]
    minutes = samples[-1].minute if samples else 0.0
    worker_growth = growth(samples, "worker_rss_mib")
    matcher_growth = growth(samples, "matcher_rss_mib")
    flat = max(worker_growth, matcher_growth) < RSS_GROWTH_LIMIT
    lines = [
        "",
        f"# Soak: worker + matcher, {args.minutes:g} min at {args.rate:g} images/s",
        f"machine: {machine_line()}",
        f"inputs: bundle {bundle_note}; worker settings {args.set or 'defaults'}; "
        f"{args.frames} distinct 640x480 synthetic frames cycled, "
        f"each send a new image id; a sample every {args.sample_s:g} s",
        "",
        HEADER,
        *(row(sample) for sample in samples),
        "",
        f"- sent {sent} images, {len(done)} with an outcome, {records - len(done)} raw "
        "duplicates (read_committed)",
        f"- crops {len(outcomes.crops)}, identity records {identities} (the matcher's load)",  # type: ignore[attr-defined]
        f"- achieved / offered rate: {len(done) / max(1.0, minutes * 60) / args.rate:.2f}",
        f"- RSS growth, first sample after warm-up -> last: worker {worker_growth:+.1%}, "
        f"matcher {matcher_growth:+.1%}: " + ("flat (< 5%)" if flat else "NOT flat"),
        f"- backlog after the load stopped: worker {left[0]}, matcher {left[1]}: "
        + ("back to 0" if left == (0, 0) else "NOT back to 0")
        + f" after {drained_s:.0f} s",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
