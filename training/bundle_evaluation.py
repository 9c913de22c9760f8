"""`snowtrap evaluate BUNDLE LABELS.json`: how a model bundle does on a user's own labelled set.

A survey team that has labelled some of its own frames (COCO Camera Traps JSON, the LILA
format) wants to know, before trusting a bundle on its cameras, how many of its leopards the
bundle would miss and how many false alarms it would raise. This module answers that with the
bundle exactly as the stream worker runs it (ONNX Runtime, the same reduced decode, the
manifest's thresholds) and leaves the metric maths to `training.evaluate`.

- Image level: the classifier's score for every frame, ROC-AUC, and recall / false-alarm rate
  at the bundle's gate.
- Detector level: the detector runs on every frame, so false alarms on empty frames are
  measured whatever the gate does; the served path (detector only on gated frames) is derived
  from the same boxes. AP@0.5 against the leopard boxes, false-alarm frames and boxes at the
  crop and detection thresholds.
- A contact sheet (PNG + self-contained HTML) of the worst misses and false alarms.

Bad labels fail fast with one `LabelsFileError` naming the labels file and the entry, before
any model runs. Writes `evaluation.json`, `contact_sheet.png` and `contact_sheet.html`.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from snowtrap.training.classify import LEOPARD_CATEGORY
from snowtrap.training.evaluate import average_precision, binary_metrics_at, matched_ious, roc_auc
from snowtrap.training.sources.coco_camera_traps import normalise_category

if TYPE_CHECKING:
    from PIL import Image

    from snowtrap.models.bundle import ModelBundle
    from snowtrap.models.manifest import BundleManifest

__all__ = [
    "SHEET_COLUMNS",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "LabelledFrame",
    "LabelsFileError",
    "check_image_files",
    "configure_cli",
    "evaluate_bundle",
    "read_labels",
]

DEFAULT_OUT_ROOT = Path("runs/evaluate")
EVALUATION_NAME = "evaluation.json"
SHEET_PNG = "contact_sheet.png"
SHEET_HTML = "contact_sheet.html"
BATCH = 16
"""Frames decoded and scored together: bounds memory on 2048 x 1536 surveys."""
DETECTION_FLOOR = 0.01
"""Lowest box score kept for AP (the curve needs boxes below the operating thresholds)."""
DEFAULT_ANY_SIZE_DETECTOR_SIDE = 1280
"""As the worker: decode size for a detector that takes any size and names no max_side."""
MAX_LISTED_MISSING = 5
TILE_WIDTH, TILE_HEIGHT, CAPTION_HEIGHT, SECTION_HEADER, SHEET_COLUMNS = 256, 192, 30, 26, 4
TRUTH_COLOUR = (40, 220, 60)
PREDICTION_COLOUR = (255, 40, 40)
SECTIONS = {
    "misses": "Leopard frames with the lowest classifier scores (worst misses)",
    "high_scoring_negatives": "Frames without a leopard, highest classifier scores",
    "negatives_with_boxes": "Frames without a leopard where the detector drew a crop-worthy box",
}


class LabelsFileError(Exception):
    """A labels file (or an image it names) that cannot be evaluated; names file and entry."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class LabelledFrame:
    """One frame of the labels file: pixel boxes stay as COCO gives them until decoded."""

    image_id: str
    file_name: str
    path: Path
    label: int  # 1 = a snow_leopard annotation on the frame
    boxes_xywh: np.ndarray  # (K, 4) leopard boxes, COCO pixels
    boxes_complete: bool  # every leopard annotation has a box (else AP skips the frame)
    width: int | None
    height: int | None

    @property
    def entry(self) -> str:
        """How error messages and the sheet name this frame."""
        return f"image {self.image_id} ({self.file_name})"

    def truth_xyxy(self, width: int, height: int) -> np.ndarray:
        """Leopard boxes as normalised xyxy, on the JSON's size when it gives one."""
        w, h = float(self.width or width), float(self.height or height)
        b = self.boxes_xywh
        return np.stack(
            [b[:, 0] / w, b[:, 1] / h, (b[:, 0] + b[:, 2]) / w, (b[:, 1] + b[:, 3]) / h], 1
        )


