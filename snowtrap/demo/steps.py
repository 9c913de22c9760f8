"""The demo's steps: Kafka, topics, bundle, survey, worker, upload, outcomes."""

from __future__ import annotations

import contextlib
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from snowtrap.demo.live_page import DemoLivePage
from snowtrap.demo.outcomes import OutputReader
from snowtrap.demo.settings import DemoError, DemoSettings
from snowtrap.demo.summary import show
from snowtrap.demo.survey import make_survey
from snowtrap.demo.worker_process import DemoWorker


@contextlib.contextmanager
def _kafka(settings: DemoSettings, console: Any) -> Iterator[str]:
    """The cluster to use; starts (and afterwards stops) the local broker when none is named."""
    if settings.bootstrap_servers:
        console.print(f"[bold]1. Kafka[/]: using the broker at {settings.bootstrap_servers}")
        yield settings.bootstrap_servers
        return
    from snowtrap.devtools.kafka_broker import KafkaBrokerError, LocalKafkaBroker

    broker = LocalKafkaBroker(settings.broker_dir)
    console.print(
        f"[bold]1. Kafka[/]: no KAFKA_BOOTSTRAP_SERVERS set; starting the project's own "
        f"single-node broker (data in {settings.broker_dir}, log {broker.log_file})"
    )
    started = False
    try:
        with console.status("starting Kafka (first use resolves its jars with Maven)..."):
            try:
                started = broker.start()
            except KafkaBrokerError as error:
                raise DemoError(f"the local Kafka broker did not start: {error}") from error
        word = "started" if started else "already running, reused"
        console.print(f"   broker {word} at {broker.bootstrap_servers}")
        yield broker.bootstrap_servers
    finally:
        if started:
            console.print("   stopping the broker the demo started")
            broker.stop()


def find_or_train_bundle(settings: DemoSettings, bundle: Path | None, console: Any) -> Path:
    if bundle is not None:
        if not (bundle / "manifest.json").is_file():
            raise DemoError(f"--bundle {bundle}: no manifest.json there, not a model bundle")
        console.print(f"[bold]3. Model[/]: using the bundle given, {bundle}")
        return bundle
    from snowtrap.training.bundle_stage import bundle_directory
    from snowtrap.training.config import TrainConfig
    from snowtrap.training.pipeline import TrainingRun, run_training

    config = TrainConfig.load(settings.train_config)  # its run_dir and bundle path
    directory = bundle_directory(TrainingRun(config))
    if (directory / "manifest.json").is_file():
        console.print(f"[bold]3. Model[/]: reusing the bundle an earlier demo trained, {directory}")
        return directory
    console.print(
        f"[bold]3. Model[/]: no bundle at {directory}; training one from {settings.train_config} "
        "(synthetic survey -> classifier -> LIME boxes -> detector -> ONNX; a few minutes)"
    )
    started = time.perf_counter()
    run_training(config, progress=True, log=lambda line: console.print("   " + line, markup=False))
    console.print(f"   trained in {time.perf_counter() - started:.0f} s -> {directory}")
    if not (directory / "manifest.json").is_file():
        raise DemoError(f"training finished but wrote no bundle at {directory}")
    return directory


def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    with contextlib.suppress(KafkaError, OSError):
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="snowtrap-demo")
        try:
            existing = set(admin.list_topics())
            doomed = [t for t in topics if t in existing]
            if doomed:
                admin.delete_topics(doomed, timeout_ms=10_000)
        finally:
            admin.close()


def run_demo(
    settings: DemoSettings,
    *,
    bundle: Path | None = None,
    keep_topics: bool = False,
    console: Any = None,
) -> dict[str, Any]:
    """Run the demo end to end; returns the numbers the table shows (tests read them)."""
    from rich.console import Console

    console = console or Console()
    started = time.perf_counter()
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    with _kafka(settings, console) as bootstrap:
        from snowtrap.stream.topics import TopicNames, ensure_topics

        suffix = f".demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        topics = TopicNames().with_suffix(suffix)
        try:
            ensure_topics(bootstrap, topics)
        except Exception as error:  # KafkaError, TopicProvisioningError, OSError
            raise DemoError(f"cannot create the demo's topics on {bootstrap}: {error}") from error
        console.print(f"[bold]2. Topics[/]: created {', '.join(topics)}")
        live = None
        try:
            live = start_live_page(settings, bootstrap, topics, console)
            result = _run_on_topics(settings, bundle, bootstrap, topics, suffix, console, started)
            result["live_page"] = confirm_live_page(live, settings, result, console)
            if settings.hold:
                hold_live_page(live, console)
            return result
        finally:
            if live is not None:
                live.stop()
            if not keep_topics:
                _delete_topics(bootstrap, list(topics))


def start_live_page(
    settings: DemoSettings, bootstrap: str, topics: Any, console: Any
) -> DemoLivePage:
    """`snowtrap live` on this run's topics; its address is printed before anything is sent."""
    live = DemoLivePage(bootstrap, topics, settings.run_dir / "live.log", settings.live_port)
    live.start()
    try:
        live.wait_ready(settings.live_ready_timeout_s)
    except BaseException:
        live.stop()
        raise
    console.print(
        f"   live sightings: {live.url} (open it now: crops, per-camera counts and dead "
        f"letters appear as the worker publishes them; log {live.log_path})",
        highlight=False,
    )
    return live


