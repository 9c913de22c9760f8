"""Stream throughput and end-to-end latency: camera card -> uploader -> worker -> detections.

Starts the project's local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS or --bootstrap names
one), creates unique topics, writes N synthetic trap frames of the given size and leopard
rate, starts `snowtrap worker` as a subprocess (as deployed) and waits until it is ready,
then uploads the card with the real uploader in one burst (a station dumping an SD card) and
waits until every image has its detection record or dead letter.

Reported: the machine, the inputs, images/s (first upload -> last outcome, and the worker's
own rate from its first to its last record), end-to-end latency percentiles (the uploader's
`sent-at` header -> the Kafka timestamp of the detection record, so queueing behind the
burst is included), and from the worker's /metrics its batch sizes and per-stage times.

Usage: python bench/stream_throughput.py [--images 300] [--width 1280] [--height 960]
       [--leopard-rate 0.1] [--bundle DIR] [--batch-size 16]
Without --bundle the cached test bundle of the tests is used (CAM stand-in detector).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from helpers.frames import make_frames, write_frames  # noqa: E402
from helpers.topics import collect_outcomes, consume_all, wait_for_outcomes  # noqa: E402
from helpers.worker_process import WorkerProcess, metric_by, metric_total  # noqa: E402

from bench.machine import describe_machine  # noqa: E402
from snowtrap.stream.topics import TopicNames, ensure_topics  # noqa: E402
from snowtrap.stream.uploader import Uploader, UploaderSettings  # noqa: E402


@contextlib.contextmanager
def broker(bootstrap: str | None, workdir: Path) -> Iterator[tuple[str, str]]:
    """(bootstrap servers, where they came from)."""
    given = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if given:
        yield given, "given"
        return
    from snowtrap.devtools.kafka_broker import LocalKafkaBroker

    local = LocalKafkaBroker(workdir / "kafka")
    local.start()
    try:
        yield local.bootstrap_servers, "local broker started by the bench"
    finally:
        local.stop()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--leopard-rate", type=float, default=0.1)
    parser.add_argument("--night-rate", type=float, default=0.25)
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle directory")
    parser.add_argument("--batch-size", type=int, default=16, help="worker batch size")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait")
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="upload everything before the worker starts (measures the worker alone; "
        "latency then includes the wait in the topic)",
    )
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console()
    bundle = args.bundle
    if bundle is None:
        from helpers.bundle import test_bundle

        bundle = test_bundle("detector")

    with (
        tempfile.TemporaryDirectory(prefix="snowtrap-bench-") as tmp,
        broker(args.bootstrap, Path(tmp)) as (bootstrap, broker_source),
    ):
        work = Path(tmp)
        started = time.perf_counter()
        frames = make_frames(
            args.images,
            args.seed,
            leopard_rate=args.leopard_rate,
            night_rate=args.night_rate,
            size=(args.width, args.height),
        )
        write_frames(frames, work / "card")
        megabytes = sum(len(frame.jpeg) for frame in frames) / 1e6
        console.print(
            f"generated {len(frames)} frames ({megabytes:.1f} MB) in "
            f"{time.perf_counter() - started:.1f} s"
        )

        topics = TopicNames().with_suffix(f".bench-{uuid.uuid4().hex[:8]}")
        ensure_topics(bootstrap, topics)
        worker = WorkerProcess(
            bundle,
            bootstrap,
            topics,
            f"bench-{uuid.uuid4().hex[:8]}",
            work / "worker.log",
            batch_size=args.batch_size,
            log_level="warning",
        )
        settings = UploaderSettings(
            bootstrap_servers=bootstrap,
            topics=topics,
            camera_id="bench-cam",
            station_id="bench-station",
            ledger_path=work / "ledger.sqlite",
            progress=False,
            create_topics=False,
        )

        def upload() -> tuple[set[str], float]:
            began = time.time()
            summary = Uploader(settings).run([work / "card"])
            sent = {outcome.image_id for outcome in summary.sent if outcome.image_id}
            if summary.exit_code != 0 or len(sent) != len(frames):
                raise SystemExit(f"upload incomplete: exit {summary.exit_code}, {len(sent)} sent")
            return sent, time.time() - began

        if args.backlog:  # the whole card waits in the topic before the worker starts
            ids, upload_s = upload()
        with worker.start():
            worker.wait_ready(timeout_s=120)
            if not args.backlog:  # the card arrives while the worker runs
                ids, upload_s = upload()
            outcomes = wait_for_outcomes(
                bootstrap, topics, ids, timeout_s=args.timeout, alive=worker.check_alive
            )
            metrics = worker.metrics()
            deadline = time.monotonic() + 10
            while metric_total(metrics, "snowtrap_images_processed_total") < len(ids):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
                metrics = worker.metrics()
        records = consume_all(bootstrap, topics.detections)
        outcomes = collect_outcomes(bootstrap, topics, crops=True)

    sent_at = {r.image_id: r.sent_at for r in outcomes.detections}
    record_times = [record.timestamp / 1000.0 for record in records]
    latencies = [
        record.timestamp / 1000.0 - sent_at[record.key.decode()]
        for record in records
        if record.key and record.key.decode() in sent_at
    ]
    first_sent = min(sent_at.values())
    last_outcome = max(record_times)
    total_s = last_outcome - first_sent
    worker_s = max(record_times) - min(record_times) if len(record_times) > 1 else float("nan")

    table = Table(title="snowtrap stream throughput (uploader -> worker -> trap.detections)")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for name, value in describe_machine().items():
        table.add_row(name, value)
    table.add_section()
    table.add_row("broker", f"{bootstrap} ({broker_source})")
    table.add_row("bundle", f"{bundle.name}")
    table.add_row(
        "images",
        f"{len(frames)} x {args.width}x{args.height} JPEG, {megabytes / len(frames):.2f} MB each",
    )
    table.add_row("leopard / night rate", f"{args.leopard_rate:.2f} / {args.night_rate:.2f}")
    table.add_row("worker batch size (max)", str(args.batch_size))
    table.add_row(
        "mode",
        "backlog: card uploaded, then worker started"
        if args.backlog
        else "live: card uploaded in one burst to a running worker",
    )
    table.add_section()
    table.add_row("upload (burst) time", f"{upload_s:.2f} s ({len(ids) / upload_s:.1f} images/s)")
    table.add_row("first send -> last record", f"{total_s:.2f} s")
    table.add_row("throughput, end to end", f"{len(ids) / total_s:.2f} images/s")
    table.add_row(
        "throughput, worker (first -> last record)", f"{(len(records) - 1) / worker_s:.2f} images/s"
    )
    for q in (50, 95, 99):
        table.add_row(f"latency p{q} (sent-at -> record)", f"{percentile(latencies, q):.2f} s")
    table.add_row("latency max", f"{max(latencies):.2f} s" if latencies else "-")
    table.add_section()
    outcome_counts = metric_by(metrics, "snowtrap_images_processed_total", "outcome")
    table.add_row(
        "outcomes: leopard / none / dead",
        " / ".join(
            f"{outcome_counts.get(k, 0):.0f}" for k in ("leopard", "no_leopard", "deadletter")
        ),
    )
    table.add_row(
        "crops published", f"{metric_total(metrics, 'snowtrap_crops_published_total'):.0f}"
    )
    batches = metric_total(metrics, "snowtrap_batch_size_count")
    if batches:
        mean = metric_total(metrics, "snowtrap_batch_size_sum") / batches
        table.add_row("worker batches (count, mean size)", f"{batches:.0f}, {mean:.1f}")
        buckets = metrics.get("snowtrap_batch_size_bucket", {})
        cumulative = sorted((float(dict(labels)["le"]), value) for labels, value in buckets.items())
        previous, shown = 0.0, []
        for upper, count in cumulative:
            if count > previous and upper != float("inf"):
                shown.append(f"<={upper:.0f}: {count - previous:.0f}")
            previous = count
        table.add_row("batch size histogram", ", ".join(shown))
    stage_sum = metric_by(metrics, "snowtrap_stage_latency_seconds_sum", "stage")
    stage_count = metric_by(metrics, "snowtrap_stage_latency_seconds_count", "stage")
    for stage in ("decode", "classify", "detect", "crop", "produce"):
        if stage_count.get(stage):
            per_batch = stage_sum[stage] / stage_count[stage]
            table.add_row(
                f"stage {stage}: mean per batch / total",
                f"{per_batch * 1000:.0f} ms / {stage_sum[stage]:.1f} s",
            )
    console.print(table)
    missing = ids - outcomes.done_ids
    if missing or outcomes.detected_ids & outcomes.dead_ids:
        console.print(f"[red]invariant broken: {len(missing)} images without an outcome")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