# --- reading the labels ---------------------------------------------------------------------


def _entry_list(document: dict[str, Any], key: str, path: Path, required: bool) -> list[Any]:
    value = document.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise LabelsFileError(path, f"not a COCO Camera Traps file (no {key!r} list)")
    return value


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return int(value)


def _pixel_box(value: Any) -> list[float] | None:
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    box = [float(v) for v in value]
    if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        return None
    return box


def read_labels(labels: Path, image_root: Path | None = None) -> list[LabelledFrame]:
    """Frames of a COCO Camera Traps file, leopard or not, with their leopard boxes.

    A frame is a leopard frame when any annotation's category is snow_leopard (names match
    loosely: "Snow Leopard" too). Every malformed entry raises `LabelsFileError` naming it,
    so a user fixes the file once instead of discovering problems one run at a time.
    """
    labels = Path(labels)
    root = Path(image_root) if image_root is not None else labels.parent
    try:
        document = json.loads(labels.read_bytes())
    except FileNotFoundError as exc:
        raise LabelsFileError(labels, "file not found") from exc
    except IsADirectoryError as exc:
        raise LabelsFileError(labels, "is a directory, not a labels file") from exc
    except OSError as exc:
        raise LabelsFileError(labels, f"cannot read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelsFileError(labels, f"not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise LabelsFileError(labels, "not a COCO Camera Traps file (not a JSON object)")
    images = _entry_list(document, "images", labels, required=True)
    annotations = _entry_list(document, "annotations", labels, required=False)
    categories = _entry_list(document, "categories", labels, required=False)

    names: dict[str, str] = {}
    for index, item in enumerate(categories):
        if not isinstance(item, dict) or item.get("id") is None or item.get("name") is None:
            raise LabelsFileError(labels, f"categories[{index}]: needs an 'id' and a 'name'")
        names[str(item["id"])] = str(item["name"])
    leopard = normalise_category(LEOPARD_CATEGORY)

    entries: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(images):
        if not isinstance(item, dict):
            raise LabelsFileError(labels, f"images[{index}]: not a JSON object")
        image_id, file_name = item.get("id"), item.get("file_name")
        if image_id is None or isinstance(image_id, dict | list):
            raise LabelsFileError(labels, f"images[{index}]: no 'id'")
        if not isinstance(file_name, str) or not file_name.strip():
            raise LabelsFileError(labels, f"images[{index}] (id {image_id}): no 'file_name'")
        key = str(image_id)
        if key in entries:
            raise LabelsFileError(labels, f"images[{index}]: image id {image_id} appears twice")
        for side in ("width", "height"):
            if item.get(side) is not None and _positive_int(item[side]) is None:
                raise LabelsFileError(
                    labels, f"image {image_id} ({file_name}): bad {side} {item[side]!r}"
                )
        entries[key] = {"item": item, "leopard": False, "boxes": [], "complete": True}

    for index, item in enumerate(annotations):
        if not isinstance(item, dict):
            raise LabelsFileError(labels, f"annotations[{index}]: not a JSON object")
        image_id = item.get("image_id")
        if image_id is None or str(image_id) not in entries:
            raise LabelsFileError(
                labels, f"annotations[{index}]: image_id {image_id!r} is not among the images"
            )
        category = item.get("category_id")
        if category is not None and names and str(category) not in names:
            raise LabelsFileError(
                labels, f"annotations[{index}]: category_id {category!r} is not a category"
            )
        name = names.get(str(category)) or str(item.get("category") or "")
        if normalise_category(name) != leopard:
            continue
        entry = entries[str(image_id)]
        entry["leopard"] = True
        if item.get("bbox") is None:
            entry["complete"] = False
            continue
        box = _pixel_box(item["bbox"])
        if box is None:
            raise LabelsFileError(
                labels, f"annotations[{index}] (image {image_id}): bad bbox {item['bbox']!r}"
            )
        entry["boxes"].append(box)

    return [
        LabelledFrame(
            image_id=key,
            file_name=entry["item"]["file_name"],
            path=root / entry["item"]["file_name"],
            label=int(entry["leopard"]),
            boxes_xywh=np.asarray(entry["boxes"], dtype=np.float64).reshape(-1, 4),
            boxes_complete=entry["complete"],
            width=_positive_int(entry["item"].get("width")),
            height=_positive_int(entry["item"].get("height")),
        )
        for key, entry in entries.items()
    ]


def check_image_files(frames: Sequence[LabelledFrame], labels: Path) -> None:
    """Every image file exists: checked before the models load, so a typo fails in a second."""
    missing = [frame for frame in frames if not frame.path.is_file()]
    if not missing:
        return
    if len(missing) == 1:
        raise LabelsFileError(labels, f"{missing[0].entry}: file not found ({missing[0].path})")
    listed = ", ".join(frame.entry for frame in missing[:MAX_LISTED_MISSING])
    more = len(missing) - MAX_LISTED_MISSING
    root = missing[0].path.parent
    raise LabelsFileError(
        labels,
        f"{len(missing)} image files not found (e.g. under {root}): {listed}"
        + (f" and {more} more" if more > 0 else ""),
    )


def _decode(frame: LabelledFrame, labels: Path, max_side: int | None) -> Any:
    from snowtrap.models.decode import DecodeError, decode_trap_image

    try:
        return decode_trap_image(frame.path.read_bytes(), max_side=max_side)
    except OSError as exc:
        raise LabelsFileError(labels, f"{frame.entry}: cannot read: {exc}") from exc
    except DecodeError as exc:
        raise LabelsFileError(labels, f"{frame.entry}: cannot decode: {exc}") from exc


# --- running the bundle ---------------------------------------------------------------------


def _analysis_side(manifest: BundleManifest) -> int:
    """The decode size the worker uses (its `analysis_side_for`): scores here match served."""
    classifier = manifest.models["classifier"]
    side = max(classifier.input_size or (224, 224))
    detector = manifest.models.get("detector")
    if detector is not None and detector.io is not None:
        if detector.io.input_size is not None:
            side = max(side, *detector.io.input_size)
        else:
            side = max(side, detector.io.max_side or DEFAULT_ANY_SIZE_DETECTOR_SIDE)
    return side


@dataclass
class _Scored:
    frame: LabelledFrame
    score: float
    truth: np.ndarray  # normalised xyxy
    boxes: np.ndarray  # normalised xyxy, leopard class, >= DETECTION_FLOOR
    box_scores: np.ndarray


def _run(
    bundle: ModelBundle, frames: Sequence[LabelledFrame], labels: Path, progress: bool
) -> list[_Scored]:
    from tqdm import tqdm

    from snowtrap.models.boxes import xywh_to_xyxy

    side = _analysis_side(bundle.manifest)
    thresholds = bundle.manifest.thresholds
    floor = min(DETECTION_FLOOR, thresholds.detection_confidence, thresholds.crop)
    leopard = normalise_category(LEOPARD_CATEGORY)
    scored: list[_Scored] = []
    bar = tqdm(
        total=len(frames),
        desc="evaluating",
        unit="img",
        disable=not (progress and sys.stderr.isatty()),
    )
    with bar:
        for start in range(0, len(frames), BATCH):
            chunk = frames[start : start + BATCH]
            decoded = [_decode(frame, labels, side) for frame in chunk]
            rgbs = [d.rgb for d in decoded]
            scores = bundle.classify(rgbs)
            detections = (
                bundle.detect(rgbs, min_score=floor) if bundle.has_detector else [[]] * len(chunk)
            )
            for frame, image, score, found in zip(chunk, decoded, scores, detections, strict=True):
                kept = [d for d in found if normalise_category(d.label) == leopard]
                scored.append(
                    _Scored(
                        frame=frame,
                        score=float(score),
                        truth=frame.truth_xyxy(image.width, image.height),
                        boxes=xywh_to_xyxy(np.array([d.box_xywh_normalised for d in kept])),
                        box_scores=np.array([d.score for d in kept], dtype=np.float64),
                    )
                )
            bar.update(len(chunk))
    return scored


# --- figures --------------------------------------------------------------------------------


def _number(value: float) -> float | None:
    """JSON has no NaN: undefined figures are null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _image_level(scored: Sequence[_Scored], gate: float) -> dict[str, Any]:
    labels = np.array([s.frame.label for s in scored], dtype=bool)
    scores = np.array([s.score for s in scored], dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    auc = _number(roc_auc(labels, scores)) if scored else None
    metrics = binary_metrics_at(labels, scores, gate)
    return {
        "images": len(scored),
        "leopard_frames": positives,
        "negative_frames": negatives,
        "roc_auc": auc,
        "roc_auc_note": None
        if auc is not None
        else f"undefined: the set has only {'leopard' if positives else 'non-leopard'} frames"
        if scored
        else "undefined: no frames",
        "gate": gate,
        "leopard_frames_passing": metrics.true_positives,
        "negative_frames_passing": metrics.false_positives,
        "recall": metrics.recall if positives else None,
        "false_alarm_rate": metrics.false_positive_rate if negatives else None,
        "precision": metrics.precision
        if metrics.true_positives + metrics.false_positives
        else None,
        "confusion": metrics.to_dict(),
    }


def _detector_level(
    scored: Sequence[_Scored], thresholds: dict[str, float], served: bool
) -> dict[str, Any]:
    """Box figures; `served` keeps boxes only on frames passing the classifier gate."""
    gate = thresholds["classifier_gate"]

    def boxes_of(s: _Scored) -> tuple[np.ndarray, np.ndarray]:
        if served and s.score < gate:
            return np.zeros((0, 4)), np.zeros(0)
        return s.boxes, s.box_scores

    per_frame = [boxes_of(s) for s in scored]
    usable = [i for i, s in enumerate(scored) if s.frame.boxes_complete]
    true_boxes = sum(int(scored[i].truth.shape[0]) for i in usable)
    ap = (
        _number(
            average_precision(
                [per_frame[i][0] for i in usable],
                [per_frame[i][1] for i in usable],
                [scored[i].truth for i in usable],
            )
        )
        if true_boxes
        else None
    )
    figures: dict[str, Any] = {
        "path": "served: detector only on frames passing the gate"
        if served
        else "all frames: detector on every frame",
        "ap50": ap,
        "ap50_note": None
        if ap is not None
        else "undefined: the set has no leopard boxes"
        if not true_boxes
        else "undefined",
        "ap_frames": len(usable),
        "leopard_boxes": true_boxes,
    }
    for name in ("detection_confidence", "crop"):
        threshold = thresholds[name]
        negative_boxes = [
            int(np.sum(box_scores >= threshold))
            for s, (_, box_scores) in zip(scored, per_frame, strict=True)
            if not s.frame.label
        ]
        found = [
            matched_ious(boxes[box_scores >= threshold], s.truth)
            for s, (boxes, box_scores) in zip(scored, per_frame, strict=True)
            if s.frame.label
        ]
        with_box = [
            bool(np.any(box_scores >= threshold))
            for s, (_, box_scores) in zip(scored, per_frame, strict=True)
            if s.frame.label
        ]
        figures[f"at_{name}"] = {
            "threshold": threshold,
            "false_alarm_frames": sum(1 for n in negative_boxes if n),
            "false_alarm_boxes": sum(negative_boxes),
            "leopard_frames_with_box": sum(with_box),
            "leopard_boxes_found_iou50": int(sum(np.sum(f >= 0.5) for f in found)),
        }
    return figures


def _row(s: _Scored, thresholds: dict[str, float]) -> dict[str, Any]:
    shown = s.box_scores >= min(thresholds["detection_confidence"], thresholds["crop"])
    return {
        "id": s.frame.image_id,
        "file": s.frame.file_name,
        "label": s.frame.label,
        "score": s.score,
        "passes_gate": s.score >= thresholds["classifier_gate"],
        "n_boxes": int(np.sum(s.box_scores >= thresholds["detection_confidence"])),
        "n_boxes_crop": int(np.sum(s.box_scores >= thresholds["crop"])),
        "max_box_score": round(float(s.box_scores.max()), 6) if s.box_scores.size else None,
        "boxes": [
            {"xyxy": [round(float(v), 4) for v in box], "score": round(float(score), 6)}
            for box, score in zip(s.boxes[shown], s.box_scores[shown], strict=True)
        ],
        "truth": [[round(float(v), 4) for v in box] for box in s.truth],
    }


# --- contact sheet --------------------------------------------------------------------------


def _select(rows: Sequence[dict[str, Any]], max_sheet: int) -> dict[str, list[int]]:
    """Row indices per sheet section, worst first."""
    order = range(len(rows))
    leopards = sorted((i for i in order if rows[i]["label"]), key=lambda i: rows[i]["score"])
    negatives = [i for i in order if not rows[i]["label"]]
    return {
        "misses": leopards[:max_sheet],
        "high_scoring_negatives": sorted(negatives, key=lambda i: -rows[i]["score"])[:max_sheet],
        "negatives_with_boxes": sorted(
            (i for i in negatives if rows[i]["n_boxes_crop"]),
            key=lambda i: -(rows[i]["max_box_score"] or 0.0),
        )[:max_sheet],
    }


def _tile(frame: LabelledFrame, row: dict[str, Any], labels: Path) -> Image.Image:
    from PIL import Image, ImageDraw

    from snowtrap.training.report import draw_boxes

    rgb = _decode(frame, labels, max(TILE_WIDTH, TILE_HEIGHT) * 2).rgb
    picture = Image.fromarray(rgb)
    picture.thumbnail((TILE_WIDTH, TILE_HEIGHT - CAPTION_HEIGHT))
    picture = draw_boxes(picture, np.array(row["truth"]), TRUTH_COLOUR)
    predicted = [box["xyxy"] for box in row["boxes"]]
    picture = draw_boxes(
        picture,
        np.array(predicted),
        PREDICTION_COLOUR,
        labels=[f"{box['score']:.2f}" for box in row["boxes"]],
    )
    tile = Image.new("RGB", (TILE_WIDTH, TILE_HEIGHT), (24, 24, 24))
    tile.paste(picture, ((TILE_WIDTH - picture.width) // 2, 0))
    draw = ImageDraw.Draw(tile)
    top = TILE_HEIGHT - CAPTION_HEIGHT + 2
    draw.text((4, top), f"id {row['id']}"[:40], fill=(235, 235, 235))
    box_text = "-" if row["max_box_score"] is None else f"{row['max_box_score']:.3f}"
    draw.text(
        (4, top + 13),
        f"score {row['score']:.3f} {'PASS' if row['passes_gate'] else 'below'} box {box_text}",
        fill=(235, 235, 235),
    )
    return tile


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _write_sheet(
    scored: Sequence[_Scored],
    rows: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    labels: Path,
    out_dir: Path,
    max_sheet: int,
) -> dict[str, Any]:
    """One PNG (sections of tiles, SHEET_COLUMNS a row) and one HTML page with the same tiles."""
    from PIL import Image, ImageDraw

    chosen = _select(rows, max_sheet)
    tiles = {i: _tile(scored[i].frame, rows[i], labels) for ids in chosen.values() for i in ids}
    width = TILE_WIDTH * SHEET_COLUMNS
    height = sum(
        SECTION_HEADER + math.ceil(len(ids) / SHEET_COLUMNS) * TILE_HEIGHT
        for ids in chosen.values()
    )
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for section, ids in chosen.items():
        draw.text((6, y + 7), f"{SECTIONS[section]}: {len(ids) or 'none'}", fill=(0, 0, 0))
        y += SECTION_HEADER
        for n, i in enumerate(ids):
            sheet.paste(
                tiles[i], ((n % SHEET_COLUMNS) * TILE_WIDTH, y + (n // SHEET_COLUMNS) * TILE_HEIGHT)
            )
        y += math.ceil(len(ids) / SHEET_COLUMNS) * TILE_HEIGHT
    png = out_dir / SHEET_PNG
    sheet.save(png)

    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(summary['title'])}</title><style>",
        "body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:4px}",
        "figcaption{font-size:12px;max-width:256px;word-break:break-all}",
        "td,th{padding:2px 8px;text-align:left}</style></head><body>",
        f"<h1>{esc(summary['title'])}</h1><table>",
        *(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary["lines"]),
        "</table><p>Truth boxes green, predicted boxes red (with scores).</p>",
    ]
    for section, ids in chosen.items():
        parts.append(f"<section id='{section}'><h2>{esc(SECTIONS[section])}</h2>")
        if not ids:
            parts.append("<p>none</p>")
        for i in ids:
            row = rows[i]
            parts.append(
                f"<figure data-image-id='{esc(row['id'])}'><img src='{_data_uri(tiles[i])}' "
                f"alt='{esc(row['file'])}'><figcaption>id {esc(row['id'])}: "
                f"<code>{esc(row['file'])}</code><br>score {row['score']:.4f}, "
                f"{row['n_boxes']} boxes</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>\n")
    page = out_dir / SHEET_HTML
    page.write_text("".join(parts), encoding="utf-8")
    return {
        "png": str(png),
        "html": str(page),
        "sections": {name: [rows[i]["id"] for i in ids] for name, ids in chosen.items()},
    }


# --- the evaluation -------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _summary_lines(result: dict[str, Any]) -> list[tuple[str, str]]:
    image = result["image_level"]
    lines = [
        (
            "frames",
            f"{image['images']} ({image['leopard_frames']} leopard, "
            f"{image['negative_frames']} without)",
        ),
        (
            "ROC-AUC",
            _fmt(image["roc_auc"])
            + (f" ({image['roc_auc_note']})" if image["roc_auc_note"] else ""),
        ),
        (
            f"recall at gate {image['gate']}",
            f"{_fmt(image['recall'])} ({image['leopard_frames_passing']} of "
            f"{image['leopard_frames']} leopard frames pass)",
        ),
        (
            "false-alarm rate at gate",
            f"{_fmt(image['false_alarm_rate'])} ({image['negative_frames_passing']} of "
            f"{image['negative_frames']} frames without a leopard pass)",
        ),
    ]
    for key in ("all_frames", "served"):
        detector = (result["detector"] or {}).get(key)
        if detector is None:
            continue
        label = "detector on every frame" if key == "all_frames" else "detector, served path"
        ap = _fmt(detector["ap50"]) + (
            f" ({detector['ap50_note']})" if detector["ap50_note"] else ""
        )
        lines.append((f"{label}: AP@0.5", ap))
        for name, short in (("crop", "crop"), ("detection_confidence", "detection")):
            at = detector[f"at_{name}"]
            lines.append(
                (
                    f"{label}: false alarms, boxes >= {short} {at['threshold']}",
                    f"{at['false_alarm_frames']} frames without a leopard, "
                    f"{at['false_alarm_boxes']} boxes",
                )
            )
        found = detector["at_detection_confidence"]
        lines.append(
            (
                f"{label}: leopard boxes found (IoU >= 0.5)",
                f"{found['leopard_boxes_found_iou50']} of {detector['leopard_boxes']}",
            )
        )
    if result["detector"] is None:
        lines.append(("detector", "none in this bundle"))
    return lines


def evaluate_bundle(
    bundle_dir: Path,
    labels: Path,
    image_root: Path | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    max_sheet: int = 8,
) -> dict[str, Any]:
    """Evaluate a bundle on a COCO Camera Traps labelled set; write and return the figures.

    `image_root` defaults to the labels file's folder; `out_dir` to runs/evaluate/<bundle
    name>. The returned dict is what `evaluation.json` holds, so the training pipeline can
    embed it in its report and model card. Raises `LabelsFileError` for bad labels or images
    (before any model runs where it can) and `models.bundle.BundleError` for a bad bundle.
    """
    from snowtrap.models.bundle import load_bundle

    if max_sheet < 0:
        raise ValueError(f"max_sheet must be >= 0, got {max_sheet}")
    labels = Path(labels)
    frames = read_labels(labels, image_root)
    check_image_files(frames, labels)
    bundle = load_bundle(Path(bundle_dir))
    manifest = bundle.manifest
    thresholds = manifest.thresholds.model_dump()
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT_ROOT / manifest.name
    scored = _run(bundle, frames, labels, progress)
    rows = [_row(s, thresholds) for s in scored]
    result: dict[str, Any] = {
        "bundle": {
            "directory": str(bundle_dir),
            "name": manifest.name,
            "version": manifest.version,
            "has_detector": bundle.has_detector,
        },
        "labels": str(labels),
        "image_root": str(Path(image_root) if image_root is not None else labels.parent),
        "thresholds": thresholds,
        "image_level": _image_level(scored, thresholds["classifier_gate"]),
        "detector": {
            "all_frames": _detector_level(scored, thresholds, served=False),
            "served": _detector_level(scored, thresholds, served=True),
        }
        if bundle.has_detector
        else None,
        "notes": [
            "frames are decoded as the stream worker decodes them (longest side "
            f"{_analysis_side(manifest)}), so scores match the served ones",
            "a frame is a leopard frame when any of its annotations is snow_leopard",
            "AP skips leopard frames with a snow_leopard annotation that has no bbox",
        ],
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "title": f"{manifest.name} {manifest.version} on {labels.name}",
        "lines": _summary_lines(result),
    }
    result["sheet"] = _write_sheet(scored, rows, summary, labels, out, max_sheet)
    result["evaluation_json"] = str(out / EVALUATION_NAME)
    (out / EVALUATION_NAME).write_text(json.dumps(result, indent=1) + "\n")
    return result


# --- CLI ------------------------------------------------------------------------------------


def _print_summary(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    bundle = result["bundle"]
    table = Table(title=f"{bundle['name']} {bundle['version']} on {result['labels']}")
    table.add_column("figure")
    table.add_column("value")
    for key, value in _summary_lines(result):
        table.add_row(key, value)
    console = Console(width=None if sys.stdout.isatty() else 110)
    console.print(table)
    console.print(
        f"wrote {result['evaluation_json']}, {result['sheet']['png']}, {result['sheet']['html']}"
    )


def _run_cli(args: argparse.Namespace) -> int:
    from snowtrap.models.bundle import BundleError

    if args.max_sheet < 0:
        print("error: --max-sheet must be >= 0", file=sys.stderr)
        return 2
    try:
        result = evaluate_bundle(
            args.bundle, args.labels, args.image_root, args.out, max_sheet=args.max_sheet
        )
    except (LabelsFileError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_summary(result)
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`snowtrap evaluate BUNDLE LABELS [--image-root DIR] [--out DIR] [--max-sheet N]`."""
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="model bundle directory")
    parser.add_argument(
        "labels", type=Path, metavar="LABELS", help="COCO Camera Traps JSON with the truth"
    )
    parser.add_argument(
        "--image-root",
        type=Path,
        default=None,
        help="folder the file_name entries are relative to (default: the labels file's folder)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/evaluate/<bundle name>)"
    )
    parser.add_argument(
        "--max-sheet", type=int, default=8, help="frames per contact-sheet section (default 8)"
    )
    parser.set_defaults(run=_run_cli)
