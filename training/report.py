"""The HTML report of a training run: one self-contained file (images inline as base64).

It reads whatever the stages left in the run directory, so it also works for a partial run:
dataset counts, classifier curves (inline SVG), LIME overlays (superpixels, importances, the
chosen boxes, ground truth when known), detector results and stage timings.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from snowtrap.training.pipeline import TrainingRun

__all__ = ["draw_boxes", "importance_overlay", "svg_curve", "write_report"]

TEMPLATE = Path(__file__).with_name("report_template.html")
TRUTH_COLOUR = (255, 255, 255)
SINGLE_COLOUR = (255, 215, 0)
GROUP_COLOUR = (0, 200, 255)
DETECTION_COLOUR = (255, 60, 200)
REGION_COLOUR = (160, 90, 255)


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _jpeg_data_uri(image: Image.Image, quality: int = 80) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


# --- drawing (pure: arrays in, images out) ------------------------------------------------


def draw_boxes(
    image: Image.Image,
    boxes: np.ndarray,
    colour: tuple[int, int, int],
    width: int = 2,
    labels: list[str] | None = None,
) -> Image.Image:
    """Normalised xyxy boxes drawn onto a copy of `image`."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for i, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        x0, y0, x1, y1 = box * np.array([w, h, w, h])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        if labels:
            draw.text((x0 + 3, y0 + 2), labels[i], fill=colour)
    return out


def importance_overlay(
    rgb: np.ndarray, segments: np.ndarray, importances: np.ndarray, selected: np.ndarray
) -> tuple[Image.Image, Image.Image]:
    """Two panels at the working size: importances (green +, red -) with superpixel borders,
    and the frame with only the selected superpixels left bright."""
    from skimage.segmentation import find_boundaries

    height, width = segments.shape
    base = np.asarray(Image.fromarray(rgb).resize((width, height)), dtype=np.float32)
    values = np.asarray(importances, dtype=np.float64)
    scale = max(float(np.abs(values).max()), 1e-12)
    per_pixel = values[segments] / scale
    heat = np.zeros_like(base)
    heat[..., 1] = np.clip(per_pixel, 0, 1) * 255
    heat[..., 0] = np.clip(-per_pixel, 0, 1) * 255
    alpha = np.abs(per_pixel)[..., None] * 0.6
    blended = base * (1 - alpha) + heat * alpha
    blended[find_boundaries(segments, mode="thick")] = (255, 255, 0)
    chosen = np.isin(segments, selected)
    dimmed = np.where(chosen[..., None], base, base * 0.3)
    return (
        Image.fromarray(blended.clip(0, 255).astype(np.uint8)),
        Image.fromarray(dimmed.clip(0, 255).astype(np.uint8)),
    )


