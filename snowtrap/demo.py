"""`snowtrap demo`: the whole pipeline on one machine, from an empty checkout to a report.

What it does, saying so at each step:

1. Kafka: the broker named by `KAFKA_BOOTSTRAP_SERVERS` (or `SNOWTRAP_BOOTSTRAP_SERVERS`, or
   `--bootstrap-servers`), else the project's own single-node broker (`devtools.kafka_broker`)
   in `.cache/kafka/demo`, stopped again at the end if the demo started it;
2. topics with a suffix unique to this run, so runs never see each other's messages;
3. a model bundle: `--bundle DIR`, else the one a previous demo trained
   (`runs/demo/bundle/snowtrap-leopard-demo`), else it trains one (`configs/demo.yaml`, the
   small synthetic run: a few minutes on 2 cores);
4. a synthetic camera-trap survey with exact ground-truth boxes, plus one corrupt JPEG and one
   file that is not an image;
5. `snowtrap worker --bundle DIR` as a subprocess (as deployed: configured by `SNOWTRAP_*`),
   waiting for its `/readyz`; its log goes to `runs/demo/worker.log`;
6. the real uploader (`stream.uploader`) sends the survey to `trap.images`;
7. it reads `trap.detections` and `trap.deadletter` until every uploaded image has its
   outcome, and counts the crops on `trap.crops`;
8. a table of what was found and `runs/demo/report.html`: every image with the predicted boxes
   (red) and the ground truth (green), and the dead letters with their reasons.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from snowtrap.core.settings import SnowtrapSettings

LEOPARD_SPECIES = "snow_leopard"
DEMO_CAMERA = "demo-cam"
DEMO_STATION = "demo-station"
THUMBNAIL_WIDTH = 320


class DemoError(RuntimeError):
    """A step of the demo could not be done; the message says which and why."""


class DemoSettings(SnowtrapSettings):
    """What `snowtrap demo` reads (command-line flags override these)."""

    model_config = SettingsConfigDict(
        env_prefix="SNOWTRAP_DEMO_",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "SNOWTRAP_BOOTSTRAP_SERVERS"),
    )
    """An existing Kafka cluster; None: the demo starts the project's local broker."""
    broker_dir: Path = Path(".cache/kafka/demo")
    run_dir: Path = Path("runs/demo")
    train_config: Path = Path("configs/demo.yaml")
    images: int = Field(default=60, ge=1)
    seed: int = 7
    width: int = 480
    height: int = 360
    camera_id: str = DEMO_CAMERA
    station_id: str = DEMO_STATION
    worker_ready_timeout_s: float = Field(default=180.0, gt=0)
    collect_timeout_s: float = Field(default=300.0, gt=0)


# --- the worker subprocess ------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DemoWorker:
    """`snowtrap worker --bundle DIR` in a child process, configured only through SNOWTRAP_*."""

    def __init__(
        self, bundle: Path, bootstrap: str, topics: Any, group_id: str, log_path: Path
    ) -> None:
        self.bundle = bundle
        self.log_path = log_path
        self.metrics_port = _free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWTRAP_")}
        self.env.update(
            {
                "SNOWTRAP_BOOTSTRAP_SERVERS": bootstrap,
                "SNOWTRAP_GROUP_ID": group_id,
                "SNOWTRAP_METRICS_HOST": "127.0.0.1",
                "SNOWTRAP_METRICS_PORT": str(self.metrics_port),
                "SNOWTRAP_CREATE_TOPICS": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        for role, name in topics.items():
            self.env[f"SNOWTRAP_TOPICS__{role.upper()}"] = name
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "snowtrap.cli", "worker", "--bundle", str(self.bundle)]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which then stops the worker
        )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(
                f"the worker exited with code {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """Poll /readyz until the worker has loaded the bundle and holds its partitions."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    body: dict[str, Any] = json.loads(response.read())
                    return body
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}"
            except (OSError, ValueError) as error:
                last = repr(error)
            time.sleep(0.5)
        raise DemoError(
            f"the worker was not ready after {timeout_s:.0f} s ({last}); "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the worker commits and leaves its group), SIGKILL if it hangs."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- the survey -----------------------------------------------------------------------------


@dataclass
class Survey:
    """The synthetic images on disk, their ground truth, and the two bad files."""

    folder: Path
    upload_paths: list[Path]
    truth: dict[Path, list[list[float]]]
    """Absolute image path -> ground-truth leopard boxes, pixels [x, y, w, h]."""
    sizes: dict[Path, tuple[int, int]]
    bad_files: list[Path]