def confirm_live_page(
    live: DemoLivePage, settings: DemoSettings, result: dict[str, Any], console: Any
) -> dict[str, Any]:
    """Wait until the page counts every outcome of the run; say what it shows."""
    snapshot = live.wait_until_shown(
        settings.camera_id, len(result["detected"]), len(result["dead"]), timeout_s=60
    )
    shown = [s for s in snapshot["sightings"] if s["camera_id"] == settings.camera_id]
    console.print(
        f"[bold]Live page[/]: {live.url} shows {len(shown)} of the newest leopard crops from "
        f"{settings.camera_id}, its {len(result['detected'])} images and "
        f"{snapshot['deadletters']['total']} dead letter(s)",
        highlight=False,
    )
    return {"url": live.url, "sightings": shown, "snapshot": snapshot}


def hold_live_page(live: DemoLivePage, console: Any) -> None:
    """Keep the page (and the broker and topics) up until Ctrl-C."""
    console.print(f"   --hold: the live page stays up at {live.url}; Ctrl-C ends the demo")
    try:
        while True:
            live.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("   stopping the live page")


def _run_on_topics(
    settings: DemoSettings,
    bundle: Path | None,
    bootstrap: str,
    topics: Any,
    suffix: str,
    console: Any,
    started: float,
) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from snowtrap.stream.uploader import Uploader, UploaderSettings

    bundle_dir = find_or_train_bundle(settings, bundle, console)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    model = f"{manifest.get('name', bundle_dir.name)} {manifest.get('version', '')}".strip()

    console.print(
        f"[bold]4. Images[/]: synthesising a survey of {settings.images} trap images "
        f"(seed {settings.seed}) with exact boxes, plus a corrupt JPEG and a non-image"
    )
    with console.status("rendering synthetic camera-trap frames..."):
        survey = make_survey(settings)
    leopard_truth = sum(1 for boxes in survey.truth.values() if boxes)
    console.print(
        f"   {survey.folder}: {leopard_truth} of {len(survey.truth)} frames show a leopard"
    )

    worker_log = settings.run_dir / "worker.log"
    worker = DemoWorker(bundle_dir, bootstrap, topics, f"snowtrap-demo{suffix}", worker_log)
    console.print(
        f"[bold]5. Worker[/]: starting `snowtrap worker --bundle {bundle_dir}` (log {worker_log})"
    )
    reader = None
    try:
        worker.start()
        with console.status("waiting for the worker to load the models and join its group..."):
            ready_at = time.perf_counter()
            worker.wait_ready(settings.worker_ready_timeout_s)
        console.print(
            f"   ready in {time.perf_counter() - ready_at:.1f} s "
            f"(metrics on http://127.0.0.1:{worker.metrics_port}/metrics)"
        )

        ledger = settings.run_dir / "uploads" / f"ledger{suffix}.sqlite"
        console.print(
            f"[bold]6. Upload[/]: the camera-station uploader sends the card to {topics.images} "
            f"as camera {settings.camera_id!r} (ledger {ledger})"
        )
        upload_settings = UploaderSettings(
            bootstrap_servers=bootstrap,
            topics=topics,
            camera_id=settings.camera_id,
            station_id=settings.station_id,
            ledger_path=ledger,
            create_topics=False,
            progress=True,
        )
        upload_started = time.time()
        summary = Uploader(upload_settings).run(survey.upload_paths)
        if summary.broker_error or summary.failed:
            raise DemoError(
                f"the upload did not complete: {summary.broker_error or summary.failed[:3]}"
            )
        sent = {o.image_id: o for o in summary.sent if o.image_id}
        console.print(
            f"   {len(sent)} images sent and acknowledged; {len(summary.rejected)} file(s) "
            "rejected at the station: "
            + "; ".join(f"{o.path.name} ({o.reason})" for o in summary.rejected)
        )

        console.print(
            f"[bold]7. Results[/]: reading {topics.detections} and {topics.deadletter} until "
            f"each of the {len(sent)} images has its outcome"
        )
        reader = OutputReader(bootstrap, topics)
        deadline = time.monotonic() + settings.collect_timeout_s
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("images with an outcome", total=len(sent))
            while not set(sent) <= reader.results.done:
                if time.monotonic() > deadline:
                    missing = set(sent) - reader.results.done
                    raise DemoError(
                        f"{len(missing)} of {len(sent)} images still have no detection record "
                        f"or dead letter after {settings.collect_timeout_s:.0f} s; the worker "
                        f"log is {worker_log}:\n{worker.log_tail(15)}"
                    )
                worker.check_alive()
                reader.poll()
                progress.update(task, completed=len(set(sent) & reader.results.done))
        reader.read_to_end()
        results = reader.results
    finally:
        if reader is not None:
            reader.close()
        console.print("[bold]8. Stopping the worker[/] (SIGTERM)")
        code = worker.stop()
        if code not in (0, None, -signal.SIGTERM):
            console.print(f"   [yellow]the worker exited with code {code}; see {worker_log}[/]")

    return show(settings, survey, summary, sent, results, model, upload_started, started, console)
