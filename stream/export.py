"""`snowtrap export`: detection records from Kafka into the files biologists work with.

Reads `trap.detections` over a bounded range (a time range, an offset range, or everything
up to the end offsets as they were when the export started: it never waits for new
records), keeps the last record of each image id (the worker may re-publish an image after
a restart, always under the same id), and writes:

- a MegaDetector batch-output file (format 1.4, see `stream.megadetector`) that Timelapse and
  the other camera-trap tools load; optionally with the images that failed (`trap.deadletter`)
  as `failure` entries. The file is validated first and never written when invalid;
- a CSV summary per camera and capture day.

Image paths in the file follow `file_template` (default `{file}`: the path the worker put in
the record, `<camera id>/<path as uploaded>`), so the images of several cameras sit under one
folder per camera when they are reviewed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import Field, model_validator

from snowtrap.core.settings import SettingsFileError, SnowtrapSettings
from snowtrap.stream.contracts import (
    LEOPARD_CATEGORY,
    ContractError,
    DeadLetter,
    DetectionRecord,
    H,
    parse_deadletter_message,
    parse_detection_message,
)
from snowtrap.stream.megadetector import (
    batch_output,
    completion_time,
    failure_entry,
    fit_boxes_inside_image,
    validate_megadetector_file,
)
from snowtrap.stream.settings import KafkaSettings
from snowtrap.stream.topics import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

FORMATS = ("megadetector",)
CSV_COLUMNS = (
    "camera_id",
    "date",
    "images",
    "images_with_leopard",
    "leopard_boxes",
    "night_images",
    "max_conf",
)
UNKNOWN_DATE = "unknown"
"""CSV date of images whose camera wrote no capture time."""


class ExportSettings(SnowtrapSettings, KafkaSettings):
    """What `snowtrap export` reads (SNOWTRAP_* env vars, `--config` YAML, flags)."""

    typical_detection_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Default confidence the review tools show boxes from; also what the CSV counts."""
    conservative_detection_threshold: float = Field(default=0.2, ge=0.0, le=1.0)
    """Lower default for reviewers who would rather see every possible leopard."""
    file_template: str = "{file}"
    """Image path in the output; fields: file (the record's, `<camera>/<uploaded path>`),
    camera_id, station_id, image_id. E.g. `{station_id}/{file}`."""
    connect_timeout_s: float = Field(default=30.0, gt=0)
    idle_timeout_s: float = Field(default=60.0, gt=0)
    """Give up when records are known to remain but none arrive for this long."""
    client_id: str = "snowtrap-export"

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> ExportSettings:
        if self.conservative_detection_threshold > self.typical_detection_threshold:
            raise ValueError("conservative_detection_threshold must not exceed the typical one")
        try:
            self.file_template.format(camera_id="c", station_id="s", file="f", image_id="i")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"file_template {self.file_template!r}: {error}") from error
        return self

    def consumer_config(self) -> dict[str, Any]:
        """A group-less consumer (nothing committed: an export never moves anyone's offsets)."""
        timeout_ms = int(self.connect_timeout_s * 1000)
        return {
            **self.kafka_python_config(),
            "client_id": self.client_id,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            # Dead letters carry the original image, up to the topic limit.
            "max_partition_fetch_bytes": MAX_MESSAGE_BYTES + 1024 * 1024,
            "fetch_max_bytes": 2 * MAX_MESSAGE_BYTES + 1024 * 1024,
            "bootstrap_timeout_ms": timeout_ms,
            "request_timeout_ms": max(timeout_ms, 30_000),
        }


class ExportError(RuntimeError):
    """The export could not be done (Kafka, range or an invalid result); nothing written."""


# --- ranges -------------------------------------------------------------------------------

OffsetSpec = int | dict[int, int]
"""One offset for every partition, or offsets by partition. A range given by partition reads
only the partitions it names; a partition named on one side only runs to the topic's
start or end on the other."""


