"""The MegaDetector batch-output format: building a file and checking it against the rules.

Biologists review camera-trap results in Timelapse, AddaxAI and similar tools, which all
read MegaDetector's batch-output JSON (https://lila.science/megadetector-output-format).
snowtrap writes format 1.4:

    {"info": {"format_version": "1.4", "detector": ..., "detector_metadata": {...}, ...},
     "detection_categories": {"1": "snow leopard"},
     "images": [{"file": "cam/IMG_0001.JPG", "detections": [
                    {"category": "1", "conf": 0.93, "bbox": [x, y, w, h]}]},
                {"file": "cam/IMG_0002.JPG", "failure": "decode: truncated",
                 "detections": null}]}

`bbox` is [x_min, y_min, width, height] normalised to the image size, origin top left.
`validate_megadetector_file` checks what the format requires and what the tools rely on; the
exporter refuses to write a file that fails it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from snowtrap.stream.contracts import DETECTION_CATEGORIES

FORMAT_VERSION = "1.4"
MIN_FORMAT_VERSION = (1, 4)
"""The oldest format version snowtrap's validator accepts (1.4 added video fields; the
image rules checked here are those of 1.3 onwards)."""

BBOX_TOLERANCE = 1e-6
"""Float noise allowed on x + w <= 1 and y + h <= 1 (e.g. 0.1235 + 0.8765)."""

MAX_PROBLEMS = 200
"""A broken file can have a problem per box; past this many the validator only counts."""

COMPLETION_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
"""How MegaDetector writes `detection_completion_time` (UTC here)."""


def completion_time(unix_seconds: float) -> str:
    """A Unix time as MegaDetector writes completion times."""
    return datetime.fromtimestamp(unix_seconds, UTC).strftime(COMPLETION_TIME_FORMAT)


def failure_entry(file: str, failure: str) -> dict[str, Any]:
    """An image that could not be processed: a failure string and null detections."""
    return {"file": file, "failure": failure, "detections": None}


def fit_boxes_inside_image(entry: dict[str, Any], decimals: int = 4) -> dict[str, Any]:
    """Pull boxes back inside [0, 1] where rounding to `decimals` pushed them out.

    A box found at x = 0.12345, w = 0.87655 rounds to 0.1235 + 0.8766 > 1; the tools reject
    such a file, so width and height are trimmed to what is left of the image.
    """
    detections = entry.get("detections")
    if not detections:
        return entry
    fitted = []
    for detection in detections:
        x, y, w, h = (float(v) for v in detection["bbox"])
        x = min(max(x, 0.0), 1.0)
        y = min(max(y, 0.0), 1.0)
        w = min(max(w, 0.0), round(1.0 - x, decimals))
        h = min(max(h, 0.0), round(1.0 - y, decimals))
        fitted.append({**detection, "bbox": [x, y, w, h]})
    return {**entry, "detections": fitted}


def batch_output(
    images: Iterable[Mapping[str, Any]],
    *,
    detector: str,
    detection_completion_time: str,
    typical_detection_threshold: float,
    conservative_detection_threshold: float,
    detector_metadata: Mapping[str, Any] | None = None,
    classifier: str | None = None,
    classifier_metadata: Mapping[str, Any] | None = None,
    extra_info: Mapping[str, Any] | None = None,
    detection_categories: Mapping[str, str] = DETECTION_CATEGORIES,
) -> dict[str, Any]:
    """A complete batch-output document (format 1.4) around the given image entries."""
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "detector": detector,
        "detection_completion_time": detection_completion_time,
        "detector_metadata": {
            **(detector_metadata or {}),
            # What Timelapse and the other tools offer as default confidence thresholds.
            "typical_detection_threshold": typical_detection_threshold,
            "conservative_detection_threshold": conservative_detection_threshold,
        },
    }
    if classifier is not None:
        info["classifier"] = classifier
        info["classification_completion_time"] = detection_completion_time
        info["classifier_metadata"] = dict(classifier_metadata or {})
    info.update(extra_info or {})
    return {
        "info": info,
        "detection_categories": dict(detection_categories),
        "images": [dict(image) for image in images],
    }


# --- validation ---------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_version(text: str) -> tuple[int, ...] | None:
    try:
        float(text)
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return None


def _check_categories(name: str, categories: Any, problems: list[str]) -> None:
    if not isinstance(categories, dict):
        problems.append(f"{name} must be an object mapping category id -> name")
        return
    for key, value in categories.items():
        if not (isinstance(key, str) and key.isdigit()):
            problems.append(f"{name}: id {key!r} is not a non-negative string-formatted int")
        if not (isinstance(value, str) and value.strip()):
            problems.append(f"{name}: category {key!r} has a blank or non-string name")


def _check_info(info: Any, problems: list[str]) -> None:
    if not isinstance(info, dict):
        problems.append("info must be an object")
        return
    version = info.get("format_version")
    if version is None:
        problems.append("info.format_version is missing")
    elif not isinstance(version, str) or _parse_version(version) is None:
        problems.append(f"info.format_version {version!r} is not a string-formatted version")
    elif (_parse_version(version) or ()) < MIN_FORMAT_VERSION:
        wanted = ".".join(map(str, MIN_FORMAT_VERSION))
        problems.append(f"info.format_version {version!r} is older than {wanted}")
    for key in ("detector", "detection_completion_time", "classifier"):
        if key in info and not isinstance(info[key], str):
            problems.append(f"info.{key} must be a string")
    for key in ("detector_metadata", "classifier_metadata"):
        if key in info and not isinstance(info[key], dict):
            problems.append(f"info.{key} must be an object")
    metadata = info.get("detector_metadata")
    if isinstance(metadata, dict):
        for key in ("typical_detection_threshold", "conservative_detection_threshold"):
            if key in metadata and not (_is_number(metadata[key]) and 0 <= metadata[key] <= 1):
                problems.append(f"info.detector_metadata.{key} must be a number in [0, 1]")


def _check_detection(
    where: str, detection: Any, categories: Mapping[str, Any], problems: list[str]
) -> None:
    if not isinstance(detection, dict):
        problems.append(f"{where} must be an object")
        return
    category = detection.get("category")
    if category is None:
        problems.append(f"{where} has no category")
    elif not isinstance(category, str) or category not in categories:
        problems.append(f"{where}: category {category!r} is not in detection_categories")
    conf = detection.get("conf")
    if conf is None:
        problems.append(f"{where} has no conf")
    elif not (isinstance(conf, float) and math.isfinite(conf)):
        problems.append(f"{where}: conf {conf!r} must be a float")
    elif not 0.0 <= conf <= 1.0:
        problems.append(f"{where}: conf {conf!r} is outside [0, 1]")
    bbox = detection.get("bbox")
    if bbox is None:
        problems.append(f"{where} has no bbox")
    elif not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        problems.append(f"{where}: bbox {bbox!r} must be 4 numbers [x, y, w, h]")
    else:
        x, y, w, h = bbox
        if min(x, y, w, h) < 0 or x > 1 or y > 1:
            problems.append(f"{where}: bbox {bbox!r} is not normalised inside [0, 1]")
        elif x + w > 1 + BBOX_TOLERANCE or y + h > 1 + BBOX_TOLERANCE:
            problems.append(f"{where}: bbox {bbox!r} extends past the image (x+w or y+h > 1)")
    classifications = detection.get("classifications")
    if classifications is not None and not (
        isinstance(classifications, list)
        and all(
            isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and c[0].isdigit()
            for c in classifications
        )
    ):
        problems.append(f"{where}: classifications must be [[category id, conf], ...]")


def _check_images(images: Any, categories: Mapping[str, Any], problems: list[str]) -> None:
    if not isinstance(images, list):
        problems.append("images must be a list")
        return
    seen: dict[str, int] = {}
    for index, image in enumerate(images):
        where = f"images[{index}]"
        if not isinstance(image, dict):
            problems.append(f"{where} must be an object")
            continue
        file = image.get("file")
        if not (isinstance(file, str) and file):
            problems.append(f"{where} has no file name")
        elif file in seen:
            problems.append(f"{where}: file {file!r} also appears at images[{seen[file]}]")
        else:
            seen[file] = index
            where = f"images[{index}] ({file})"
        failure = image.get("failure")
        detections = image.get("detections")
        if failure is not None:
            if not isinstance(failure, str):
                problems.append(f"{where}: failure must be a string or null")
            if detections is not None:
                problems.append(f"{where} has a failure, so its detections must be null")
            continue
        if not isinstance(detections, list):
            problems.append(f"{where}: detections must be a list (empty when nothing was found)")
            continue
        for number, detection in enumerate(detections):
            _check_detection(f"{where} detections[{number}]", detection, categories, problems)
        max_conf = image.get("max_detection_conf")
        if max_conf is not None and not (_is_number(max_conf) and 0 <= max_conf <= 1):
            problems.append(f"{where}: max_detection_conf {max_conf!r} is outside [0, 1]")


def validate_megadetector_file(obj: Any) -> list[str]:
    """Problems that make `obj` an invalid MegaDetector batch-output file; empty = valid.

    Checks: the required top-level fields; `info.format_version` (a string, 1.4 or later);
    category ids (string-formatted non-negative ints) and names; per image a unique `file`,
    either a `detections` list or a `failure` string with null detections; per detection a
    category present in `detection_categories`, a float `conf` in [0, 1] and a `bbox` of 4
    numbers normalised inside the image (x, y, w, h >= 0, x + w <= 1, y + h <= 1).
    """
    if not isinstance(obj, dict):
        return ["the file must be a JSON object with info, detection_categories and images"]
    problems: list[str] = []
    for key in ("info", "detection_categories", "images"):
        if key not in obj:
            problems.append(f"required field {key!r} is missing")
    if "info" in obj:
        _check_info(obj["info"], problems)
    categories = obj.get("detection_categories")
    if "detection_categories" in obj:
        _check_categories("detection_categories", categories, problems)
    if "classification_categories" in obj:
        _check_categories("classification_categories", obj["classification_categories"], problems)
    if "images" in obj:
        _check_images(obj["images"], categories if isinstance(categories, dict) else {}, problems)
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], f"... and {more} more problems"]
    return problems
