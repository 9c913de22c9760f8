"""No location anywhere downstream: trap frames that carry EXIF GPS go through the real
pipeline (uploader, broker, `snowtrap worker`, export), the larger half as `s3://` claim checks
in a real S3-compatible server, and no record, object, crop, dead letter or export file holds
a GPS value. The `s3://` claim checks are read back by the worker end to end."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from helpers.bundle import test_bundle
from helpers.location import add_location, assert_no_location, gps_fingerprints
from helpers.messages import truncated_jpeg
from helpers.object_store import s3_server
from helpers.stream_run import start_worker
from helpers.topics import consume_all, wait_for_outcomes
from helpers.trap_cards import STATION, make_trap_images, sent_image_id

from snowtrap.stream.contracts import parse_image_message
from snowtrap.stream.export import ExportSettings, export_megadetector
from snowtrap.stream.topics import TopicNames
from snowtrap.stream.uploader import Uploader, UploaderSettings

pytestmark = pytest.mark.kafka

BUCKET = "station-k2-claims"


def test_no_gps_on_any_topic_object_or_export(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
):
    topics = kafka_topics
    images = make_trap_images(tmp_path / "card", 12, seed=31)
    for trap_file in images:
        add_location(trap_file.path)  # every frame: the generator puts GPS on some cameras only
    broken = tmp_path / "card" / "IMG_9001_truncated.jpg"
    broken.write_bytes(truncated_jpeg(images[0].path.read_bytes(), 0.5))  # GPS in its header
    files = [f.path for f in images] + [broken]
    assert all(any(f in p.read_bytes() for f in gps_fingerprints()) for p in files)
    sizes = sorted(p.stat().st_size for p in files)
    inline_limit = sizes[len(sizes) // 2]  # about half go as claim checks

    with s3_server() as s3:
        s3.create_bucket(BUCKET)
        settings = UploaderSettings(
            bootstrap_servers=kafka_bootstrap,
            topics=topics,
            camera_id=images[0].camera_id,
            station_id=STATION,
            ledger_path=tmp_path / "ledger.sqlite",
            progress=False,
            create_topics=False,
            claim_check_store=f"s3://{BUCKET}/k2",
            s3=s3.settings,
            header_room_bytes=64 * 1024,
            max_message_bytes=64 * 1024 + inline_limit,
        )
        summary = Uploader(settings).run(files)
        assert summary.exit_code == 0 and len(summary.sent) == len(files), summary
        claimed = {o.image_id: o.claim_check for o in summary.sent if o.claim_check}
        assert 0 < len(claimed) < len(files)
        assert all(uri and uri.startswith(f"s3://{BUCKET}/k2/") for uri in claimed.values())
        expected = {sent_image_id(p) for p in files}
        assert {o.image_id for o in summary.sent} == expected

        with start_worker(
            test_bundle("detector"),
            kafka_bootstrap,
            topics,
            f"privacy-{uuid.uuid4().hex[:8]}",
            tmp_path / "w.log",
            claim_check_buckets=json.dumps([BUCKET]),
            detect_all="true",  # every frame gets boxes and crops, whatever the gate says
            **{f"s3__{k}": v for k, v in s3.settings_env().items()},
        ) as worker:
            outcomes = wait_for_outcomes(
                kafka_bootstrap, topics, expected, timeout_s=120, alive=worker.check_alive
            )
            assert worker.stop() == 0, worker.log_tail()

        # The objects in the store hold the images as sent: no location.
        client = s3.client()
        for uri in claimed.values():
            key = uri.removeprefix(f"s3://{BUCKET}/")
            assert_no_location(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    assert outcomes.invariant_problems(expected) == []
    records = outcomes.latest_records()
    broken_id = sent_image_id(broken)
    assert set(records) == expected - {broken_id}
    for image_id in claimed.keys() - {broken_id}:  # s3:// claim checks read back by the worker
        assert (records[image_id].width, records[image_id].height) == (640, 480)
    assert records[images[0].image_id].capture_time is not None  # capture time survives

    # trap.images: every value (inline images) and every header.
    for record in consume_all(kafka_bootstrap, topics.images):
        image = parse_image_message(record.key, record.value, record.headers)
        assert image.payload is None or image.payload == record.value
        assert_no_location(record.value)
        assert b"GPS" not in b"".join(value for _, value in record.headers)
    # Dead letters (the truncated frame: original bytes as sent), crops, detection records.
    letters = outcomes.letters_by_id()
    assert set(letters) == {broken_id}
    for letter in letters.values():
        assert letter.value and b"Exif" in letter.value  # the rest of the EXIF is kept
        assert_no_location(letter.value)
    assert outcomes.crops, "detect_all gave no crops"
    for crop in outcomes.crops:
        assert_no_location(crop.jpeg)
    for topic in (topics.detections, topics.deadletter, topics.crops):
        for record in consume_all(kafka_bootstrap, topic):
            assert_no_location(record.value)
            assert b"gps" not in b"".join(v for _, v in record.headers).lower()
    for record in consume_all(kafka_bootstrap, topics.detections):
        text = record.value.lower()  # JSON
        assert b"gps" not in text and b"latitude" not in text and b"longitude" not in text

    # The export: MegaDetector JSON and the per-camera-day CSV.
    export_megadetector(
        ExportSettings(bootstrap_servers=kafka_bootstrap, topics=topics, idle_timeout_s=20),
        tmp_path / "megadetector.json",
        csv_path=tmp_path / "summary.csv",
        include_deadletter=True,
    )
    for path in (tmp_path / "megadetector.json", tmp_path / "summary.csv"):
        text = path.read_text().lower()
        assert text and "gps" not in text and "latitude" not in text, path