def parse_offsets(text: str) -> OffsetSpec:
    """`"120"` (all partitions) or `"0:120,3:57"` (by partition)."""
    text = text.strip()
    try:
        if ":" not in text:
            value = int(text)
            if value < 0:
                raise ValueError
            return value
        offsets: dict[int, int] = {}
        for part in text.split(","):
            partition, offset = part.split(":")
            offsets[int(partition)] = int(offset)
        if any(p < 0 or o < 0 for p, o in offsets.items()):
            raise ValueError
        return offsets
    except ValueError:
        raise ValueError(f"offsets {text!r}: expected N or PARTITION:OFFSET,...") from None


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without a zone is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"time {text!r} is not ISO 8601 (e.g. 2024-03-01T06:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ReadRange:
    """Which records to read: by record time [from, to), by offsets [from, to), or all."""

    from_time: datetime | None = None
    to_time: datetime | None = None
    from_offsets: OffsetSpec | None = None
    to_offsets: OffsetSpec | None = None

    def __post_init__(self) -> None:
        by_time = self.from_time is not None or self.to_time is not None
        by_offset = self.from_offsets is not None or self.to_offsets is not None
        if by_time and by_offset:
            raise ValueError("give a time range or an offset range, not both")

    @property
    def by_offsets(self) -> bool:
        return self.from_offsets is not None or self.to_offsets is not None

    @property
    def named_partitions(self) -> set[int] | None:
        """Partitions an offset range names (`P:N`); None when it covers every partition."""
        named = [spec for spec in (self.from_offsets, self.to_offsets) if isinstance(spec, dict)]
        if not named:
            return None
        return {partition for spec in named for partition in spec}

    @property
    def time_window_ms(self) -> tuple[int | None, int | None]:
        def ms(value: datetime | None) -> int | None:
            return None if value is None else int(value.timestamp() * 1000)

        return ms(self.from_time), ms(self.to_time)

    def describe(self) -> dict[str, Any]:
        if self.by_offsets:
            return {"from_offsets": self.from_offsets, "to_offsets": self.to_offsets}
        if self.from_time or self.to_time:
            return {
                "from_time": self.from_time.isoformat() if self.from_time else None,
                "to_time": self.to_time.isoformat() if self.to_time else None,
            }
        return {"all": True}


def _offset_for(spec: OffsetSpec | None, partition: int, default: int) -> int:
    if spec is None:
        return default
    if isinstance(spec, int):
        return spec
    return spec.get(partition, default)


def read_topic(consumer: Any, topic: str, read_range: ReadRange, idle_timeout_s: float) -> Iterator:
    """The topic's records within `read_range`, per partition in offset order; then stops.

    The end of each partition is fixed when the read starts (the end offsets, or the offsets
    the range's upper bound maps to), so a busy topic still gives a bounded export.
    """
    from kafka import TopicPartition

    partition_ids = consumer.partitions_for_topic(topic)
    if not partition_ids:
        raise ExportError(f"topic {topic!r} does not exist")
    partitions = [TopicPartition(topic, p) for p in sorted(partition_ids)]
    first = consumer.beginning_offsets(partitions)
    end = consumer.end_offsets(partitions)
    from_ms, to_ms = read_range.time_window_ms
    if read_range.by_offsets:
        named = read_range.named_partitions
        if named is not None:
            unknown = named - set(partition_ids)
            if unknown:
                raise ExportError(f"topic {topic!r} has no partition(s) {sorted(unknown)}")
            partitions = [tp for tp in partitions if tp.partition in named]
        start = {
            tp: _offset_for(read_range.from_offsets, tp.partition, first[tp]) for tp in partitions
        }
        stop = {tp: _offset_for(read_range.to_offsets, tp.partition, end[tp]) for tp in partitions}
    else:
        start = dict(first) if from_ms is None else _offsets_at(consumer, partitions, from_ms, end)
        stop = dict(end) if to_ms is None else _offsets_at(consumer, partitions, to_ms, end)
    start = {tp: min(max(start[tp], first[tp]), end[tp]) for tp in partitions}
    stop = {tp: min(max(stop[tp], start[tp]), end[tp]) for tp in partitions}
    remaining = [tp for tp in partitions if start[tp] < stop[tp]]
    consumer.assign(partitions)
    for tp in partitions:
        consumer.seek(tp, start[tp])
    consumer.pause(*[tp for tp in partitions if tp not in remaining])
    last_progress = time.monotonic()
    while remaining:
        batches = consumer.poll(timeout_ms=500)
        for tp, records in sorted(batches.items(), key=lambda item: item[0].partition):
            for record in records:
                if record.offset >= stop[tp]:
                    continue
                # offsets_for_times is exact only for ordered timestamps: filter each record.
                if from_ms is not None and record.timestamp < from_ms:
                    continue
                if to_ms is not None and record.timestamp >= to_ms:
                    continue
                yield record
            if records:
                last_progress = time.monotonic()
        for tp in list(remaining):
            if consumer.position(tp) >= stop[tp]:
                remaining.remove(tp)
                consumer.pause(tp)
        if remaining and time.monotonic() - last_progress > idle_timeout_s:
            left = {f"{tp.partition}": f"{consumer.position(tp)}/{stop[tp]}" for tp in remaining}
            raise ExportError(
                f"{topic}: no records for {idle_timeout_s:g} s while some remain (at/end: {left})"
            )


