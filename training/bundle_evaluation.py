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
- A contact sheet (PNG + self-contained HTML) of the worst misses and false alarms
  (`training.contact_sheet`).

The labels file is read and checked by `training.labelled_frames` before any model runs.
Writes `evaluation.json`, `contact_sheet.png` and `contact_sheet.html`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from snowtrap.training.classify import LEOPARD_CATEGORY
from snowtrap.training.contact_sheet import write_contact_sheet
from snowtrap.training.evaluate import average_precision, binary_metrics_at, matched_ious, roc_auc
from snowtrap.training.labelled_frames import (
    LabelledFrame,
    LabelsFileError,
    check_image_files,
    decode_frame,
    read_labels,
)
from snowtrap.training.sources.coco_camera_traps import normalise_category

if TYPE_CHECKING:
    from snowtrap.models.bundle import ModelBundle
    from snowtrap.models.manifest import BundleManifest

__all__ = ["configure_cli", "evaluate_bundle"]

DEFAULT_OUT_ROOT = Path("runs/evaluate")
EVALUATION_NAME = "evaluation.json"
BATCH = 16
"""Frames decoded and scored together: bounds memory on 2048 x 1536 surveys."""
DETECTION_FLOOR = 0.01
"""Lowest box score kept for AP (the curve needs boxes below the operating thresholds)."""
DEFAULT_ANY_SIZE_DETECTOR_SIDE = 1280
"""As the worker: decode size for a detector that takes any size and names no max_side."""


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
            decoded = [decode_frame(frame, labels, side) for frame in chunk]
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
    frames_scored = [s.frame for s in scored]
    result["sheet"] = write_contact_sheet(frames_scored, rows, summary, labels, out, max_sheet)
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
