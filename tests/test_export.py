"""MegaDetector export: the validator's rules, the CSV numbers, and reading real topics by
time range, offset range or everything."""

from __future__ import annotations

import copy
import csv
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from snowtrap.cli import main as snowtrap_main
from snowtrap.stream.contracts import (
    DeadLetter,
    Detection,
    DetectionRecord,
    H,
    build_deadletter_message,
    build_detection_message,
    image_id_of,
)
from snowtrap.stream.export import (
    Collected,
    ExportError,
    ExportSettings,
    ReadRange,
    build_megadetector,
    export_megadetector,
    parse_offsets,
    parse_time,
    summary_rows,
)
from snowtrap.stream.megadetector import fit_boxes_inside_image, validate_megadetector_file
from snowtrap.stream.topics import TopicNames

T0 = datetime(2024, 3, 1, 6, 0, 0, tzinfo=UTC)


def record(
    n: int,
    *,
    camera: str = "cam-01",
    boxes: tuple[tuple[float, tuple[float, float, float, float]], ...] = (),
    night: bool = False,
    captured: datetime | None = None,
    processed_at: float | None = None,
) -> DetectionRecord:
    """A detection record for synthetic image number `n` (its id is a real sha256)."""
    return DetectionRecord(
        image_id=image_id_of(f"image {n}".encode()),
        file=f"{camera}/DCIM/IMG_{n:04d}.JPG",  # as the worker writes it
        detections=[Detection("1", conf, bbox) for conf, bbox in boxes],
        leopard_score=max((conf for conf, _ in boxes), default=0.01),
        gate_threshold=0.3,
        detector_ran=bool(boxes),
        model_name="snowtrap-effnet",
        model_version="1.2.0",
        camera_id=camera,
        station_id="station-k2",
        capture_time=captured or (T0.replace(tzinfo=None) + timedelta(minutes=n)),
        width=1920,
        height=1080,
        is_night=night,
        sent_at=1_700_000_000.0 + n,
        processed_at=processed_at or 1_700_000_010.0 + n,
    )


def settings_for(topics: TopicNames | None = None, **extra: Any) -> ExportSettings:
    return ExportSettings(topics=topics or TopicNames(), **extra)


def collected_of(*records: DetectionRecord) -> Collected:
    collected = Collected()
    for offset, item in enumerate(records):
        collected.add_detection(item, 0, offset)
    return collected


def valid_document() -> dict[str, Any]:
    collected = collected_of(
        record(1, boxes=((0.91, (0.1, 0.2, 0.3, 0.4)), (0.35, (0.5, 0.5, 0.5, 0.5)))),
        record(2),
        record(3, night=True, boxes=((0.77, (0.0, 0.0, 1.0, 1.0)),)),
    )
    return build_megadetector(collected, settings_for(), ReadRange())


# --- the validator ------------------------------------------------------------------------


def test_a_built_document_is_valid_and_carries_the_format_fields():
    document = valid_document()
    assert validate_megadetector_file(document) == []
    info = document["info"]
    assert info["format_version"] == "1.4"
    assert info["detector"] == "snowtrap-effnet_1.2.0"
    assert info["detection_completion_time"] == "2023-11-14 22:13:33"
    assert info["detector_metadata"]["typical_detection_threshold"] == 0.5
    assert info["detector_metadata"]["conservative_detection_threshold"] == 0.2
    assert "classifier" in info and "classifier_metadata" in info
    assert document["detection_categories"] == {"1": "snow leopard"}
    files = [image["file"] for image in document["images"]]
    assert files == [f"cam-01/DCIM/IMG_000{n}.JPG" for n in (1, 2, 3)]
    assert document["images"][1]["detections"] == []
    assert all(isinstance(d["conf"], float) for d in document["images"][0]["detections"])


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("break_it", "problem"),
    [
        (_set("info", _DELETE), "required field 'info' is missing"),
        (_set("images", _DELETE), "required field 'images' is missing"),
        (_set("detection_categories", _DELETE), "required field 'detection_categories'"),
        (_set("info.format_version", _DELETE), "info.format_version is missing"),
        (_set("info.format_version", "1.2"), "older than 1.4"),
        (_set("info.format_version", 1.4), "not a string-formatted version"),
        (_set("detection_categories.one", "leopard"), "not a non-negative string-formatted int"),
        (
            _set("images.0.detections.0.category", "2"),
            "category '2' is not in detection_categories",
        ),
        (_set("images.0.detections.0.conf", 1.5), "conf 1.5 is outside [0, 1]"),
        (_set("images.0.detections.0.conf", 1), "conf 1 must be a float"),
        (_set("images.0.detections.0.bbox", [0.1, 0.2, 0.3]), "must be 4 numbers"),
        (_set("images.0.detections.0.bbox", [0.8, 0.2, 0.3, 0.4]), "extends past the image"),
        (_set("images.0.detections.0.bbox", [0.1, 0.7, 0.3, 0.4]), "extends past the image"),
        (_set("images.0.detections.0.bbox", [-0.1, 0.2, 0.3, 0.4]), "not normalised"),
        (_set("images.0.detections.0.bbox", [210, 40, 300, 200]), "not normalised"),
        (_set("images.0.detections.0.bbox", _DELETE), "has no bbox"),
        (_set("images.1.file", "cam-01/DCIM/IMG_0001.JPG"), "also appears at images[0]"),
        (_set("images.1.failure", "decode: truncated"), "detections must be null"),
        (_set("images.1.detections", _DELETE), "detections must be a list"),
        (_set("info.detector_metadata.typical_detection_threshold", 2), "must be a number in"),
    ],
)
def test_broken_documents_fail_with_the_right_problem(
    break_it: Callable[[dict[str, Any]], None], problem: str
):
    document = copy.deepcopy(valid_document())
    break_it(document)
    problems = validate_megadetector_file(document)
    assert any(problem in text for text in problems), problems


