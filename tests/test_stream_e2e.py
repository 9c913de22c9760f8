"""End to end on a real broker: camera cards -> uploader -> `snowtrap worker` -> topics -> export.

- 200 files from three camera cards (leopards, empties, night frames, 5 corrupt JPEGs, 2
  non-images) go through the real uploader; the worker runs as a subprocess exactly as it
  is deployed. Every image must end as exactly one detection record or dead letter, every
  corrupt file as a dead letter with a reason, every leopard box over the crop threshold as
  a crop with no EXIF, the worker's /metrics must agree with the topics, and the MegaDetector
  export of the run must pass the project's validator.
- Images over the message limit travel as claim checks; forged ones are dead-lettered.

Workers stopped or added mid-run: tests/test_stream_e2e_failover.py.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from pathlib import Path

import pytest
from helpers.messages import (
    image_message,
)
from helpers.stream_run import (
    CI_BUNDLE_OPERATING_POINT,
    assert_invariant,
    is_stand_in,
    start_worker,
    wait_for_metrics,
    wait_for_zero_lag,
)
from helpers.topics import (
    produce,
    topic_partitions,
    topic_size,
    wait_for_outcomes,
)
from helpers.trap_cards import STATION, make_trap_images, prepare_cards, upload_everything
from helpers.worker_process import metric_by, metric_total
from PIL import Image

from snowtrap.models.bundle import read_manifest
from snowtrap.stream.contracts import LEOPARD_CATEGORY, image_id_of
from snowtrap.stream.export import ExportSettings, export_megadetector
from snowtrap.stream.megadetector import validate_megadetector_file
from snowtrap.stream.topics import TopicNames
from snowtrap.stream.uploader import Uploader, UploaderSettings

pytestmark = pytest.mark.kafka

GPS_IFD = 0x8825


@pytest.fixture(scope="module")
def worker_bundle(trained_bundle: Path) -> Path:
    """The model bundle the workers serve: the session's trained bundle (classifier and
    Faster R-CNN from `configs/synthetic-ci.yaml`), as a deployment serves one."""
    return trained_bundle


def test_cards_to_detections_crops_dead_letters_metrics_and_export(
    kafka_bootstrap: str, kafka_topics: TopicNames, worker_bundle: Path, tmp_path: Path
):
    topics = kafka_topics
    cards, uploaded = prepare_cards(tmp_path / "cards", n_good=193, seed=20)
    assert sum(len(paths) for paths in cards.values()) == 200
    manifest = read_manifest(worker_bundle)
    operating_point = {} if is_stand_in(manifest) else CI_BUNDLE_OPERATING_POINT
    crop_threshold = operating_point.get("crop_threshold", manifest.thresholds.crop)

    with start_worker(
        worker_bundle,
        kafka_bootstrap,
        topics,
        f"e2e-{uuid.uuid4().hex[:8]}",
        tmp_path / "w.log",
        **operating_point,
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
