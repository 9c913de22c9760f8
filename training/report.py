"""The HTML report of a training run: one self-contained file (images inline as base64).

It reads whatever the stages left in the run directory, so it also works for a partial run:
dataset counts, classifier curves (inline SVG), LIME overlays (superpixels, importances, the
chosen boxes, ground truth when known), detector results and stage timings. Each section
below gathers plain data (None while its stage has not run); `report_template.html` (Jinja2,
autoescaped) lays it out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from snowtrap.training.drawing import (
    DETECTION_COLOUR,
    GROUP_COLOUR,
    REGION_COLOUR,
    SINGLE_COLOUR,
    TRUTH_COLOUR,
    draw_boxes,
    importance_overlay,
    jpeg_data_uri,
)
from snowtrap.training.html import format_value as _fmt
from snowtrap.training.html import render

if TYPE_CHECKING:
    from snowtrap.training.run_directory import TrainingRun

__all__ = ["curve_plot", "write_report"]

TEMPLATE = "report_template.html"
_CURVE_SETS = [
    ("validation", "#1f77b4"),
    ("heldout", "#d62728"),
    ("real_heldout", "#9467bd"),
    ("out_of_fold", "#2ca02c"),
]


def curve_plot(
    series: list[tuple[str, list[float], list[float], str]],
    x_label: str,
    y_label: str,
    size: int = 260,
    diagonal: bool = False,
) -> dict[str, Any]:
    """Geometry of a small line plot on [0, 1] x [0, 1] (the template's `curve` macro draws
    it as inline SVG): (name, xs, ys, colour) per series; empty series are left out."""
    pad = 34
    inner = size - 2 * pad

    def points(xs: list[float], ys: list[float]) -> str:
        return " ".join(
            f"{pad + x * inner:.1f},{pad + (1 - y) * inner:.1f}"
            for x, y in zip(xs, ys, strict=True)
        )

    lines = [
        {"name": name, "colour": colour, "points": points(xs, ys)}
        for name, xs, ys, colour in series
        if xs
    ]
    return {
        "size": size,
        "pad": pad,
        "inner": inner,
        "diagonal": diagonal,
        "x_label": x_label,
        "y_label": y_label,
        "series": lines,
    }


def _read(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _timings(run: TrainingRun, stages: list[str]) -> dict[str, Any]:
    rows: list[list[Any]] = []
    for stage in stages:
        record = run.stage_record(stage)
        rows.append(
            [stage, record["seconds"], record["finished_at"]]
            if record
            else [stage, None, "not run"]
        )
    total = sum(r[1] for r in rows if isinstance(r[1], float))
    rows.append(["total", total, ""])
    return {"rows": rows}


def _dataset(run: TrainingRun) -> dict[str, Any] | None:
    record = run.stage_record("gather")
    if record is None:
        return None
    rows = [
        [
            name,
            label["found"],
            label["downloaded"],
            ", ".join(f"{k}={v}" for k, v in label["rejected"].items()) or "-",
        ]
        for name, label in record["summary"]["labels"].items()
    ]
    heldout = run.heldout_frames if run.stage_record("synthesise") or run.config.heldout else []
    counts = None
    if heldout:
        counts = {
            "frames": len(heldout),
            "leopards": sum(f.label for f in heldout),
            "multi": sum(1 for f in heldout if f.boxes is not None and len(f.boxes) >= 2),
        }
    return {"rows": rows, "heldout": counts}


def _classifier(run: TrainingRun) -> dict[str, Any] | None:
    metrics = _read(run.stage_dir("classify") / "metrics.json")
    if metrics is None:
        return None
    present = [(name, colour) for name, colour in _CURVE_SETS if metrics.get(name)]
    roc = [
        (name, metrics[name]["roc_curve"]["fpr"], metrics[name]["roc_curve"]["tpr"], colour)
        for name, colour in present
    ]
    pr = [
        (name, metrics[name]["pr_curve"]["recall"], metrics[name]["pr_curve"]["precision"], colour)
        for name, colour in present
    ]
    rows = []
    for name, _ in present:
        m = metrics[name]
        gate = m["at_gate"]
        rows.append(
            [
                name,
                m["frames"],
                m["leopard_frames"],
                m["roc_auc"],
                m.get("zero_shot_roc_auc"),
                gate["recall"],
                gate["precision"],
                gate["false_positive_rate"],
            ]
        )
    return {
        "backbone": metrics["backbone"],
        "prior_weight": metrics.get("prior_weight", 0.0),
        "regularisation_c": metrics["regularisation_c"],
        "gate_threshold": metrics["gate_threshold"],
        "target_recall": metrics["target_recall"],
        "max_abs_diff": metrics["export"]["max_abs_diff"],
        "rows": rows,
        "roc": curve_plot(roc, "false-positive rate", "true-positive rate", diagonal=True),
        "pr": curve_plot(pr, "recall", "precision"),
    }


def _lime_card(row: dict[str, Any], sample: Path) -> dict[str, str]:
    from snowtrap.training.image_files import read_rgb

    with np.load(sample) as stored:
        segments, importances = stored["segments"].astype(np.int32), stored["importances"]
        selected = stored["selected"]
    heat, chosen = importance_overlay(read_rgb(Path(row["path"])), segments, importances, selected)
    if row["truth"]:
        chosen = draw_boxes(chosen, np.asarray(row["truth"]), TRUTH_COLOUR, 3)
        heat = draw_boxes(heat, np.asarray(row["truth"]), TRUTH_COLOUR, 3)
    if row.get("regions"):
        heat = draw_boxes(heat, np.asarray(row["regions"]), REGION_COLOUR, 2)
    if row["single_box"] is not None:
        chosen = draw_boxes(chosen, np.asarray(row["single_box"]), SINGLE_COLOUR, 2)
    chosen = draw_boxes(chosen, np.asarray(row["group_boxes"]), GROUP_COLOUR, 2)
    return {
        "heat": jpeg_data_uri(heat),
        "chosen": jpeg_data_uri(chosen),
        "caption": f"{row['key']} P(leopard) {row['score']:.3f}, {row['seconds']:.2f} s",
    }


def _lime(run: TrainingRun) -> dict[str, Any] | None:
    from snowtrap.training.config import ExplainConfig

    metrics = _read(run.stage_dir("explain") / "metrics.json")
    frames = _read(run.stage_dir("explain") / "frames.json")
    if metrics is None or frames is None:
        return None
    rows = []
    for name in ("train", "heldout"):
        m = metrics[name]
        rows.append(
            [
                name,
                m["frames"],
                m["frames_with_truth"],
                m["single_box_mean_iou"],
                (m.get("group_mode") or {}).get("mean_iou"),
                m["two_animal_frames"],
                m["both_found_share"],
                m["seconds_per_image"],
            ]
        )
    # Settings a run recorded that the config no longer has (removed options) are left out.
    settings = {k: v for k, v in metrics["settings"].items() if k in ExplainConfig.model_fields}
    by_key = {row["key"]: row for row in frames}
    cards = [
        _lime_card(by_key[sample.stem], sample)
        for sample in sorted((run.stage_dir("explain") / "samples").glob("*.npz"))
        if sample.stem in by_key
    ]
    return {
        "method": ExplainConfig(**settings).method_summary(),
        "kernel_width": settings["kernel_width"],
        "connectivity": settings["connectivity"],
        "min_score": metrics["min_classifier_score"],
        "rows": rows,
        "cards": cards,
    }


def _detector_cards(run: TrainingRun) -> list[dict[str, str]]:
    from snowtrap.training.image_files import read_rgb

    predictions = _read(run.stage_dir("detect") / "heldout_predictions.json") or {}
    heldout = [f for f in run.heldout_frames if f.image_id in predictions]
    samples = run.config.report.detector_samples
    chosen = [f for f in heldout if f.label][: samples // 2 * 2]
    chosen += [f for f in heldout if not f.label][: samples // 4]
    threshold = run.config.detect.detection_confidence
    cards = []
    for frame in chosen:
        image = Image.fromarray(read_rgb(frame.path))
        image.thumbnail((360, 360))
        if frame.boxes is not None and len(frame.boxes):
            image = draw_boxes(image, frame.boxes, TRUTH_COLOUR, 3)
        p = predictions[frame.image_id]
        boxes, scores = np.asarray(p["boxes"]).reshape(-1, 4), np.asarray(p["scores"])
        keep = scores >= threshold
        labels = [f"{s:.2f}" for s in scores[keep]]
        image = draw_boxes(image, boxes[keep], DETECTION_COLOUR, 2, labels)
        cards.append({"image": jpeg_data_uri(image), "caption": frame.path.name})
    return cards


def _detector(run: TrainingRun) -> dict[str, Any] | None:
    metrics = _read(run.stage_dir("detect") / "metrics.json")
    if metrics is None:
        return None
    training = metrics["training"]
    rows = [
        [
            name,
            m["frames"],
            m["frames_with_boxes"],
            m["map"],
            m["iou_at_score_0_5"]["mean_iou"],
            m["iou_at_score_0_5"]["share_iou_at_least_0_5"],
        ]
        for name, m in metrics["evaluation"].items()
    ]
    rounds = [
        [r["round"], r["frames"], r["relabelled_by_detector"], r["from_unexplained"], r["boxes"]]
        for r in training.get("self_training_rounds", [])
    ]
    check = metrics["onnx_check"]
    onnx_check = (
        f"ONNX vs torch on {check['images']} frames: {check['boxes_compared']} boxes compared "
        f"(score >= {check['score_floor']}), count mismatches {check['count_mismatches']}, "
        f"min IoU {_fmt(check['min_box_iou'])}, max score diff {_fmt(check['max_score_diff'])}: "
        f"{'passed' if check['passed'] else 'FAILED'}."
    )
    return {
        "positive_frames": training["positive_frames"],
        "negative_frames": training["negative_frames"],
        "box_mode": training["box_mode"],
        "onnx_seconds": metrics["onnx_seconds_per_image"],
        "method": run.config.detect.method_summary(),
        "rounds": rounds,
        "rows": rows,
        "history": [
            [h["epoch"], h["mean_loss"], h["images"], h["seconds"]] for h in training["history"]
        ],
        "onnx_check": onnx_check,
        "threshold": run.config.detect.detection_confidence,
        "cards": _detector_cards(run),
    }


def _bundle(run: TrainingRun) -> dict[str, Any] | None:
    record = run.stage_record("bundle")
    if record is None:
        return None
    summary = record["summary"]
    evaluations = summary.get("evaluations") or []
    rows = [
        [
            e["labels"],
            e["images"],
            e["leopard_frames"],
            e["roc_auc"],
            e["recall"],
            f"{e['negative_frames_passing']} of {e['negative_frames']}",
            e["crop_false_alarm_frames"],
            e["ap50"],
        ]
        for e in evaluations
    ]
    sheet_paths = [Path(e["out_dir"]) / "contact_sheet.png" for e in evaluations]
    return {
        "bundle": summary["bundle"],
        "version": summary["version"],
        "files": json.dumps(summary["files"], indent=1),
        "rows": rows,
        "sheets": [jpeg_data_uri(Image.open(path)) for path in sheet_paths if path.is_file()],
    }


def write_report(run: TrainingRun, stages: list[str]) -> Path:
    """Write `<run_dir>/report.html` from what the stages left; returns its path."""
    builders: list[tuple[str, str, Callable[[TrainingRun], dict[str, Any] | None]]] = [
        ("report", "Stages and timings", lambda run: _timings(run, stages)),
        ("gather", "Dataset", _dataset),
        ("classify", "Classifier", _classifier),
        ("explain", "LIME explanations and boxes", _lime),
        ("detect", "Detector", _detector),
        ("bundle", "Bundle", _bundle),
    ]
    sections = []
    for stage, heading, build in builders:
        section: dict[str, Any] = {"stage": stage, "heading": heading, "failed": None}
        try:
            section["data"] = build(run)
        except Exception as exc:  # a broken section must not hide the others
            section.update(data=None, failed=str(exc), name=f"{heading} section")
        sections.append(section)
    page = render(
        TEMPLATE,
        title=f"snowtrap training run: {run.root.name}",
        subtitle=f"run directory {run.root.resolve()}",
        sections=sections,
    )
    path = run.root / "report.html"
    path.write_text(page)
    return path
