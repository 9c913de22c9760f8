"""End to end on a real broker: camera cards -> uploader -> `snowtrap worker` -> topics -> export.

- 200 files from three camera cards (leopards, empties, night frames, 5 corrupt JPEGs, 2
  non-images) go through the real uploader; the worker runs as a subprocess exactly as it
  is deployed. Every image must end as exactly one detection record or dead letter, every
  corrupt file as a dead letter with a reason, every leopard box over the crop threshold as
  a crop with no EXIF, the worker's /metrics must agree with the topics, and the MegaDetector
  export of the run must pass the project's validator.
- The worker is SIGKILLed mid-run and a new one takes over the same consumer group: the
  invariant still holds (re-done images reappear only under the same image id).
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.bundle import test_bundle
from helpers.messages import (
    garbled_jpeg,
    image_message,
    pdf_bytes,
    text_file_bytes,
    truncated_jpeg,
)
from helpers.topics import (
    Outcomes,
    collect_outcomes,
    produce,
    topic_partitions,
    topic_size,
    wait_for_outcomes,
)
from helpers.worker_process import WorkerProcess, metric_by, metric_total
from PIL import Image

from snowtrap.cli import main as snowtrap_main
from snowtrap.models.bundle import read_manifest
from snowtrap.stream.contracts import LEOPARD_CATEGORY, image_id_of
from snowtrap.stream.export import ExportSettings, export_megadetector
from snowtrap.stream.megadetector import validate_megadetector_file
from snowtrap.stream.topics import TopicNames
from snowtrap.stream.uploader import Uploader, UploaderSettings

pytestmark = pytest.mark.kafka

STATION = "station-k2"
GPS_IFD = 0x8825
SESSION_TIMEOUT_S = 8.0
"""Short consumer-group session in these tests, so a killed worker's partitions move on fast."""


# --- test data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrapFile:
    """One file on a camera card and what the test knows about it."""

    path: Path
    camera_id: str
    has_leopard: bool
    is_night: bool
    has_gps: bool

    @property
    def image_id(self) -> str:
        return image_id_of(self.path.read_bytes())


def make_trap_images(folder: Path, n: int, seed: int) -> list[TrapFile]:
    """`n` trap images from the project's synthetic camera-trap generator, with the truth
    from its COCO Camera Traps file: cameras (one folder each), leopards, other animals,
    empties, IR night frames, trap EXIF with GPS on some cameras."""
    from snowtrap.training.synthetic import write_dataset

    dataset = write_dataset(folder, n, seed, width=640, height=480)
    coco = json.loads(dataset.annotations_path.read_text())
    leopard = next(c["id"] for c in coco["categories"] if c["name"] == "snow_leopard")
    with_leopard = {a["image_id"] for a in coco["annotations"] if a["category_id"] == leopard}
    return [
        TrapFile(
            path=folder / image["file_name"],
            camera_id=image["location"],
            has_leopard=image["id"] in with_leopard,
            is_night=bool(image["night"]),
            has_gps=bool(image.get("has_gps")),
        )
        for image in coco["images"]
    ]


def write_corrupt_files(folder: Path, sources: list[TrapFile]) -> list[Path]:
    """5 damaged JPEGs (cut short, or noise over the entropy-coded data) from good frames."""
    folder.mkdir(parents=True, exist_ok=True)
    damaged = {
        "IMG_9001_truncated.jpg": truncated_jpeg(sources[0].path.read_bytes(), 0.5),
        "IMG_9002_truncated.jpg": truncated_jpeg(sources[1].path.read_bytes(), 0.1),
        "IMG_9003_header_only.jpg": truncated_jpeg(sources[2].path.read_bytes(), 0.003),
        "IMG_9004_garbled.jpg": garbled_jpeg(sources[3].path.read_bytes(), 4),
        "IMG_9005_garbled.jpg": garbled_jpeg(sources[4].path.read_bytes(), 5),
    }
    paths = []
    for name, data in damaged.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def write_non_images(folder: Path) -> list[Path]:
    """2 files with image names that are not images: field notes and a PDF datasheet."""
    folder.mkdir(parents=True, exist_ok=True)
    notes, sheet = folder / "IMG_9101.jpg", folder / "IMG_9102.JPG"
    notes.write_bytes(text_file_bytes())
    sheet.write_bytes(pdf_bytes())
    return [notes, sheet]


