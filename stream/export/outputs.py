"""The outputs: the MegaDetector batch-output file and the CSV summary per camera and day."""

from __future__ import annotations

import csv
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from snowtrap.stream.contracts import (
    LEOPARD_CATEGORY,
    DeadLetter,
    DetectionRecord,
    H,
)
from snowtrap.stream.export.collect import Collected
from snowtrap.stream.export.settings import ExportSettings
from snowtrap.stream.export.topic_range import ReadRange
from snowtrap.stream.megadetector import (
    batch_output,
    completion_time,
    failure_entry,
    fit_boxes_inside_image,
)

log = logging.getLogger(__name__)


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
    with atomic_file(path) as partial, partial.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


class atomic_file:
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