def svg_curve(
    series: list[tuple[str, list[float], list[float], str]],
    x_label: str,
    y_label: str,
    size: int = 260,
    diagonal: bool = False,
) -> str:
    """A small inline SVG line plot on [0, 1] x [0, 1]: (name, xs, ys, colour) per series."""
    pad = 34
    inner = size - 2 * pad

    def point(x: float, y: float) -> str:
        return f"{pad + x * inner:.1f},{pad + (1 - y) * inner:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}">',
        f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="none" stroke="#999"/>',
    ]
    if diagonal:
        parts.append(
            f'<line x1="{pad}" y1="{pad + inner}" x2="{pad + inner}" y2="{pad}" '
            'stroke="#ccc" stroke-dasharray="4"/>'
        )
    for tick in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{pad + tick * inner:.0f}" y="{pad + inner + 14}" font-size="10" '
            f'text-anchor="middle">{tick:g}</text>'
        )
        parts.append(
            f'<text x="{pad - 4}" y="{pad + (1 - tick) * inner + 4:.0f}" font-size="10" '
            f'text-anchor="end">{tick:g}</text>'
        )
    parts.append(
        f'<text x="{size / 2}" y="{size - 4}" font-size="11" text-anchor="middle">'
        f"{_esc(x_label)}</text>"
    )
    parts.append(
        f'<text x="10" y="{size / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 10 {size / 2})">{_esc(y_label)}</text>'
    )
    for index, (name, xs, ys, colour) in enumerate(series):
        if not xs:
            continue
        points = " ".join(point(x, y) for x, y in zip(xs, ys, strict=True))
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(
            f'<text x="{pad + 6}" y="{pad + 14 + 13 * index}" font-size="11" fill="{colour}">'
            f"{_esc(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# --- sections -----------------------------------------------------------------------------


def _read(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(stage: str) -> str:
    return f'<p class="missing">Stage {stage!r} has not run yet.</p>'


def _timings_section(run: TrainingRun, stages: list[str]) -> str:
    rows = []
    for stage in stages:
        record = run.stage_record(stage)
        if record:
            rows.append([stage, record["seconds"], record["finished_at"]])
        else:
            rows.append([stage, None, "not run"])
    total = sum(r[1] for r in rows if isinstance(r[1], float))
    rows.append(["total", total, ""])
    return "<h2>Stages and timings</h2>" + _table(rows, ["stage", "seconds", "finished"])


def _dataset_section(run: TrainingRun) -> str:
    record = run.stage_record("gather")
    if record is None:
        return "<h2>Dataset</h2>" + _missing("gather")
    summary = record["summary"]
    rows = [
        [
            name,
            label["found"],
            label["downloaded"],
            ", ".join(f"{k}={v}" for k, v in label["rejected"].items()) or "-",
        ]
        for name, label in summary["labels"].items()
    ]
    parts = ["<h2>Dataset</h2>", _table(rows, ["label", "found", "kept", "rejected"])]
    heldout = run.heldout_frames if run.stage_record("synthesise") or run.config.heldout else []
    if heldout:
        leopards = sum(f.label for f in heldout)
        multi = sum(1 for f in heldout if f.boxes is not None and len(f.boxes) >= 2)
        parts.append(
            f"<p>Held-out frames (ground truth, never trained on): {len(heldout)}, of which "
            f"{leopards} show a leopard ({multi} show two or more).</p>"
        )
    return "".join(parts)


def _classifier_section(run: TrainingRun) -> str:
    metrics = _read(run.stage_dir("classify") / "metrics.json")
    if metrics is None:
        return "<h2>Classifier</h2>" + _missing("classify")
    sets = [
        ("validation", "#1f77b4"),
        ("heldout", "#d62728"),
        ("real_heldout", "#9467bd"),
        ("out_of_fold", "#2ca02c"),
    ]
    roc = [
        (name, metrics[name]["roc_curve"]["fpr"], metrics[name]["roc_curve"]["tpr"], colour)
        for name, colour in sets
        if metrics.get(name)
    ]
    pr = [
        (name, metrics[name]["pr_curve"]["recall"], metrics[name]["pr_curve"]["precision"], colour)
        for name, colour in sets
        if metrics.get(name)
    ]
    rows = []
    for name, _ in sets:
        m = metrics.get(name)
        if m:
            g = m["at_gate"]
            rows.append(
                [
                    name,
                    m["frames"],
                    m["leopard_frames"],
                    m["roc_auc"],
                    m.get("zero_shot_roc_auc"),
                    g["recall"],
                    g["precision"],
                    g["false_positive_rate"],
                ]
            )
    export = metrics["export"]
    return (
        "<h2>Classifier</h2>"
        "<p>Zero-shot: the untouched ImageNet network's snow-leopard probability (class 289), "
        "the baseline the trained classifier must not fall below on real photos. "
        "real_heldout: leopards composited on held-out real photographs plus those photographs "
        "(real negatives).</p>"
        f"<p>Backbone {_esc(metrics['backbone'])}; head on top of "
        f"{_fmt(metrics.get('prior_weight', 0.0))} x the ImageNet prior; C = "
        f"{_fmt(metrics['regularisation_c'])}; gate threshold {_fmt(metrics['gate_threshold'])} "
        f"for target recall {metrics['target_recall']}. ONNX vs torch max abs diff: "
        f"{_esc(export['max_abs_diff'])}.</p>"
        + _table(
            rows,
            [
                "set",
                "frames",
                "leopards",
                "ROC-AUC",
                "zero-shot ROC-AUC",
                "recall@gate",
                "precision@gate",
                "FPR@gate",
            ],
        )
        + '<div class="grid">'
        + svg_curve(roc, "false-positive rate", "true-positive rate", diagonal=True)
        + svg_curve(pr, "recall", "precision")
        + "</div>"
    )


def _lime_section(run: TrainingRun) -> str:
    from snowtrap.training.config import ExplainConfig
    from snowtrap.training.lime import read_rgb

    metrics = _read(run.stage_dir("explain") / "metrics.json")
    frames = _read(run.stage_dir("explain") / "frames.json")
    if metrics is None or frames is None:
        return "<h2>LIME</h2>" + _missing("explain")
    rows = []
    for name in ("train", "heldout"):
        m = metrics[name]
        group = m.get("group_mode") or {}
        rows.append(
            [
                name,
                m["frames"],
                m["frames_with_truth"],
                m["single_box_mean_iou"],
                group.get("mean_iou"),
                m["two_animal_frames"],
                m["both_found_share"],
                m["seconds_per_image"],
            ]
        )
    # Settings a run recorded that the config no longer has (removed options) are left out.
    settings = {k: v for k, v in metrics["settings"].items() if k in ExplainConfig.model_fields}
    parts = [
        "<h2>LIME explanations and boxes</h2>",
        f"<p>{_esc(ExplainConfig(**settings).method_summary())} Off superpixels show the "
        f"frame's mean colour, kernel width {settings['kernel_width']}, groups by "
        f"{settings['connectivity']}-connectivity; refined regions in purple. Training frames "
        f"explained only when the classifier scores them at least "
        f"{_fmt(metrics['min_classifier_score'])}.</p>",
        _table(
            rows,
            [
                "set",
                "frames",
                "with truth",
                "single-box mean IoU",
                "per-group mean IoU",
                "2-animal frames",
                "both found",
                "s / image",
            ],
        ),
        '<p class="legend"><span><i class="swatch" style="background:#fff;border:1px solid #999">'
        '</i>ground truth</span><span><i class="swatch" style="background:#ffd700"></i>single '
        'box</span><span><i class="swatch" style="background:#00c8ff"></i>per-group boxes'
        '</span><span><i class="swatch" style="background:#a05aff"></i>refined regions</span>'
        "<span>left: whole-frame importances (green +, red -), superpixel borders; right: "
        "superpixels selected (located, when refining)</span></p>",
        '<div class="grid">',
    ]
    by_key = {row["key"]: row for row in frames}
    for sample in sorted((run.stage_dir("explain") / "samples").glob("*.npz")):
        row = by_key.get(sample.stem)
        if row is None:
            continue
        with np.load(sample) as stored:
            segments, importances = stored["segments"].astype(np.int32), stored["importances"]
            selected = stored["selected"]
        rgb = read_rgb(Path(row["path"]))
        heat, chosen = importance_overlay(rgb, segments, importances, selected)
        if row["truth"]:
            chosen = draw_boxes(chosen, np.asarray(row["truth"]), TRUTH_COLOUR, 3)
            heat = draw_boxes(heat, np.asarray(row["truth"]), TRUTH_COLOUR, 3)
        if row.get("regions"):
            heat = draw_boxes(heat, np.asarray(row["regions"]), REGION_COLOUR, 2)
        if row["single_box"] is not None:
            chosen = draw_boxes(chosen, np.asarray(row["single_box"]), SINGLE_COLOUR, 2)
        chosen = draw_boxes(chosen, np.asarray(row["group_boxes"]), GROUP_COLOUR, 2)
        parts.append(
            '<div class="card"><div class="pair">'
            f'<img src="{_jpeg_data_uri(heat)}"><img src="{_jpeg_data_uri(chosen)}"></div>'
            f"{_esc(row['key'])} P(leopard) {row['score']:.3f}, {row['seconds']:.2f} s</div>"
        )
    parts.append("</div>")
    return "".join(parts)


def _detector_section(run: TrainingRun) -> str:
    from snowtrap.training.lime import read_rgb

    metrics = _read(run.stage_dir("detect") / "metrics.json")
    if metrics is None:
        return "<h2>Detector</h2>" + _missing("detect")
    evaluation = metrics["evaluation"]
    self_rounds = metrics["training"].get("self_training_rounds", [])
    rows = []
    for name, m in evaluation.items():
        iou = m["iou_at_score_0_5"]
        rows.append(
            [
                name,
                m["frames"],
                m["frames_with_boxes"],
                m["map"],
                iou["mean_iou"],
                iou["share_iou_at_least_0_5"],
            ]
        )
    history = [
        [h["epoch"], h["mean_loss"], h["images"], h["seconds"]]
        for h in metrics["training"]["history"]
    ]
    check = metrics["onnx_check"]
    parts = [
        "<h2>Detector</h2>",
        f"<p>Faster R-CNN, EfficientNet-Lite0 + FPN, trained on "
        f"{metrics['training']['positive_frames']} LIME-boxed frames "
        f"({_esc(metrics['training']['box_mode'])} mode) and "
        f"{metrics['training']['negative_frames']} background frames. ONNX Runtime "
        f"{_fmt(metrics['onnx_seconds_per_image'])} s per frame.</p>",
        f"<p>{_esc(run.config.detect.method_summary())}</p>",
        _table(
            [
                [
                    r["round"],
                    r["frames"],
                    r["relabelled_by_detector"],
                    r["from_unexplained"],
                    r["boxes"],
                ]
                for r in self_rounds
            ],
            [
                "self-training round",
                "frames trained on",
                "relabelled by the detector",
                "of them not explained by LIME",
                "boxes",
            ],
        )
        if self_rounds
        else "",
        _table(
            rows,
            [
                "evaluation",
                "frames",
                "frames with boxes",
                "mAP@0.5",
                "mean IoU (score>=0.5)",
                "share IoU>=0.5",
            ],
        ),
        _table(history, ["epoch", "mean loss", "images", "seconds"]),
        f"<p>ONNX vs torch on {check['images']} frames: {check['boxes_compared']} boxes "
        f"compared (score >= {check['score_floor']}), count mismatches "
        f"{check['count_mismatches']}, min IoU {_fmt(check['min_box_iou'])}, max score diff "
        f"{_fmt(check['max_score_diff'])}: {'passed' if check['passed'] else 'FAILED'}.</p>",
    ]
    predictions = _read(run.stage_dir("detect") / "heldout_predictions.json") or {}
    heldout = [f for f in run.heldout_frames if f.image_id in predictions]
    chosen = [f for f in heldout if f.label][: run.config.report.detector_samples // 2 * 2]
    chosen += [f for f in heldout if not f.label][: run.config.report.detector_samples // 4]
    threshold = run.config.detect.detection_confidence
    parts.append(
        f'<p class="legend"><span><i class="swatch" style="background:#fff;border:1px solid '
        f'#999"></i>ground truth</span><span><i class="swatch" style="background:#ff3cc8"></i>'
        f"detections with score >= {threshold}</span></p>"
        '<div class="grid">'
    )
    for frame in chosen:
        image = Image.fromarray(read_rgb(frame.path))
        image.thumbnail((360, 360))
        if frame.boxes is not None and len(frame.boxes):
            image = draw_boxes(image, frame.boxes, TRUTH_COLOUR, 3)
        p = predictions[frame.image_id]
        boxes, scores = np.asarray(p["boxes"]).reshape(-1, 4), np.asarray(p["scores"])
        keep = scores >= threshold
        image = draw_boxes(
            image, boxes[keep], DETECTION_COLOUR, 2, [f"{s:.2f}" for s in scores[keep]]
        )
        parts.append(
            f'<div class="card"><img src="{_jpeg_data_uri(image)}">{_esc(frame.path.name)}</div>'
        )
    parts.append("</div>")
    return "".join(parts)


def _bundle_section(run: TrainingRun) -> str:
    record = run.stage_record("bundle")
    if record is None:
        return "<h2>Bundle</h2>" + _missing("bundle")
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
    sheets = "".join(
        f'<p><img alt="contact sheet" style="max-width:100%" src="'
        f'{_jpeg_data_uri(Image.open(Path(e["out_dir"]) / "contact_sheet.png"))}"></p>'
        for e in evaluations
        if (Path(e["out_dir"]) / "contact_sheet.png").is_file()
    )
    return (
        "<h2>Bundle</h2>"
        f"<p>{_esc(summary['bundle'])} version {_esc(summary['version'])}; model card "
        f"MODEL_CARD.md inside it.</p><pre>{_esc(json.dumps(summary['files'], indent=1))}</pre>"
        + (
            "<h3>Evaluation on labelled sets (snowtrap evaluate)</h3>"
            + _table(
                rows,
                [
                    "set",
                    "frames",
                    "leopards",
                    "ROC-AUC",
                    "recall@gate",
                    "negatives passing gate",
                    "negative frames with crop box",
                    "AP@0.5",
                ],
            )
            + sheets
            if evaluations
            else ""
        )
    )


def write_report(run: TrainingRun, stages: list[str]) -> Path:
    """Write `<run_dir>/report.html` from what the stages left; returns its path."""
    sections = [
        lambda run: _timings_section(run, stages),
        _dataset_section,
        _classifier_section,
        _lime_section,
        _detector_section,
        _bundle_section,
    ]
    body = []
    for section in sections:
        try:
            body.append(section(run))
        except Exception as exc:  # a broken section must not hide the others
            name = getattr(section, "__name__", "section")
            body.append(f'<p class="missing">{_esc(name)} failed: {_esc(exc)}</p>')
    page = Template(TEMPLATE.read_text()).substitute(
        title=_esc(f"snowtrap training run: {run.root.name}"),
        subtitle=_esc(f"run directory {run.root.resolve()}"),
        body="\n".join(body),
    )
    path = run.root / "report.html"
    path.write_text(page)
    return path