def _offsets_at(consumer: Any, partitions: list, at_ms: int, end: dict) -> dict:
    """First offset whose timestamp is >= at_ms, per partition (the end if there is none)."""
    found = consumer.offsets_for_times({tp: at_ms for tp in partitions})
    return {tp: found[tp].offset if found.get(tp) is not None else end[tp] for tp in partitions}


# --- collecting ---------------------------------------------------------------------------


@dataclass
class Collected:
    """Detection records and dead letters, one per image id, plus what was dropped."""

    detections: dict[str, DetectionRecord] = field(default_factory=dict)
    failures: dict[str, DeadLetter] = field(default_factory=dict)
    duplicates_dropped: int = 0
    bad_records: list[str] = field(default_factory=list)
    _positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add_detection(self, record: DetectionRecord, partition: int, offset: int) -> None:
        """Keep the last record per image id: later offset in a partition; else later time."""
        earlier = self.detections.get(record.image_id)
        if earlier is not None:
            self.duplicates_dropped += 1
            earlier_partition, earlier_offset = self._positions[record.image_id]
            if earlier_partition == partition:
                if offset < earlier_offset:
                    return
            elif record.processed_at < earlier.processed_at:
                return
        self.detections[record.image_id] = record
        self._positions[record.image_id] = (partition, offset)

    def add_failure(self, letter: DeadLetter) -> None:
        if letter.image_id in self.failures:
            self.duplicates_dropped += 1
        self.failures[letter.image_id] = letter


def collect_detections(records: Iterable, collected: Collected) -> None:
    for record in records:
        try:
            detection = parse_detection_message(record.value)
        except ContractError as error:
            where = f"{record.topic}[{record.partition}]@{record.offset}"
            collected.bad_records.append(f"{where}: {error}")
            continue
        collected.add_detection(detection, record.partition, record.offset)


def collect_failures(records: Iterable, collected: Collected) -> None:
    for record in records:
        collected.add_failure(parse_deadletter_message(record.key, record.value, record.headers))


# --- building the outputs -----------------------------------------------------------------


def _header(letter: DeadLetter, name: str) -> str:
    return letter.headers.get(name, b"").decode("utf-8", "replace")


def failed_image_file(camera_id: str, file_name: str) -> str:
    """The `file` a detection record would have had: the worker writes `<camera>/<name>`."""
    return f"{camera_id}/{file_name}"


def build_megadetector(
    collected: Collected, settings: ExportSettings, read_range: ReadRange
) -> dict:
    """The batch-output document for the collected records (not yet validated)."""
    template = settings.file_template
    named: list[tuple[str, str, dict[str, Any]]] = []  # (file, image id, entry)
    for image_id, record in collected.detections.items():
        entry = fit_boxes_inside_image(record.megadetector_entry())
        file = template.format(
            camera_id=record.camera_id, station_id=record.station_id, file=record.file,
            image_id=image_id,
        )  # fmt: skip
        named.append((file, image_id, {**entry, "file": file}))
    for image_id, letter in collected.failures.items():
        if image_id in collected.detections:
            continue  # it failed once and was processed later: the result stands
        camera_id = _header(letter, H.CAMERA_ID) or "unknown-camera"
        file = template.format(
            camera_id=camera_id,
            station_id=_header(letter, H.STATION_ID) or "unknown-station",
            file=failed_image_file(camera_id, _header(letter, H.FILE_NAME) or image_id),
            image_id=image_id,
        )
        named.append((file, image_id, failure_entry(file, f"{letter.stage}: {letter.reason}")))
    images = _unique_file_names(named)

    records = list(collected.detections.values())
    models = Counter(f"{r.model_name}_{r.model_version}" for r in records)
    detector = "+".join(sorted(models)) or "snowtrap"
    finished = max((r.processed_at for r in records), default=time.time())
    gates = sorted({r.gate_threshold for r in records})
    return batch_output(
        images,
        detector=detector,
        detection_completion_time=completion_time(finished),
        typical_detection_threshold=settings.typical_detection_threshold,
        conservative_detection_threshold=settings.conservative_detection_threshold,
        detector_metadata={"snowtrap_models": dict(models)},
        classifier=f"{detector} leopard classifier (gates the detector)",
        classifier_metadata={
            # The classifier's P(leopard) gate: images below it never reached the detector.
            "typical_classification_threshold": gates[0] if gates else None,
            "gate_thresholds": gates,
            "images_sent_to_detector": sum(r.detector_ran for r in records),
        },
        extra_info={
            "snowtrap_export": {
                "topic": settings.topics.detections,
                "range": read_range.describe(),
                "detection_records": len(records),
                "failures": sum(1 for i in collected.failures if i not in collected.detections),
                "duplicates_dropped": collected.duplicates_dropped,
                "unreadable_records": len(collected.bad_records),
            }
        },
    )