@dataclass
class Uploaded:
    """What went onto `trap.images` in a test."""

    ids: set[str]
    good: dict[str, TrapFile]
    """Image id -> the good trap image it is."""
    corrupt_ids: set[str]
    non_image_ids: set[str]
    cameras: list[str]


def upload(
    bootstrap: str, topics: TopicNames, cards: dict[str, list[Path]], ledger: Path
) -> tuple[set[str], list]:
    """Run the real uploader over each camera's card; returns the sent ids and rejections."""
    sent: set[str] = set()
    rejected = []
    for camera, paths in cards.items():
        settings = UploaderSettings(
            bootstrap_servers=bootstrap,
            topics=topics,
            camera_id=camera,
            station_id=STATION,
            ledger_path=ledger,
            progress=False,
            create_topics=False,
        )
        summary = Uploader(settings).run(paths)
        assert summary.exit_code == 0, summary
        assert not summary.failed
        sent |= {outcome.image_id for outcome in summary.sent if outcome.image_id}
        rejected += summary.rejected
    return sent, rejected


def prepare_cards(root: Path, n_good: int, seed: int) -> tuple[dict[str, list[Path]], Uploaded]:
    """Three camera cards holding `n_good` trap images, 5 corrupt files and 2 non-images."""
    images = make_trap_images(root / "frames", n_good, seed)
    corrupt = write_corrupt_files(root / "corrupt", images)
    non_images = write_non_images(root / "other")
    cameras = sorted({trap_file.camera_id for trap_file in images})
    assert len(cameras) >= 2
    cards: dict[str, list[Path]] = {camera: [] for camera in cameras}
    for trap_file in images:
        cards[trap_file.camera_id].append(trap_file.path)
    cards[cameras[0]] += corrupt[:3] + non_images
    cards[cameras[1]] += corrupt[3:]
    uploaded = Uploaded(
        ids=set(),
        good={trap_file.image_id: trap_file for trap_file in images},
        corrupt_ids={image_id_of(path.read_bytes()) for path in corrupt},
        non_image_ids={image_id_of(path.read_bytes()) for path in non_images},
        cameras=cameras,
    )
    return cards, uploaded


def upload_everything(
    bootstrap: str, topics: TopicNames, cards: dict[str, list[Path]], uploaded: Uploaded, tmp: Path
) -> None:
    """The uploader sends images (corrupt ones included) and refuses the non-images; those
    are then sent the way a careless third-party uploader would, to reach the worker too."""
    sent, rejected = upload(bootstrap, topics, cards, tmp / "ledger.sqlite")
    assert sent == set(uploaded.good) | uploaded.corrupt_ids
    assert {image_id_of(outcome.path.read_bytes()) for outcome in rejected} == (
        uploaded.non_image_ids
    )
    assert all("not an image" in outcome.reason for outcome in rejected)
    produce(
        bootstrap,
        topics.images,
        [
            image_message(
                outcome.path.read_bytes(), outcome.path.name, camera_id=uploaded.cameras[0]
            )
            for outcome in rejected
        ],
    )
    uploaded.ids = sent | uploaded.non_image_ids


@pytest.fixture(scope="module")
def worker_bundle() -> Path:
    """The model bundle the workers serve (the test bundle: CAM stand-in detector)."""
    return test_bundle("detector")


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


# --- checks ---------------------------------------------------------------------------------


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


# --- the tests ------------------------------------------------------------------------------