def test_failure_entries_need_null_detections_and_non_dicts_are_refused():
    document = valid_document()
    document["images"].append({"file": "cam-01/bad.jpg", "failure": "decode: truncated"})
    document["images"].append({"file": "cam-01/bad2.jpg", "failure": "x", "detections": None})
    assert validate_megadetector_file(document) == []
    assert validate_megadetector_file([]) != []
    assert validate_megadetector_file({"info": {}, "detection_categories": {}, "images": [1]})


def test_boxes_pushed_past_the_edge_by_rounding_are_fitted_back():
    detection = {"category": "1", "conf": 0.9, "bbox": [0.1235, 0.5, 0.8766, 0.5001]}
    entry = {"file": "a.jpg", "detections": [detection]}
    document = copy.deepcopy(valid_document())
    document["images"][0] = entry
    assert validate_megadetector_file(document)
    document["images"][0] = fit_boxes_inside_image(entry)
    assert validate_megadetector_file(document) == []
    assert document["images"][0]["detections"][0]["bbox"] == [0.1235, 0.5, 0.8765, 0.5]


# --- building blocks ----------------------------------------------------------------------


def test_csv_rows_per_camera_and_day():
    day2 = T0.replace(tzinfo=None) + timedelta(days=1)
    rows = summary_rows(
        [
            record(1, boxes=((0.91, (0.1, 0.1, 0.2, 0.2)), (0.62, (0.5, 0.5, 0.2, 0.2)))),
            record(2, boxes=((0.31, (0.1, 0.1, 0.2, 0.2)),), night=True),  # below the threshold
            record(3),
            record(4, captured=day2, boxes=((0.55, (0.1, 0.1, 0.2, 0.2)),), night=True),
            record(5, camera="cam-02", boxes=((0.99, (0.0, 0.0, 0.5, 0.5)),)),
        ],
        threshold=0.5,
    )
    assert rows == [
        {"camera_id": "cam-01", "date": "2024-03-01", "images": 3, "images_with_leopard": 1,
         "leopard_boxes": 2, "night_images": 1, "max_conf": 0.91},
        {"camera_id": "cam-01", "date": "2024-03-02", "images": 1, "images_with_leopard": 1,
         "leopard_boxes": 1, "night_images": 1, "max_conf": 0.55},
        {"camera_id": "cam-02", "date": "2024-03-01", "images": 1, "images_with_leopard": 1,
         "leopard_boxes": 1, "night_images": 0, "max_conf": 0.99},
    ]  # fmt: skip


def test_images_sharing_a_file_name_are_both_kept_under_unique_names():
    first, second = record(1), record(2)
    clash = DetectionRecord(**{**second.__dict__, "file": first.file})
    document = build_megadetector(collected_of(first, clash), settings_for(), ReadRange())
    files = sorted(image["file"] for image in document["images"])
    assert files[0] == "cam-01/DCIM/IMG_0001.JPG"
    assert files[1].startswith("cam-01/DCIM/IMG_0001~") and files[1].endswith(".JPG")
    assert validate_megadetector_file(document) == []