def make_survey(settings: DemoSettings) -> Survey:
    from snowtrap.training.synthetic import write_dataset

    folder = settings.run_dir / f"images-{settings.seed}"
    shutil.rmtree(folder, ignore_errors=True)
    dataset = write_dataset(
        folder / "cameras",
        settings.images,
        settings.seed,
        width=settings.width,
        height=settings.height,
        leopard_fraction=0.5,
    )
    coco = json.loads(dataset.annotations_path.read_text())
    leopard_ids = {c["id"] for c in coco["categories"] if c["name"] == LEOPARD_SPECIES}
    by_id = {image["id"]: image for image in coco["images"]}
    truth: dict[Path, list[list[float]]] = {}
    sizes: dict[Path, tuple[int, int]] = {}
    for image in coco["images"]:
        path = (dataset.folder / image["file_name"]).absolute()
        truth[path] = []
        sizes[path] = (int(image["width"]), int(image["height"]))
    for annotation in coco["annotations"]:
        if annotation.get("category_id") in leopard_ids and "bbox" in annotation:
            image = by_id[annotation["image_id"]]
            truth[(dataset.folder / image["file_name"]).absolute()].append(annotation["bbox"])
    extras = folder / "extras"
    extras.mkdir(parents=True)
    first = sorted(truth)[0].read_bytes()
    corrupt = extras / "corrupt-card-write.jpg"
    corrupt.write_bytes(first[: len(first) // 3])  # a JPEG cut short, as a bad SD write does
    not_image = extras / "station-notes.txt"
    not_image.write_text("battery 61%, lens cleaned, card swapped\n")
    cameras = sorted(p for p in dataset.folder.iterdir() if p.is_dir())
    return Survey(
        folder=folder,
        upload_paths=[*cameras, extras],
        truth=truth,
        sizes=sizes,
        bad_files=[corrupt.absolute(), not_image.absolute()],
    )


# --- reading the results --------------------------------------------------------------------


@dataclass
class Results:
    detections: dict[str, Any] = field(default_factory=dict)
    """Image id -> DetectionRecord."""
    letters: dict[str, Any] = field(default_factory=dict)
    """Image id -> DeadLetter."""
    crops: int = 0
    last_outcome_at: float = 0.0

    @property
    def done(self) -> set[str]:
        return set(self.detections) | set(self.letters)


class OutputReader:
    """One consumer over the detections, dead-letter and crops topics, from their start."""

    def __init__(self, bootstrap: str, topics: Any) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topics = topics
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=32 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        self.partitions = [
            TopicPartition(topic, p)
            for topic in (topics.detections, topics.deadletter, topics.crops)
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self.results = Results()

    def poll(self, timeout_ms: int = 500) -> None:
        from snowtrap.stream.contracts import parse_deadletter_message, parse_detection_message

        for partition, records in self.consumer.poll(timeout_ms=timeout_ms).items():
            for record in records:
                if partition.topic == self.topics.detections:
                    detection = parse_detection_message(record.value)
                    self.results.detections[detection.image_id] = detection
                elif partition.topic == self.topics.deadletter:
                    letter = parse_deadletter_message(record.key, record.value, record.headers)
                    self.results.letters[letter.image_id] = letter
                else:
                    self.results.crops += 1
                    continue
                self.results.last_outcome_at = time.time()

    def read_to_end(self, settle_s: float = 1.5) -> None:
        """Read until the end offsets stop moving (crops may trail their detection record)."""
        previous: dict[Any, int] | None = None
        while True:
            ends = self.consumer.end_offsets(self.partitions)
            if ends == previous:
                return
            while any(self.consumer.position(tp) < ends[tp] for tp in self.partitions):
                self.poll(200)
            previous = ends
            time.sleep(settle_s)

    def close(self) -> None:
        self.consumer.close()


# --- the report -----------------------------------------------------------------------------


@dataclass
class ImageRow:
    path: Path
    file_name: str
    image_id: str | None
    truth_boxes: list[list[float]]
    size: tuple[int, int]
    detection: Any = None
    letter: Any = None
    upload_note: str = ""


def _thumbnail(row: ImageRow) -> str | None:
    """A base64 JPEG of the image with ground truth (green) and predictions (red) drawn on."""
    from PIL import Image, ImageDraw

    try:
        with Image.open(row.path) as opened:
            image = opened.convert("RGB")
    except Exception:  # the corrupt file: no thumbnail, the dead letter says why
        return None
    width, height = image.size
    scale = THUMBNAIL_WIDTH / width
    image = image.resize((THUMBNAIL_WIDTH, max(1, round(height * scale))))
    draw = ImageDraw.Draw(image)
    for x, y, w, h in row.truth_boxes:
        draw.rectangle(
            [x * scale, y * scale, (x + w) * scale, (y + h) * scale], outline=(0, 220, 0), width=2
        )
    if row.detection is not None:
        for detection in row.detection.detections:
            x, y, w, h = detection.bbox
            box = [x * THUMBNAIL_WIDTH, y * image.height, (x + w) * THUMBNAIL_WIDTH]
            box.append((y + h) * image.height)
            draw.rectangle(box, outline=(255, 30, 30), width=2)
            label = f"{detection.conf:.2f}"
            text_y = max(0.0, box[1] - 11)
            draw.rectangle(
                [box[0], text_y, box[0] + 6 * len(label) + 4, text_y + 11], fill=(255, 30, 30)
            )
            draw.text((box[0] + 2, text_y), label, fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return base64.b64encode(out.getvalue()).decode("ascii")


def write_report(
    path: Path,
    rows: list[ImageRow],
    summary: list[tuple[str, str]],
    rejected: list[tuple[str, str]],
) -> None:
    cards = []
    for row in rows:
        picture = _thumbnail(row)
        if row.detection is not None:
            d = row.detection
            leopards = len(d.detections)
            verdict = f"{leopards} leopard box(es)" if leopards else "no box"
            if not d.detector_ran:
                verdict = "below the gate"
            caption = (
                f"P(leopard) {d.leopard_score:.2f} &middot; {verdict} &middot; "
                f"truth: {len(row.truth_boxes)}"
            )
            status = "leopard" if d.detector_ran else "empty"
        elif row.letter is not None:
            caption = (
                f"dead letter: <b>{html.escape(row.letter.reason)}</b> "
                f"({html.escape(row.letter.stage)})"
            )
            status = "dead"
        else:
            caption = html.escape(row.upload_note or "no outcome")
            status = "dead"
        image_html = (
            f'<img src="data:image/jpeg;base64,{picture}" alt="{html.escape(row.file_name)}">'
            if picture
            else '<div class="noimg">cannot be decoded</div>'
        )
        cards.append(
            f'<figure class="{status}">{image_html}<figcaption>'
            f"<code>{html.escape(row.file_name)}</code><br>{caption}</figcaption></figure>"
        )
    letters = [
        f"<tr><td><code>{html.escape(row.file_name)}</code></td>"
        f"<td>{html.escape(row.letter.reason)}</td><td>{html.escape(row.letter.stage)}</td>"
        f"<td>{html.escape(row.letter.error[:300])}</td></tr>"
        for row in rows
        if row.letter is not None
    ]
    rejected_rows = [
        f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(reason)}</td></tr>"
        for name, reason in rejected
    ]
    summary_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary
    )
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>snowtrap demo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; width: {THUMBNAIL_WIDTH}px; font-size: 12px; border: 3px solid #ddd; }}
figure.leopard {{ border-color: #e33; }} figure.dead {{ border-color: #999; background: #f4f4f4; }}
figure img {{ display: block; width: 100%; }} figcaption {{ padding: 4px; }}
.noimg {{ height: 120px; display: flex; align-items: center; justify-content: center; }}
.key span {{ padding: 0 6px; color: #fff; }}
</style></head><body>
<h1>snowtrap demo</h1>
<table>{summary_rows}</table>
<p class="key"><span style="background:#e33">predicted box (confidence)</span>
<span style="background:#0a0">ground truth</span></p>
<h2>Dead letters</h2>
<table><tr><th>file</th><th>reason</th><th>stage</th><th>error</th></tr>{"".join(letters)}</table>
<h2>Not sent by the uploader</h2>
<table><tr><th>file</th><th>reason</th></tr>{"".join(rejected_rows)}</table>
<h2>Images</h2>
<div class="grid">{"".join(cards)}</div>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document)


# --- the steps ------------------------------------------------------------------------------


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
        try:
            return _run_on_topics(settings, bundle, bootstrap, topics, suffix, console, started)
        finally:
            if not keep_topics:
                _delete_topics(bootstrap, list(topics))


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

    return _show(settings, survey, summary, sent, results, model, upload_started, started, console)


def _show(
    settings: DemoSettings,
    survey: Survey,
    summary: Any,
    sent: dict[str, Any],
    results: Results,
    model: str,
    upload_started: float,
    started: float,
    console: Any,
) -> dict[str, Any]:
    from rich.table import Table

    rows: list[ImageRow] = []
    by_path = {o.path.absolute(): o for o in summary.outcomes}
    for path in [*sorted(survey.truth), *survey.bad_files]:
        outcome = by_path.get(path)
        image_id = outcome.image_id if outcome is not None else None
        rows.append(
            ImageRow(
                path=path,
                file_name=str(path.relative_to(survey.folder.absolute())),
                image_id=image_id,
                truth_boxes=survey.truth.get(path, []),
                size=survey.sizes.get(path, (0, 0)),
                detection=results.detections.get(image_id) if image_id else None,
                letter=results.letters.get(image_id) if image_id else None,
                upload_note=(
                    f"{outcome.result} by the uploader: {outcome.reason}" if outcome else ""
                ),
            )
        )
    frames = [row for row in rows if row.detection is not None]
    truth_pos = {row.path for row in rows if row.truth_boxes}
    # The classifier decides "leopard frame" (the gate is set for recall); the detector then
    # localises, and only its boxes above the bundle's detection confidence are reported.
    gated = {row.path for row in frames if row.detection.detector_ran}
    boxed = {row.path for row in frames if row.detection.detections}
    boxes = sum(len(row.detection.detections) for row in frames)
    truth_boxes = sum(len(row.truth_boxes) for row in rows)
    hits = len(truth_pos & gated)
    false_alarms = len(gated - truth_pos)
    missed = len(truth_pos - gated)
    reasons: dict[str, int] = {}
    for letter in results.letters.values():
        reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
    span = max(results.last_outcome_at - upload_started, 1e-6)
    latencies = [(row.detection.processed_at - row.detection.sent_at) for row in frames] or [0.0]
    accounted = set(sent) <= results.done

    table = Table(title=f"snowtrap demo: what the worker found ({model})")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    lines: list[tuple[str, str]] = [
        ("images uploaded (acknowledged by Kafka)", str(len(sent))),
        ("files rejected at the station", str(len(summary.rejected))),
        ("detection records", str(len(results.detections))),
        ("dead letters", str(len(results.letters))),
        ("every uploaded image accounted for", "yes" if accounted else "NO"),
        ("leopard frames: truth", str(len(truth_pos))),
        ("leopard frames: predicted (classifier gate)", str(len(gated))),
        ("  found / missed / false alarms", f"{hits} / {missed} / {false_alarms}"),
        ("frames with a leopard box", str(len(boxed))),
        ("leopard boxes: predicted / truth", f"{boxes} / {truth_boxes}"),
        ("crops on trap.crops", str(results.crops)),
        (
            "dead-letter reasons",
            ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items())) or "none",
        ),
        ("throughput (upload start -> last outcome)", f"{len(sent) / span:.1f} images/s"),
        (
            "latency sent -> processed (median / max)",
            f"{statistics.median(latencies):.2f} s / {max(latencies):.2f} s",
        ),
        ("demo wall time so far", f"{time.perf_counter() - started:.0f} s"),
    ]
    for key, value in lines:
        table.add_row(key, value)
    console.print(table)
    report = settings.run_dir / "report.html"
    rejected = [(o.path.name, o.reason) for o in summary.rejected]
    write_report(report, rows, lines, rejected)
    console.print(f"[bold]Report[/]: {report.absolute()} (open it in a browser)")
    return {
        "sent": set(sent),
        "detected": set(results.detections),
        "dead": set(results.letters),
        "dead_reasons": reasons,
        "crops": results.crops,
        "leopards_truth": len(truth_pos),
        "leopards_predicted": len(gated),
        "leopard_boxes": boxes,
        "rejected": [o.path.name for o in summary.rejected],
        "report": report,
        "accounted": accounted,
    }


# --- command line ---------------------------------------------------------------------------


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`snowtrap demo [--bundle DIR] [--images N] [--seed S] [--bootstrap-servers H:P]`."""
    parser.add_argument("--bundle", type=Path, help="model bundle to serve (default: train one)")
    parser.add_argument("--images", type=int, help="synthetic trap images to upload (60)")
    parser.add_argument("--seed", type=int, help="seed of the synthetic survey (7)")
    parser.add_argument("--run-dir", type=Path, help="where images, logs, report go (runs/demo)")
    parser.add_argument(
        "--bootstrap-servers",
        help="an existing Kafka cluster (default: $KAFKA_BOOTSTRAP_SERVERS, else a local broker)",
    )
    parser.add_argument(
        "--keep-topics", action="store_true", help="leave this run's topics on the cluster"
    )
    parser.set_defaults(run=_cli_demo)


def _cli_demo(args: argparse.Namespace) -> int:
    import logging

    from rich.console import Console

    overrides = {
        "images": args.images,
        "seed": args.seed,
        "run_dir": args.run_dir,
        "bootstrap_servers": args.bootstrap_servers,
    }
    settings = DemoSettings(**{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    console = Console()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends the demo like Ctrl-C does: the worker and the broker are stopped.
        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, interrupt)
    started = time.perf_counter()
    try:
        run_demo(settings, bundle=args.bundle, keep_topics=args.keep_topics, console=console)
    except KeyboardInterrupt:
        console.print("[bold yellow]snowtrap demo: interrupted; worker and broker stopped[/]")
        return 130
    except DemoError as error:
        console.print(f"snowtrap demo: {error}", style="bold red", markup=False, highlight=False)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0