def _unique_file_names(named: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Entries sorted by file; a name shared by different images gets the id inserted.

    Cameras restart their numbering (IMG_0001 again after a card swap), so two images can
    arrive under one name; the format needs unique names and neither image may be lost.
    """
    by_file: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for file, image_id, entry in named:
        by_file[file].append((image_id, entry))
    images: list[dict[str, Any]] = []
    renamed = 0
    for file, entries in by_file.items():
        entries.sort(key=lambda item: item[0])
        images.append(entries[0][1])
        for image_id, entry in entries[1:]:
            path = PurePosixPath(file)
            unique = str(path.with_name(f"{path.stem}~{image_id[:12]}{path.suffix}"))
            images.append({**entry, "file": unique})
            renamed += 1
    if renamed:
        log.warning(
            "%d image(s) shared a file name with another image; renamed with ~<id>", renamed
        )
    images.sort(key=lambda entry: entry["file"])
    return images


def summary_rows(records: Iterable[DetectionRecord], threshold: float) -> list[dict[str, Any]]:
    """Per camera and capture day: images, images with a leopard box >= threshold, such
    boxes, night (IR) images, and the highest leopard confidence."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        day = record.capture_time.date().isoformat() if record.capture_time else UNKNOWN_DATE
        row = rows.setdefault(
            (record.camera_id, day),
            {"camera_id": record.camera_id, "date": day, "images": 0, "images_with_leopard": 0,
             "leopard_boxes": 0, "night_images": 0, "max_conf": 0.0},
        )  # fmt: skip
        leopard_confs = [d.conf for d in record.detections if d.category == LEOPARD_CATEGORY]
        boxes = sum(1 for conf in leopard_confs if conf >= threshold)
        row["images"] += 1
        row["images_with_leopard"] += int(boxes > 0)
        row["leopard_boxes"] += boxes
        row["night_images"] += int(record.is_night)
        row["max_conf"] = max(row["max_conf"], *leopard_confs, 0.0)
    for row in rows.values():
        row["max_conf"] = round(row["max_conf"], 4)
    return [rows[key] for key in sorted(rows)]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with _atomic(path) as partial, partial.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


class _atomic:
    """Write to a temporary sibling, then rename: readers never see half a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(f".{path.name}.{os.getpid()}.partial")

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.partial

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if exc_type is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


# --- the export ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and what it dropped on the way."""

    output: Path
    images: int
    failures: int
    duplicates_dropped: int
    bad_records: list[str]
    csv: Path | None
    document: dict[str, Any]


def export_megadetector(
    settings: ExportSettings,
    output: Path,
    *,
    read_range: ReadRange | None = None,
    csv_path: Path | None = None,
    include_deadletter: bool = False,
) -> ExportResult:
    """Read, deduplicate, build, validate, write. Raises ExportError; writes nothing then."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    read_range = read_range or ReadRange()
    if include_deadletter and read_range.by_offsets:
        raise ExportError(
            "--include-deadletter needs a time range or everything: offsets are per topic"
        )
    collected = Collected()
    try:
        consumer = KafkaConsumer(**settings.consumer_config())
    except KafkaError as error:
        raise ExportError(
            f"could not reach Kafka at {settings.bootstrap_servers}: {error}"
        ) from error
    try:
        records = read_topic(
            consumer, settings.topics.detections, read_range, settings.idle_timeout_s
        )
        collect_detections(records, collected)
        if include_deadletter:
            letters = read_topic(
                consumer, settings.topics.deadletter, read_range, settings.idle_timeout_s
            )
            collect_failures(letters, collected)
    except KafkaError as error:
        raise ExportError(f"reading from Kafka at {settings.bootstrap_servers}: {error}") from error
    finally:
        consumer.close()
    for problem in collected.bad_records:
        log.warning("skipped unreadable detection record %s", problem)

    document = build_megadetector(collected, settings, read_range)
    problems = validate_megadetector_file(document)
    if problems:
        raise ExportError(
            "the export would not be a valid MegaDetector file, nothing written:\n  "
            + "\n  ".join(problems)
        )
    with _atomic(output) as partial:
        partial.write_text(json.dumps(document, indent=1) + "\n")
    if csv_path is not None:
        write_csv(
            csv_path,
            summary_rows(collected.detections.values(), settings.typical_detection_threshold),
        )
    failures = sum(1 for entry in document["images"] if entry.get("failure"))
    return ExportResult(
        output=output,
        images=len(document["images"]) - failures,
        failures=failures,
        duplicates_dropped=collected.duplicates_dropped,
        bad_records=collected.bad_records,
        csv=csv_path,
        document=document,
    )


# --- command line -------------------------------------------------------------------------


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`snowtrap export --format megadetector OUT.json [--csv CSV] [range] [...]`."""
    parser.add_argument("output", type=Path, metavar="OUT.json")
    parser.add_argument("--format", choices=FORMATS, default="megadetector")
    parser.add_argument("--csv", type=Path, help="also write a per-camera, per-day CSV summary")
    parser.add_argument("--from-time", type=parse_time, help="ISO 8601, inclusive (UTC if no zone)")
    parser.add_argument("--to-time", type=parse_time, help="ISO 8601, exclusive")
    parser.add_argument(
        "--from-offsets",
        type=parse_offsets,
        help="N (every partition) or P:N,P:N (only the partitions named); inclusive",
    )
    parser.add_argument(
        "--to-offsets", type=parse_offsets, help="N or P:N,P:N, like --from-offsets; exclusive"
    )
    parser.add_argument(
        "--include-deadletter",
        action="store_true",
        help="add images that could not be processed as 'failure' entries",
    )
    parser.add_argument("--config", type=Path, help="YAML settings file (ExportSettings)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, host:port,...")
    parser.add_argument("--typical-threshold", type=float, help="typical detection threshold")
    parser.add_argument("--conservative-threshold", type=float, help="conservative threshold")
    parser.add_argument("--file-template", help="image path, e.g. '{station_id}/{file}'")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="model bundle whose thresholds become the typical (crop) and conservative "
        "(detection) thresholds, unless given explicitly",
    )
    parser.set_defaults(run=_cli_export)


