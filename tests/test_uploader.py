"""The camera-station uploader against a real broker: what it sends, what it skips, and that
a re-run (also after a hard crash) sends exactly what is missing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from PIL import Image

from snowtrap.cli import main as snowtrap_main
from snowtrap.stream.contracts import H, headers_to_dict, image_id_of, parse_image_message
from snowtrap.stream.ledger import Acknowledgement, UploadLedger
from snowtrap.stream.metrics import UploaderMetrics
from snowtrap.stream.topics import TopicNames
from snowtrap.stream.uploader import (
    EXIT_BROKER_UNREACHABLE,
    ClaimCheckError,
    Uploader,
    UploaderSettings,
    claim_check_store_for,
    find_files,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMERA = "cam-07"
STATION = "station-k2"


# --- test data ----------------------------------------------------------------------------


def trap_jpeg(seed: int, when: datetime, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small JPEG with EXIF DateTimeOriginal, like a trap camera writes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = when.strftime("%Y:%m:%d %H:%M:%S")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=85, exif=exif)
    return out.getvalue()


def write_card(root: Path, n_images: int) -> dict[str, datetime]:
    """An SD-card-like folder: images in DCIM/100EK113, a text file and an empty file.

    Returns the capture time of each image by its name relative to `root`.
    """
    folder = root / "DCIM" / "100EK113"
    folder.mkdir(parents=True)
    times: dict[str, datetime] = {}
    for index in range(n_images):
        when = datetime(2024, 2, 1 + index % 3, 4 + index % 12, index % 60, 7)
        name = f"DCIM/100EK113/IMG_{index:04d}.JPG"
        (root / name).write_bytes(trap_jpeg(index, when))
        times[name] = when
    (root / "DCIM" / "readme.txt").write_text("camera firmware notes\n")
    (root / "DCIM" / "100EK113" / "IMG_9999.JPG").write_bytes(b"")
    return times


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def consume_all(bootstrap: str, topic: str) -> list:
    """Every record on `topic` up to its current end, in partition/offset order."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=32 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records = []
        for _ in range(200):
            if all(consumer.position(tp) >= ends[tp] for tp in partitions):
                break
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        else:
            raise AssertionError(f"could not read {topic} to its end")
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def topic_size(bootstrap: str, topic: str) -> int:
    """Messages on the topic (sum of end offsets; the topics are fresh, starting at 0)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def settings_for(bootstrap: str, topics: TopicNames, ledger: Path, **extra) -> UploaderSettings:
    return UploaderSettings(
        bootstrap_servers=bootstrap,
        topics=topics,
        camera_id=CAMERA,
        station_id=STATION,
        ledger_path=ledger,
        progress=False,
        create_topics=False,
        **extra,
    )


# --- no broker needed ---------------------------------------------------------------------


def test_files_are_found_in_sorted_order_with_names_relative_to_the_folder(tmp_path: Path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "z").mkdir(parents=True)
    for name in ("b/2.jpg", "b/1.jpg", "a/z/3.jpg", "a/0.jpg", "top.jpg"):
        (tmp_path / name).write_bytes(b"x")
    single = tmp_path / "b" / "1.jpg"
    found = find_files([tmp_path, single, tmp_path / "missing.jpg"])
    assert [c.file_name for c in found] == [
        "top.jpg",
        "a/0.jpg",
        "a/z/3.jpg",
        "b/1.jpg",
        "b/2.jpg",
        "1.jpg",
        "missing.jpg",
    ]
    assert found[-1].problem == "no such file or directory"
    assert all(c.path.is_absolute() for c in found)


def test_ledger_keeps_the_first_acknowledgement_across_reopen(tmp_path: Path):
    def ack(offset: int) -> Acknowledgement:
        return Acknowledgement(
            "a" * 64, "trap.images", 2, offset, 1.0, 2.0, "/x.jpg", "x.jpg", "c", "s", 10, None,
            "h:1",
        )  # fmt: skip

    path = tmp_path / "state" / "uploads.sqlite3"
    with UploadLedger(path) as ledger:
        assert ledger.record(ack(5))
        assert not ledger.record(ack(9))  # a re-send's acknowledgement does not overwrite
    with UploadLedger(path) as ledger:
        found = ledger.lookup("a" * 64, "trap.images")
        assert found is not None and found.offset == 5
        assert ledger.lookup("a" * 64, "other.topic") is None
        assert ledger.count() == 1


def test_claim_check_stores(tmp_path: Path):
    image = tmp_path / "card" / "IMG_0001.JPG"
    image.parent.mkdir()
    image.write_bytes(b"\xff\xd8\xff big image")
    image_id = image_id_of(image.read_bytes())

    data = image.read_bytes()
    assert claim_check_store_for(None).put(image, data, image_id) == image.resolve().as_uri()

    store_dir = tmp_path / "claims"
    for setting in (str(store_dir), store_dir.as_uri()):
        uri = claim_check_store_for(setting).put(image, data, image_id)
        assert uri == (store_dir / f"{image_id}.jpg").as_uri()
        assert (store_dir / f"{image_id}.jpg").read_bytes() == image.read_bytes()

    with pytest.raises(ClaimCheckError, match="ftp"):
        claim_check_store_for("ftp://host/dir")


def test_unreachable_broker_records_nothing_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    write_card(tmp_path / "card", 3)
    ledger = tmp_path / "ledger.sqlite3"
    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("SNOWTRAP_CONNECT_TIMEOUT_S", "2")
    code = snowtrap_main(
        ["upload", str(tmp_path / "card"), "--camera-id", CAMERA, "--station-id", STATION,
         "--ledger", str(ledger), "--bootstrap-servers", dead, "--no-progress"]
    )  # fmt: skip
    assert code == EXIT_BROKER_UNREACHABLE
    err = capsys.readouterr().err
    assert f"could not reach Kafka at {dead}" in err
    assert "Nothing was sent" in err
    with UploadLedger(ledger) as opened:
        assert opened.count() == 0


# --- real broker --------------------------------------------------------------------------


def test_upload_sends_images_with_contract_headers_and_reports_non_images(
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    card = tmp_path / "card"
    times = write_card(card, 8)
    corrupt = card / "DCIM" / "100EK113" / "IMG_0100.JPG"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00cut short by the uplink")  # sent anyway
    monkeypatch.setenv("SNOWTRAP_TOPICS__IMAGES", kafka_topics.images)
    textfile = tmp_path / "metrics.prom"

    code = snowtrap_main(
        ["upload", str(card), "--camera-id", CAMERA, "--station-id", STATION,
         "--ledger", str(tmp_path / "ledger.sqlite3"), "--bootstrap-servers", kafka_bootstrap,
         "--metrics-textfile", str(textfile), "--no-progress"]
    )  # fmt: skip

    out = capsys.readouterr().out
    assert code == 0, out
    assert "readme.txt" in out and "not an image" in out
    assert "IMG_9999.JPG" in out and "empty file" in out

    records = consume_all(kafka_bootstrap, kafka_topics.images)
    assert len(records) == len(times) + 1
    by_name = {}
    for record in records:
        assert record.key == CAMERA.encode()
        image = parse_image_message(record.key, record.value, record.headers)
        assert image.image_id == hashlib.sha256(record.value).hexdigest()
        assert image.camera_id == CAMERA and image.station_id == STATION
        assert image.content_type == "image/jpeg"
        by_name[image.file_name] = image
    assert set(by_name) == {*times, "DCIM/100EK113/IMG_0100.JPG"}
    for name, when in times.items():
        assert by_name[name].capture_time == when
        assert by_name[name].payload == (card / name).read_bytes()
    assert by_name["DCIM/100EK113/IMG_0100.JPG"].capture_time is None
    # One camera: one key, so one partition keeps the burst order.
    assert len({record.partition for record in records}) == 1
    in_partition_order = [parse_image_message(r.key, r.value, r.headers) for r in records]
    assert [image.file_name for image in in_partition_order] == sorted(by_name)

    metrics = textfile.read_text()
    assert 'snowtrap_upload_files_total{result="sent"} 9.0' in metrics
    assert 'snowtrap_upload_files_total{result="rejected"} 2.0' in metrics


def test_rerun_on_the_same_folder_sends_nothing_new(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
):
    card = tmp_path / "card"
    times = write_card(card, 6)
    settings = settings_for(kafka_bootstrap, kafka_topics, tmp_path / "ledger.sqlite3")

    first = Uploader(settings).run([card])
    assert len(first.sent) == len(times) and first.exit_code == 0
    before = topic_size(kafka_bootstrap, kafka_topics.images)
    assert before == len(times)

    # Same folder again, plus a copy of one image under another folder and name.
    (card / "copies").mkdir()
    (card / "copies" / "again.jpg").write_bytes((card / next(iter(times))).read_bytes())
    metrics = UploaderMetrics()
    second = Uploader(settings, metrics=metrics).run([card])

    assert second.sent == [] and second.failed == []
    assert len(second.skipped) == len(times) + 1
    assert any("already sent as" in outcome.reason for outcome in second.skipped)
    assert {o.path.name for o in second.rejected} == {"readme.txt", "IMG_9999.JPG"}
    assert topic_size(kafka_bootstrap, kafka_topics.images) == before
    assert metrics.files.labels(result="skipped")._value.get() == len(times) + 1


STOPPED_UPLOAD = textwrap.dedent(
    """
    import json, os, signal, sys
    from snowtrap.stream.uploader import Uploader, UploaderSettings, stop_on_sigterm

    args = json.loads(sys.argv[1])
    acked = []

    def stop_after_k(outcome):
        acked.append(outcome)
        if len(acked) == args["k"]:
            if args["how"] == "crash":
                os._exit(137)  # as hard as SIGKILL: no cleanup, no flush, no close
            os.kill(os.getpid(), signal.SIGTERM)

    stop_on_sigterm()
    summary = Uploader(UploaderSettings(**args["settings"]), on_ack=stop_after_k).run(
        [args["card"]]
    )
    print(json.dumps({"sent": len(summary.sent), "interrupted": summary.interrupted}))
    sys.exit(summary.exit_code)
    """
)


def upload_stopped_after(
    k: int, how: str, card: Path, settings: UploaderSettings
) -> subprocess.CompletedProcess[str]:
    """Upload `card` in a child process that is stopped at the k-th acknowledgement:
    `crash` (as hard as SIGKILL) or `sigterm` (as a service manager stops it)."""
    args = {"k": k, "how": how, "card": str(card), "settings": settings.model_dump(mode="json")}
    return subprocess.run(
        [sys.executable, "-c", STOPPED_UPLOAD, json.dumps(args)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_crash_midway_then_rerun_sends_only_the_rest(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
):
    card = tmp_path / "card"
    times = write_card(card, 12)
    ledger_path = tmp_path / "ledger.sqlite3"
    # One send in flight at a time: at the K-th acknowledgement nothing else was sent, so
    # the topic holds exactly K images when the process dies.
    settings = settings_for(kafka_bootstrap, kafka_topics, ledger_path, max_in_flight=1)
    k = 5
    crashed = upload_stopped_after(k, "crash", card, settings)
    assert crashed.returncode == 137, crashed.stderr
    with UploadLedger(ledger_path) as ledger:
        assert ledger.count(kafka_topics.images) == k
    assert topic_size(kafka_bootstrap, kafka_topics.images) == k

    rerun = Uploader(settings.model_copy(update={"max_in_flight": 32})).run([card])

    assert len(rerun.sent) == len(times) - k
    assert len(rerun.skipped) == k
    records = consume_all(kafka_bootstrap, kafka_topics.images)
    ids = [headers_to_dict(r.headers)[H.IMAGE_ID].decode() for r in records]
    expected = {image_id_of((card / name).read_bytes()) for name in times}
    assert len(ids) == len(times) and set(ids) == expected
    with UploadLedger(ledger_path) as ledger:
        assert ledger.image_ids(kafka_topics.images) == expected


def test_sigterm_settles_the_sends_in_flight_before_stopping(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
):
    card = tmp_path / "card"
    times = write_card(card, 16)
    ledger_path = tmp_path / "ledger.sqlite3"
    settings = settings_for(kafka_bootstrap, kafka_topics, ledger_path, max_in_flight=8)
    stopped = upload_stopped_after(3, "sigterm", card, settings)
    assert stopped.returncode == 130, stopped.stderr
    report = json.loads(stopped.stdout.strip().splitlines()[-1])
    assert report["interrupted"] and 3 <= report["sent"] < len(times)
    # Every image Kafka took is in the ledger: nothing will be sent twice.
    with UploadLedger(ledger_path) as ledger:
        assert ledger.count(kafka_topics.images) == report["sent"]
    assert topic_size(kafka_bootstrap, kafka_topics.images) == report["sent"]

    rerun = Uploader(settings).run([card])
    assert len(rerun.sent) == len(times) - report["sent"]
    assert topic_size(kafka_bootstrap, kafka_topics.images) == len(times)


def test_image_over_the_message_limit_goes_as_a_claim_check(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
):
    card = tmp_path / "card"
    card.mkdir()
    small = trap_jpeg(1, datetime(2024, 5, 1, 12, 0, 0))
    big = trap_jpeg(2, datetime(2024, 5, 1, 12, 0, 1), size=(640, 480))
    (card / "small.jpg").write_bytes(small)
    (card / "big.jpg").write_bytes(big)
    limit = 100 * 1024
    assert len(small) < limit - 16 * 1024 < len(big)
    store = tmp_path / "claim-checks"
    settings = settings_for(
        kafka_bootstrap,
        kafka_topics,
        tmp_path / "ledger.sqlite3",
        max_message_bytes=limit,
        header_room_bytes=16 * 1024,
        claim_check_store=str(store),
    )
    metrics = UploaderMetrics()

    summary = Uploader(settings, metrics=metrics).run([card])

    assert len(summary.sent) == 2 and summary.exit_code == 0
    records = {r.value == b"": r for r in consume_all(kafka_bootstrap, kafka_topics.images)}
    claim = parse_image_message(records[True].key, records[True].value, records[True].headers)
    assert claim.payload is None
    assert claim.image_id == image_id_of(big) and claim.size_bytes == len(big)
    assert claim.claim_check == (store / f"{claim.image_id}.jpg").as_uri()
    assert (store / f"{claim.image_id}.jpg").read_bytes() == big
    assert claim.capture_time == datetime(2024, 5, 1, 12, 0, 1)
    inline = parse_image_message(records[False].key, records[False].value, records[False].headers)
    assert inline.payload == small and inline.claim_check is None
    assert metrics.claim_checks._value.get() == 1
