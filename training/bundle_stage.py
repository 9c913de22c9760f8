"""Bundle stage: classifier + detector + manifest + model card, in the foundation's format.

The manifest carries what the stream needs (tensor contracts, thresholds, class names) and
what a reviewer needs (metrics, data provenance, the training config, the git commit); the
model card says the same for people. The written bundle is reopened with `load_bundle` and
run on a held-out frame before the stage counts as done.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from snowtrap.models.bundle import current_git_commit, load_bundle, write_bundle
from snowtrap.models.manifest import BundleManifest, ModelEntry, Provenance, Thresholds
from snowtrap.training.json_files import read_json

if TYPE_CHECKING:
    from snowtrap.training.run_directory import TrainingRun

__all__ = ["MODEL_CARD_NAME", "build_bundle", "bundle_directory", "model_card"]

MODEL_CARD_NAME = "MODEL_CARD.md"


def bundle_directory(run: TrainingRun) -> Path:
    cfg = run.config.bundle
    return Path(cfg.out) if cfg.out is not None else run.stage_dir("bundle") / cfg.name


def _data_sources(run: TrainingRun) -> list[dict[str, Any]]:
    """Per (source, label, licence): how many gathered frames; plus the held-out set."""
    rows = []
    manifest = run.stage_dir("gather") / "manifest.jsonl"
    for line in manifest.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    counts = Counter((r.get("source"), r.get("label"), r.get("licence")) for r in rows)
    sources: list[dict[str, Any]] = [
        {"role": "training", "source": source, "label": label, "licence": licence, "images": n}
        for (source, label, licence), n in sorted(counts.items(), key=lambda kv: str(kv[0]))
    ]
    synthetic = run.config.synthetic
    if synthetic is not None:
        sources.append(
            {
                "role": "generator",
                "source": "training.synthetic",
                "train_seed": synthetic.train.seed,
                "train_images": synthetic.train.n_images,
                "heldout_seed": synthetic.heldout.seed if synthetic.heldout else None,
                "heldout_images": synthetic.heldout.n_images if synthetic.heldout else None,
            }
        )
    if run.config.heldout is not None:
        sources.append({"role": "evaluation", "annotations": str(run.config.heldout.annotations)})
    return sources


def _headline_metrics(
    classify: dict[str, Any], explain: dict[str, Any], detect: dict[str, Any]
) -> dict[str, Any]:
    heldout = classify.get("heldout") or {}
    real = classify.get("real_heldout") or {}
    validation = classify["validation"]
    lime = explain.get("heldout") or {}
    evaluation = detect.get("evaluation", {})
    return {
        "classifier": {
            "validation_roc_auc": validation["roc_auc"],
            "heldout_roc_auc": heldout.get("roc_auc"),
            "heldout_zero_shot_roc_auc": heldout.get("zero_shot_roc_auc"),
            "real_heldout_roc_auc": real.get("roc_auc"),
            "real_heldout_zero_shot_roc_auc": real.get("zero_shot_roc_auc"),
            "prior_weight": classify.get("prior_weight", 0.0),
            "gate_threshold": classify["gate_threshold"],
            "target_recall": classify["target_recall"],
            "validation_at_gate": validation["at_gate"],
            "heldout_at_gate": heldout.get("at_gate"),
        },
        "lime": {
            "heldout_single_box_mean_iou": lime.get("single_box_mean_iou"),
            "heldout_group_mean_iou": (lime.get("group_mode") or {}).get("mean_iou"),
            "heldout_both_found_share": lime.get("both_found_share"),
            "seconds_per_image": lime.get("seconds_per_image"),
        },
        "detector": {
            "heldout_map50_vs_truth": evaluation.get("heldout_vs_truth", {}).get("map"),
            "heldout_map50_vs_lime": evaluation.get("heldout_vs_lime", {}).get("map"),
            "onnx_seconds_per_image": detect.get("onnx_seconds_per_image"),
            "onnx_check": detect.get("onnx_check"),
        },
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def model_card(manifest: BundleManifest, metrics: dict[str, Any], run: TrainingRun) -> str:
    """The model card (markdown): what the models are for, how good, from which data."""
    c, lime, d = metrics["classifier"], metrics["lime"], metrics["detector"]
    gate_v = c["validation_at_gate"]
    gate_h = c.get("heldout_at_gate") or {}
    lines = [
        f"# Model card: {manifest.name} {manifest.version}",
        "",
        f"Created {manifest.created_at.isoformat()} by `snowtrap train` "
        f"(git commit `{manifest.provenance.git_commit or 'unknown'}`).",
        "",
        "## What it is for",
        "",
        "Finding snow leopards in camera-trap frames. The classifier scores every frame; frames "
        "at or above the gate go to the detector, whose boxes are reported and cropped for "
        "individual identification. The gate is set for recall: a missed leopard costs more "
        "than a false alarm.",
        "",
        "## Models",
        "",
        "| role | file | input | notes |",
        "| --- | --- | --- | --- |",
    ]
    for role, entry in manifest.models.items():
        shape = ", ".join(f"{s.name} {s.shape}" for s in entry.inputs)
        lines.append(f"| {role} | `{entry.file}` | {shape} | {entry.notes} |")
    lines += [
        "",
        "The classifier is the pretrained EfficientNet-Lite0 (ImageNet) with a class-balanced "
        "logistic-regression head, exported as one ONNX graph. The detector is a Faster R-CNN "
        "on the same backbone with an FPN, trained on boxes drawn by LIME explanations of "
        "the classifier: no hand-drawn boxes were used.",
        "",
        run.config.explain.method_summary(),
        "",
        run.config.detect.method_summary(),
        "",
        "## Operating thresholds",
        "",
        f"- classifier gate: {manifest.thresholds.classifier_gate:.4f} (target leopard recall "
        f"{c['target_recall']}, chosen on out-of-fold training scores)",
        f"- detection confidence: {manifest.thresholds.detection_confidence}",
        f"- crop: {manifest.thresholds.crop}",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| classifier ROC-AUC, validation split | {_fmt(c['validation_roc_auc'])} |",
        f"| classifier ROC-AUC, held-out frames | {_fmt(c['heldout_roc_auc'])} "
        f"(zero-shot ImageNet prior: {_fmt(c.get('heldout_zero_shot_roc_auc'))}) |",
        f"| classifier ROC-AUC, held-out real photos | {_fmt(c.get('real_heldout_roc_auc'))} "
        f"(zero-shot ImageNet prior: {_fmt(c.get('real_heldout_zero_shot_roc_auc'))}) |",
        f"| recall / precision at gate, validation | {_fmt(gate_v.get('recall'))} / "
        f"{_fmt(gate_v.get('precision'))} |",
        f"| recall / precision at gate, held-out | {_fmt(gate_h.get('recall'))} / "
        f"{_fmt(gate_h.get('precision'))} |",
        f"| LIME single box mean IoU vs truth, held-out | "
        f"{_fmt(lime['heldout_single_box_mean_iou'])} |",
        "| LIME per-group mean IoU per animal, held-out | "
        f"{_fmt(lime['heldout_group_mean_iou'])} |",
        f"| LIME per-group: both animals found (two-animal frames) | "
        f"{_fmt(lime['heldout_both_found_share'])} |",
        f"| detector mAP@0.5 vs ground truth, held-out | {_fmt(d['heldout_map50_vs_truth'])} |",
        f"| detector mAP@0.5 vs LIME boxes, held-out | {_fmt(d['heldout_map50_vs_lime'])} |",
        f"| LIME seconds per image | {_fmt(lime['seconds_per_image'])} |",
        f"| detector seconds per image (ONNX Runtime, CPU) | "
        f"{_fmt(d['onnx_seconds_per_image'], 4)} |",
        "",
        "## Data",
        "",
    ]
    for source in manifest.provenance.data_sources:
        if isinstance(source, dict):
            lines.append("- " + ", ".join(f"{k}: {v}" for k, v in source.items()))
        else:
            lines.append(f"- {source}")
    lines += _evaluation_lines(metrics.get("evaluations") or [])
    lines += [
        "",
        "## Limitations",
        "",
        "- Labels come from image search or dataset categories, boxes from LIME: both are "
        "noisy, and the detector inherits LIME's habit of boxing the most telling part of an "
        "animal rather than all of it.",
        "- Metrics on synthetic frames say the pipeline works, not how the models do on real "
        "camera traps; evaluate on a labelled real set before deployment.",
        "- Night (infrared) frames and partly hidden animals are the hardest cases.",
        "",
        "## Reproduce",
        "",
        f"`snowtrap train CONFIG` with the training config stored in the manifest "
        f"(`provenance.training_config`); run directory `{run.root}`.",
        "",
    ]
    return "\n".join(lines)


def _evaluation_lines(evaluations: list[dict[str, Any]]) -> list[str]:
    """Model-card rows of `snowtrap evaluate` on the config's labelled sets."""
    if not evaluations:
        return []
    lines = [
        "",
        "## Evaluation on labelled sets (`snowtrap evaluate`)",
        "",
        "| set | frames (leopard) | ROC-AUC | recall at gate | negatives passing the gate | "
        "negative frames with a box at the crop threshold | detector AP@0.5 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in evaluations:
        lines.append(
            f"| `{e['labels']}` | {e['images']} ({e['leopard_frames']}) | {_fmt(e['roc_auc'])} "
            f"| {_fmt(e['recall'])} | {e['negative_frames_passing']} of {e['negative_frames']} "
            f"| {_fmt(e['crop_false_alarm_frames'])} | {_fmt(e['ap50'])} |"
        )
    return lines


def evaluate_on_labelled_sets(run: TrainingRun, directory: Path) -> list[dict[str, Any]]:
    """`snowtrap evaluate` of the written bundle on each set in the config's `evaluate` list;
    the full results (and contact sheets) go to `bundle/evaluate/<set>/`."""
    from snowtrap.training.bundle_evaluation import evaluate_bundle

    headlines = []
    for index, entry in enumerate(run.config.evaluate):
        labels = Path(str(entry).replace("{run_dir}", str(run.root)))
        out = run.stage_dir("bundle") / "evaluate" / f"{index}-{labels.parent.name}-{labels.stem}"
        result = evaluate_bundle(directory, labels, out_dir=out, progress=run.progress)
        image, detector = result["image_level"], result["detector"].get("all_frames") or {}
        headlines.append(
            {
                "labels": str(entry),
                "out_dir": str(out),
                "images": image["images"],
                "leopard_frames": image["leopard_frames"],
                "negative_frames": image["negative_frames"],
                "roc_auc": image["roc_auc"],
                "recall": image["recall"],
                "negative_frames_passing": image["negative_frames_passing"],
                "false_alarm_rate": image["false_alarm_rate"],
                "crop_false_alarm_frames": (detector.get("at_crop") or {}).get(
                    "false_alarm_frames"
                ),
                "ap50": detector.get("ap50"),
            }
        )
    return headlines


def build_bundle(run: TrainingRun) -> dict[str, Any]:
    classify = read_json(run.stage_dir("classify") / "metrics.json")
    explain = read_json(run.stage_dir("explain") / "metrics.json")
    detect = read_json(run.stage_dir("detect") / "metrics.json")
    classifier_entry = ModelEntry.model_validate(classify["export"]["model_entry"])
    detector_entry = ModelEntry.model_validate(
        read_json(run.stage_dir("detect") / "model_entry.json")
    )
    config_dump = run.config.model_dump(mode="json")
    config_hash = hashlib.sha256(json.dumps(config_dump, sort_keys=True).encode()).hexdigest()
    version = run.config.bundle.version or (
        datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + config_hash[:8]
    )
    metrics = _headline_metrics(classify, explain, detect)
    manifest = BundleManifest(
        name=run.config.bundle.name,
        version=version,
        class_names=list(detect["architecture"]["class_names"]),
        models={"classifier": classifier_entry, "detector": detector_entry},
        thresholds=Thresholds(
            classifier_gate=float(np.clip(classify["gate_threshold"], 0.0, 1.0)),
            detection_confidence=run.config.detect.detection_confidence,
            crop=run.config.detect.crop_threshold,
        ),
        metrics=metrics,
        provenance=Provenance(
            data_sources=_data_sources(run),
            training_config=config_dump,
            git_commit=current_git_commit(Path(__file__).parent),
            notes=[
                "detector trained on LIME boxes "
                f"({run.config.explain.detector_boxes} mode), no hand-drawn boxes",
                f"classifier ONNX vs torch max abs diff {classify['export']['max_abs_diff']}",
                f"detector ONNX vs torch: {detect['onnx_check']}",
            ],
        ),
    )
    directory = bundle_directory(run)
    files = {
        classifier_entry.file: run.stage_dir("classify") / classifier_entry.file,
        detector_entry.file: run.stage_dir("detect") / detector_entry.file,
    }
    card = model_card(manifest, metrics, run)
    written = write_bundle(
        directory, manifest, {**files, MODEL_CARD_NAME: card.encode()}, overwrite=True
    )
    if run.config.evaluate:  # evaluate the written bundle, then record the figures in it
        metrics = {**metrics, "evaluations": evaluate_on_labelled_sets(run, directory)}
        manifest = manifest.model_copy(update={"metrics": metrics})
        card = model_card(manifest, metrics, run)
        written = write_bundle(
            directory, manifest, {**files, MODEL_CARD_NAME: card.encode()}, overwrite=True
        )
    (run.root / MODEL_CARD_NAME).write_text(card)
    bundle = load_bundle(directory)
    frames = run.heldout_frames or []
    probe = [f for f in frames if f.label == 1][:1]
    dry_run: dict[str, Any] = {}
    if probe:
        from snowtrap.training.image_files import read_rgb

        rgb = read_rgb(probe[0].path)
        dry_run = {
            "frame": str(probe[0].path),
            "probability": float(bundle.classify([rgb])[0]),
            "detections": [d.__dict__ for d in bundle.detect([rgb])[0]],
        }
    return {
        "bundle": str(directory),
        "version": written.version,
        "files": {name: record.sha256 for name, record in written.files.items()},
        "dry_run": dry_run,
        "evaluations": metrics.get("evaluations", []),
    }
