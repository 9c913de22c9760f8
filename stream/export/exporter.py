"""`export_megadetector`: read the range, collect, build, validate, write atomically."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snowtrap.stream.export.collect import Collected, collect_detections, collect_failures
from snowtrap.stream.export.outputs import atomic_file, build_megadetector, summary_rows, write_csv
from snowtrap.stream.export.settings import ExportError, ExportSettings
from snowtrap.stream.export.topic_range import ReadRange, read_topic
from snowtrap.stream.megadetector import (
    validate_megadetector_file,
)
from snowtrap.stream.settings import KafkaLoginError

log = logging.getLogger(__name__)


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
        settings.check_login(settings.connect_timeout_s)
    except KafkaLoginError as error:
        raise ExportError(str(error)) from None
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
    with atomic_file(output) as partial:
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