def bundle_thresholds(bundle: Path) -> dict[str, float]:
    """Typical = the bundle's crop threshold (boxes worth a close look), conservative = its
    detection threshold (every box the worker reports)."""
    from snowtrap.models.bundle import (  # here only: it loads ONNX Runtime
        BundleError,
        read_manifest,
    )

    try:
        thresholds = read_manifest(bundle).thresholds
    except BundleError as error:
        raise ValueError(f"--bundle: {error}") from error
    return {
        "typical_detection_threshold": max(thresholds.crop, thresholds.detection_confidence),
        "conservative_detection_threshold": thresholds.detection_confidence,
    }


def _cli_export(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    overrides = {
        "bootstrap_servers": args.bootstrap_servers,
        "typical_detection_threshold": args.typical_threshold,
        "conservative_detection_threshold": args.conservative_threshold,
        "file_template": args.file_template,
    }
    try:
        if args.bundle is not None:
            for key, value in bundle_thresholds(args.bundle).items():
                overrides[key] = value if overrides[key] is None else overrides[key]
        settings = ExportSettings.load(
            args.config, **{k: v for k, v in overrides.items() if v is not None}
        )
        read_range = ReadRange(args.from_time, args.to_time, args.from_offsets, args.to_offsets)
    except (SettingsFileError, ValidationError, ValueError) as error:
        print(f"snowtrap export: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        result = export_megadetector(
            settings,
            args.output,
            read_range=read_range,
            csv_path=args.csv,
            include_deadletter=args.include_deadletter,
        )
    except ExportError as error:
        print(f"snowtrap export: {error}", file=sys.stderr)
        return 1
    print(
        f"wrote {result.output}: {result.images} images, {result.failures} failures "
        f"(MegaDetector format {result.document['info']['format_version']}, valid)"
    )
    if result.duplicates_dropped:
        print(f"dropped {result.duplicates_dropped} duplicate record(s) of the same image id")
    if result.bad_records:
        print(f"skipped {len(result.bad_records)} unreadable record(s); see the warnings above")
    if result.csv:
        print(f"wrote {result.csv}")
    return 0