def test_cards_to_detections_crops_dead_letters_metrics_and_export(
    kafka_bootstrap: str, kafka_topics: TopicNames, worker_bundle: Path, tmp_path: Path
):
    topics = kafka_topics
    cards, uploaded = prepare_cards(tmp_path / "cards", n_good=193, seed=20)
    assert sum(len(paths) for paths in cards.values()) == 200
    manifest = read_manifest(worker_bundle)
    crop_threshold = manifest.thresholds.crop

    with start_worker(
        worker_bundle, kafka_bootstrap, topics, f"e2e-{uuid.uuid4().hex[:8]}", tmp_path / "w.log"
    ) as worker:
        upload_everything(kafka_bootstrap, topics, cards, uploaded, tmp_path)
        assert topic_size(kafka_bootstrap, topics.images) == 200
        outcomes = wait_for_outcomes(
            kafka_bootstrap, topics, uploaded.ids, timeout_s=150, alive=worker.check_alive
        )
        messages = len(outcomes.detections) + len(outcomes.letters)
        metrics = wait_for_metrics(worker, messages)
        lag = wait_for_zero_lag(worker, partitions=topic_partitions(kafka_bootstrap, topics.images))
        worker.check_alive()
        assert worker.stop() == 0, worker.log_tail()

    # Exactly one outcome per image; without a crash, nothing was published twice.
    assert_invariant(outcomes, uploaded)
    assert not outcomes.duplicates()
    assert outcomes.detected_ids == set(uploaded.good)

    # Corrupt files and non-images: dead letters naming why, with the original bytes.
    letters = outcomes.letters_by_id()
    assert set(letters) == uploaded.corrupt_ids | uploaded.non_image_ids
    for image_id in uploaded.corrupt_ids:
        letter = letters[image_id]
        assert (letter.stage, letter.reason) in {("decode", "truncated"), ("decode", "corrupt")}
        assert letter.error and letter.value and image_id_of(letter.value) == image_id
        assert letter.source_topic == topics.images
    for image_id in uploaded.non_image_ids:
        assert (letters[image_id].stage, letters[image_id].reason) == ("decode", "not_an_image")

    # Detection records: one per good image, from its camera, gated as configured.
    records = outcomes.latest_records()
    found = {image_id for image_id, r in records.items() if r.detections}
    gate = manifest.thresholds.classifier_gate
    for image_id, record in records.items():
        trap_file = uploaded.good[image_id]
        assert record.camera_id == trap_file.camera_id and record.station_id == STATION
        assert record.file == f"{record.camera_id}/{trap_file.path.name}"
        assert record.capture_time is not None and record.sent_at > 0
        assert record.processed_at >= record.sent_at
        assert record.detector_ran == (record.leopard_score >= gate)
        assert record.detector_ran or not record.detections
        assert record.gate_threshold == gate and record.model_version == manifest.version
    if not is_stand_in(manifest):
        # A trained bundle finds the generator's leopards (the test bundle's stand-in was fitted
        # on the simpler frames of tests/helpers/frames.py and is at chance on these).
        leopards = {image_id for image_id, f in uploaded.good.items() if f.has_leopard}
        assert len(leopards & found) >= 0.8 * len(leopards)
        assert len(found - leopards) <= 0.2 * (len(uploaded.good) - len(leopards))

    # Infrared night frames are flagged (a washed-out grey day scene may be flagged too).
    nights = {image_id for image_id, f in uploaded.good.items() if f.is_night}
    flagged = {image_id for image_id, r in records.items() if r.is_night}
    assert nights <= flagged
    assert len(flagged - nights) <= 0.1 * (len(records) - len(nights))

    # Crops: one per box over the crop threshold, JPEG, no EXIF and no GPS.
    expected_crops = {
        (image_id, index)
        for image_id, record in records.items()
        for index, d in enumerate(record.detections)
        if d.conf >= crop_threshold
    }
    assert expected_crops, "no leopard boxes over the crop threshold at all"
    assert {(crop.image_id, crop.box_index) for crop in outcomes.crops} == expected_crops
    assert len(outcomes.crops) == len(expected_crops)
    for crop in outcomes.crops:
        image = Image.open(io.BytesIO(crop.jpeg))
        assert image.format == "JPEG"
        assert not image.getexif() and not image.getexif().get_ifd(GPS_IFD)
        assert "exif" not in image.info
        assert crop.camera_id == records[crop.image_id].camera_id
    # The cameras' EXIF (with GPS) was on the uploaded images, so the stripping is real.
    with_gps = [f for f in uploaded.good.values() if f.has_gps]
    assert with_gps and all(Image.open(f.path).getexif().get_ifd(GPS_IFD) for f in with_gps)
    assert {crop.image_id for crop in outcomes.crops} & {f.image_id for f in with_gps}

    # /metrics agrees with the topics.
    outcome_counts = metric_by(metrics, "snowtrap_images_processed_total", "outcome")
    assert outcome_counts == {
        "leopard": len(found),
        "no_leopard": len(records) - len(found),
        "deadletter": len(outcomes.letters),
    }
    assert metric_by(metrics, "snowtrap_deadletter_total", "reason") == dict(
        Counter(letter.reason for letter in outcomes.letters)
    )
    assert metric_total(metrics, "snowtrap_crops_published_total") == len(outcomes.crops)
    assert metric_total(metrics, "snowtrap_leopards_detected_total") == sum(
        len(r.detections) for r in records.values()
    )
    assert metric_total(metrics, "snowtrap_end_to_end_latency_seconds_count") == len(records)
    assert metric_total(metrics, "snowtrap_batch_size_sum") == 200
    per_camera = metric_by(metrics, "snowtrap_camera_images_total", "camera_id")
    assert sum(per_camera.values()) == 200 and set(per_camera) == set(uploaded.cameras)
    assert {dict(labels)["topic"] for labels in lag} == {topics.images}

    # The MegaDetector export of this run is valid and says the same.
    export = export_megadetector(
        ExportSettings(bootstrap_servers=kafka_bootstrap, topics=topics, idle_timeout_s=30),
        tmp_path / "megadetector.json",
        csv_path=tmp_path / "summary.csv",
        include_deadletter=True,
    )
    document = json.loads((tmp_path / "megadetector.json").read_text())
    assert validate_megadetector_file(document) == []
    assert document["detection_categories"] == {LEOPARD_CATEGORY: "snow leopard"}
    assert export.images == len(records) and export.failures == len(letters)
    assert export.duplicates_dropped == 0 and not export.bad_records
    entries = {entry["file"]: entry for entry in document["images"]}
    for record in records.values():
        entry = entries[record.file]
        assert len(entry["detections"]) == len(record.detections)
        for detection in entry["detections"]:
            assert detection["category"] in document["detection_categories"]
            x, y, w, h = detection["bbox"]
            assert 0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 and 0 < h <= 1
            assert x + w <= 1 and y + h <= 1
    assert sum(1 for entry in document["images"] if entry.get("failure")) == len(letters)
    assert (tmp_path / "summary.csv").read_text().count("\n") >= len(uploaded.cameras) + 1


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_worker_stopped_mid_run_is_replaced_and_every_image_still_ends_once(
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    worker_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
):
    """SIGKILL: nothing runs after it, so produced-but-uncommitted batches are redone.
    SIGTERM: the batch in progress is cancelled and must not be committed either."""
    topics = kafka_topics
    group = f"e2e-kill-{uuid.uuid4().hex[:8]}"
    cards, uploaded = prepare_cards(tmp_path / "cards", n_good=113, seed=21)
    # Small batches and slow commits: the kill lands with produced-but-uncommitted work.
    settings = {"batch_size": 4, "commit_interval_s": 2.0}

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

    assert_invariant(outcomes, uploaded)
    assert outcomes.detected_ids == set(uploaded.good)
    assert outcomes.dead_ids == uploaded.corrupt_ids | uploaded.non_image_ids
    # The second worker did the rest, plus what the first had produced but not committed;
    # its /metrics count exactly the messages it published.
    second_count = metric_total(metrics, "snowtrap_images_processed_total")
    assert second_count == all_messages - first_messages
    assert len(left) <= second_count <= total
    republished = all_messages - len(outcomes.done_ids)
    print(
        f"{how} after {total - len(left)} of {total} outcomes; the second worker processed "
        f"{second_count:.0f}, re-publishing {republished} already published"
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


def test_images_over_the_message_limit_travel_as_claim_checks(
    kafka_bootstrap: str, kafka_topics: TopicNames, worker_bundle: Path, tmp_path: Path
):
    """The uploader stores images over its inline limit and sends a `file://` claim check;
    the worker reads them from its allowed roots (a shared mount) and refuses the rest."""
    topics = kafka_topics
    images = make_trap_images(tmp_path / "card", 16, seed=22)
    store = tmp_path / "claim-checks"
    sizes = sorted(f.path.stat().st_size for f in images)
    inline_limit = sizes[len(sizes) // 2]  # about half the images go as claim checks
    camera = images[0].camera_id
    settings = UploaderSettings(
        bootstrap_servers=kafka_bootstrap,
        topics=topics,
        camera_id=camera,
        station_id=STATION,
        ledger_path=tmp_path / "ledger.sqlite",
        progress=False,
        create_topics=False,
        claim_check_store=str(store),
        header_room_bytes=64 * 1024,
        max_message_bytes=64 * 1024 + inline_limit,
    )
    summary = Uploader(settings).run([f.path for f in images])
    assert summary.exit_code == 0 and len(summary.sent) == len(images)
    claimed = {o.image_id for o in summary.sent if o.claim_check}
    assert 0 < len(claimed) < len(images)
    # A claim check outside the worker's roots, and one whose file is gone.
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(images[0].path.read_bytes() + b"maker trailer")
    gone = store / "gone.jpg"
    forged = []
    for path, uri in ((outside, outside.as_uri()), (gone, gone.as_uri())):
        data = outside.read_bytes() if path == outside else b"never written" + path.name.encode()
        key, _, headers = image_message(data, path.name, camera_id=camera)
        forged.append((key, b"", [*headers, ("claim-check", uri.encode())]))
    produce(kafka_bootstrap, topics.images, forged)
    forged_ids = {dict(headers)["image-id"].decode() for _, _, headers in forged}

    with start_worker(
        worker_bundle,
        kafka_bootstrap,
        topics,
        f"e2e-cc-{uuid.uuid4().hex[:8]}",
        tmp_path / "w.log",
        claim_check_roots=json.dumps([str(store)]),
    ) as worker:
        expected = {f.image_id for f in images} | forged_ids
        outcomes = wait_for_outcomes(
            kafka_bootstrap, topics, expected, timeout_s=90, alive=worker.check_alive
        )
        assert worker.stop() == 0, worker.log_tail()

    assert outcomes.invariant_problems(expected) == []
    records = outcomes.latest_records()
    assert set(records) == {f.image_id for f in images}
    for image_id in claimed:
        assert (records[image_id].width, records[image_id].height) == (640, 480)
    letters = outcomes.letters_by_id()
    assert {(letters[i].reason, letters[i].stage) for i in forged_ids} == {
        ("claim_check_forbidden", "decode"),
        ("claim_check_missing", "decode"),
    }


def test_a_second_worker_joining_mid_run_shares_the_partitions_without_losing_images(
    kafka_bootstrap: str, kafka_topics: TopicNames, worker_bundle: Path, tmp_path: Path
):
    """Scale-out (KEDA adds a pod): the group rebalances while batches are in flight."""
    topics = kafka_topics
    group = f"e2e-scale-{uuid.uuid4().hex[:8]}"
    cards, uploaded = prepare_cards(tmp_path / "cards", n_good=73, seed=23)
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
            # Each worker counts a batch once the broker acknowledged its outputs, so the topics
            # never hold fewer messages than the counters say. A batch in flight during the
            # rebalance may be re-done by the new owner after every id already has an outcome
            # (at-least-once), so the topics are re-read with the counters until both agree.
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

    assert_invariant(outcomes, uploaded)
    assert outcomes.detected_ids == set(uploaded.good)
    assert sum(counts) == all_messages >= len(uploaded.ids)
    assert sum(partitions) == topic_partitions(kafka_bootstrap, topics.images)
    assert all(partitions), partitions
    print(f"processed per worker {counts}, partitions {partitions}")