def test_range_arguments():
    assert parse_offsets("120") == 120
    assert parse_offsets("0:10,3:7") == {0: 10, 3: 7}
    with pytest.raises(ValueError):
        parse_offsets("0:-1")
    assert parse_time("2024-03-01T06:00:00") == T0
    assert parse_time("2024-03-01T07:00:00+01:00") == T0
    with pytest.raises(ValueError):
        ReadRange(from_time=T0, to_offsets=5)


def test_unreachable_broker_is_an_export_error(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    settings = settings_for(bootstrap_servers=dead, connect_timeout_s=2)
    with pytest.raises(ExportError, match="could not reach Kafka"):
        export_megadetector(settings, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


# --- real broker --------------------------------------------------------------------------


def produce(bootstrap: str, topic: str, messages: list[tuple[Any, ...]]) -> list[tuple[int, int]]:
    """Send (key, value, headers, timestamp_ms) tuples; return (partition, offset) of each."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=20_000_000)
    try:
        futures = [
            producer.send(topic, key=key, value=value, headers=headers, timestamp_ms=timestamp)
            for key, value, headers, timestamp in messages
        ]
        metadata = [future.get(timeout=30) for future in futures]
        return [(m.partition, m.offset) for m in metadata]
    finally:
        producer.close()


# Record timestamps sit in the last hour, not at T0 (2024): the broker's retention check,
# every 5 minutes, deletes records older than the topic's retention (7 days for detections),
# so 2024 timestamps made these tests fail whenever a check ran between produce and export.
SENT0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)


def sent(minutes: int) -> datetime:
    """The send time `minutes` after SENT0."""
    return SENT0 + timedelta(minutes=minutes)


def at(minutes: int) -> int:
    """Kafka record timestamp (ms) of `sent(minutes)`."""
    return int(sent(minutes).timestamp() * 1000)


def test_export_everything_keeps_the_last_record_per_image_and_writes_valid_files(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
):
    leopard = record(1, boxes=((0.42, (0.1, 0.2, 0.3, 0.4)),))
    leopard_again = record(
        1, boxes=((0.93, (0.1, 0.2, 0.3, 0.4)), (0.81, (0.6, 0.1, 0.2, 0.2))), processed_at=1.8e9
    )
    empty, night = record(2), record(3, night=True)
    detections = [build_detection_message(r) for r in (leopard, empty, leopard_again, night)]
    messages = [(*message, at(i)) for i, message in enumerate(detections)]
    messages.append((b"junk", b"{not json", [], at(5)))
    produce(kafka_bootstrap, kafka_topics.detections, messages)

    corrupt_bytes = b"\xff\xd8\xff\xe0 cut short"
    letters = [
        DeadLetter(
            reason="truncated",
            stage="decode",
            error="image file is truncated",
            source_topic=kafka_topics.images,
            source_partition=0,
            source_offset=4,
            key=b"cam-01",
            value=value,
            headers={
                H.IMAGE_ID: image_id_of(value).encode(),
                H.CAMERA_ID: b"cam-01",
                H.FILE_NAME: name.encode(),
            },
        )
        for value, name in ((corrupt_bytes, "DCIM/IMG_0009.JPG"), (b"image 2", "DCIM/IMG_0002.JPG"))
    ]
    produce(
        kafka_bootstrap,
        kafka_topics.deadletter,
        [(*build_deadletter_message(letter), at(6)) for letter in letters],
    )

    out, summary = tmp_path / "md.json", tmp_path / "summary.csv"
    result = export_megadetector(
        settings_for(kafka_topics, bootstrap_servers=kafka_bootstrap),
        out,
        csv_path=summary,
        include_deadletter=True,
    )

    document = json.loads(out.read_text())
    assert validate_megadetector_file(document) == []
    by_file = {image["file"]: image for image in document["images"]}
    assert set(by_file) == {
        "cam-01/DCIM/IMG_0001.JPG",
        "cam-01/DCIM/IMG_0002.JPG",
        "cam-01/DCIM/IMG_0003.JPG",
        "cam-01/DCIM/IMG_0009.JPG",
    }
    assert [d["conf"] for d in by_file["cam-01/DCIM/IMG_0001.JPG"]["detections"]] == [0.93, 0.81]
    # The image that failed and was processed later keeps its result; the other is a failure.
    assert by_file["cam-01/DCIM/IMG_0002.JPG"]["detections"] == []
    assert by_file["cam-01/DCIM/IMG_0009.JPG"] == {
        "file": "cam-01/DCIM/IMG_0009.JPG", "failure": "decode: truncated", "detections": None,
    }  # fmt: skip
    assert (result.images, result.failures, result.duplicates_dropped) == (3, 1, 1)
    assert len(result.bad_records) == 1 and "not JSON" in result.bad_records[0]
    with summary.open() as rows:
        assert list(csv.DictReader(rows)) == [
            {"camera_id": "cam-01", "date": "2024-03-01", "images": "3",
             "images_with_leopard": "1", "leopard_boxes": "2", "night_images": "1",
             "max_conf": "0.93"},
        ]  # fmt: skip


def test_time_and_offset_ranges_select_the_right_records(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
):
    records = [record(n) for n in range(12)]
    positions = produce(
        kafka_bootstrap,
        kafka_topics.detections,
        [(*build_detection_message(r), at(n)) for n, r in enumerate(records)],
    )
    settings = settings_for(kafka_topics, bootstrap_servers=kafka_bootstrap)

    def exported(read_range: ReadRange) -> set[str]:
        result = export_megadetector(settings, tmp_path / "out.json", read_range=read_range)
        return {image["file"] for image in result.document["images"]}

    def files(numbers: list[int]) -> set[str]:
        return {records[n].file for n in numbers}

    assert exported(ReadRange()) == files(list(range(12)))
    minutes_3_to_7 = ReadRange(from_time=sent(3), to_time=sent(7))
    assert exported(minutes_3_to_7) == files([3, 4, 5, 6])
    assert exported(ReadRange(from_time=sent(10))) == files([10, 11])
    assert exported(ReadRange(to_time=sent(2))) == files([0, 1])
    assert exported(ReadRange(from_offsets=1, to_offsets=3)) == files(
        [n for n, (_, offset) in enumerate(positions) if 1 <= offset < 3]
    )
    busiest = max({p for p, _ in positions}, key=[p for p, _ in positions].count)
    assert exported(ReadRange(from_offsets={busiest: 1}, to_offsets={busiest: 2})) == files(
        [n for n, position in enumerate(positions) if position == (busiest, 1)]
    )


def test_cli_export_and_refusal_of_an_invalid_result(
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    monkeypatch.setenv("SNOWTRAP_TOPICS__DETECTIONS", kafka_topics.detections)
    monkeypatch.setenv("SNOWTRAP_TOPICS__DEADLETTER", kafka_topics.deadletter)
    good = record(1, boxes=((0.88, (0.2, 0.2, 0.2, 0.2)),))
    produce(kafka_bootstrap, kafka_topics.detections, [(*build_detection_message(good), at(1))])
    out = tmp_path / "md.json"
    args = ["export", "--format", "megadetector", str(out), "--bootstrap-servers", kafka_bootstrap]

    assert snowtrap_main([*args, "--csv", str(tmp_path / "s.csv"), "--include-deadletter"]) == 0
    assert "1 images, 0 failures" in capsys.readouterr().out
    assert validate_megadetector_file(json.loads(out.read_text())) == []
    out.unlink()

    # A worker bug publishes a confidence above 1: the export refuses to write the file.
    broken = record(2, boxes=((1.7, (0.2, 0.2, 0.2, 0.2)),))
    produce(kafka_bootstrap, kafka_topics.detections, [(*build_detection_message(broken), at(2))])
    assert snowtrap_main(args) == 1
    err = capsys.readouterr().err
    assert "not be a valid MegaDetector file" in err and "conf 1.7 is outside [0, 1]" in err
    assert not out.exists()
    assert snowtrap_main([*args, "--from-offsets", "0", "--include-deadletter"]) == 1
    assert "offsets are per topic" in capsys.readouterr().err


def test_records_of_an_aborted_transaction_are_not_exported(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
):
    """A worker batch cut short leaves records in an aborted transaction (exactly once):
    the export reads `read_committed`, so they never count."""
    committed, aborted = record(1), record(2, boxes=((0.9, (0.1, 0.1, 0.2, 0.2)),))
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"export-test-{tmp_path.name}"
    )
    try:
        producer.init_transactions()
        for item, finish in ((aborted, producer.abort_transaction), (committed, None)):
            producer.begin_transaction()
            key, value, headers = build_detection_message(item)
            producer.send(kafka_topics.detections, key=key, value=value, headers=headers)
            producer.flush()
            (finish or producer.commit_transaction)()
    finally:
        producer.close()

    out = tmp_path / "md.json"
    result = export_megadetector(
        settings_for(kafka_topics, bootstrap_servers=kafka_bootstrap, idle_timeout_s=10), out
    )
    files = [image["file"] for image in json.loads(out.read_text())["images"]]
    assert files == [committed.file]
    assert (result.images, result.duplicates_dropped) == (1, 0)
