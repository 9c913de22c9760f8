"""`snowtrap train CONFIG`: [synthesise] -> gather -> classify -> explain -> detect -> bundle.

Every stage writes into its own folder under the run directory and finishes by writing
`<stage>/stage.json` with a fingerprint: a hash of the config sections it reads and of the
completion tokens of the stages before it. A later run skips a stage whose fingerprint is
unchanged, so a re-run resumes where the last one stopped, and a changed section re-runs that
stage and everything after it. `--stage NAME` runs one stage (its inputs must exist);
`--force` re-runs even when done. The HTML report is rebuilt at the end of every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from snowtrap.training.classify import LabelledImage
from snowtrap.training.config import TrainConfig
from snowtrap.training.json_files import read_json, write_json

__all__ = [
    "STAGES",
    "StageResult",
    "TrainingRun",
    "configure_cli",
    "read_gathered_frames",
    "run_training",
]

STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class StageResult:
    name: str
    skipped: bool
    seconds: float
    summary: dict[str, Any]


class TrainingRun:
    """The run directory of one config: where each stage reads and writes."""

    def __init__(self, config: TrainConfig, progress: bool = True) -> None:
        self.config = config
        self.root = Path(config.run_dir)
        self.progress = progress

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        path = self.stage_dir(stage) / STAGE_FILE
        return read_json(path) if path.is_file() else None

    def require(self, stage: str) -> dict[str, Any]:
        record = self.stage_record(stage)
        if record is None:
            raise StageInputMissing(f"stage {stage!r} has not run in {self.root}; run it first")
        return record

    @property
    def heldout_frames(self) -> list[LabelledImage]:
        """Frames with ground truth never trained on (synthetic held-out seed by default)."""
        from snowtrap.training.classify import read_coco_camera_traps

        if self.config.heldout is not None:
            return read_coco_camera_traps(
                self.config.heldout.annotations, self.config.heldout.image_root
            )
        if self.config.synthetic is not None and self.config.synthetic.heldout is not None:
            record = self.require("synthesise")
            return read_coco_camera_traps(Path(record["summary"]["heldout"]["annotations"]))
        return []

    @property
    def real_heldout_frames(self) -> list[LabelledImage]:
        """Frames on real photographs never trained on (empty when the config has none)."""
        from snowtrap.training.classify import read_coco_camera_traps

        if self.config.synthetic is None or self.config.synthetic.real_heldout is None:
            return []
        record = self.require("synthesise")
        return read_coco_camera_traps(Path(record["summary"]["real_heldout"]["annotations"]))


class StageInputMissing(RuntimeError):
    """A stage was asked to run before the stages it reads from."""


# --- stages -------------------------------------------------------------------------------


def stage_synthesise(run: TrainingRun) -> dict[str, Any]:
    """Synthetic camera-trap frames: a training set for gather, and a held-out set."""
    from snowtrap.training.synthetic import write_dataset

    synthetic = run.config.synthetic
    assert synthetic is not None
    out = run.stage_dir("synthesise")
    summary: dict[str, Any] = {}
    sets = {
        "train": synthetic.train,
        "heldout": synthetic.heldout,
        "real_heldout": synthetic.real_heldout,
    }
    for name, spec in sets.items():
        if spec is None:
            continue
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        result = write_dataset(target, spec.n_images, spec.seed, **spec.options)
        annotations = _annotations_path(result, target)
        if spec.add_frames is not None:
            append_coco_frames(annotations, spec.add_frames)
        summary[name] = {
            "annotations": str(annotations),
            "n_images": spec.n_images,
            "seed": spec.seed,
            "added_frames": str(spec.add_frames) if spec.add_frames else None,
        }
    return summary


def append_coco_frames(annotations: Path, extra: Path) -> None:
    """Append the images of another COCO Camera Traps file (paths made absolute, ids
    prefixed, categories matched by name) to `annotations`, keeping their licence fields."""
    document = read_json(annotations)
    other = read_json(extra)
    ids = {c["name"]: c["id"] for c in document["categories"]}
    for category in other["categories"]:
        if category["name"] not in ids:
            ids[category["name"]] = max(ids.values()) + 1
            document["categories"].append({"id": ids[category["name"]], "name": category["name"]})
    names = {c["id"]: c["name"] for c in other["categories"]}
    root = Path(extra).resolve().parent
    for image in other["images"]:
        document["images"].append(
            {**image, "id": f"real-{image['id']}", "file_name": str(root / image["file_name"])}
        )
    for annotation in other["annotations"]:
        document["annotations"].append(
            {
                **annotation,
                "id": f"real-{annotation['id']}",
                "image_id": f"real-{annotation['image_id']}",
                "category_id": ids[names[annotation["category_id"]]],
            }
        )
    write_json(annotations, document)


def _annotations_path(result: Any, folder: Path) -> Path:
    """Where write_dataset put its COCO Camera Traps JSON."""
    for attribute in ("annotations_path", "annotations", "coco_path", "json_path"):
        value = getattr(result, attribute, None)
        if isinstance(value, str | Path) and Path(value).is_file():
            return Path(value)
    if isinstance(result, str | Path) and Path(result).is_file():
        return Path(result)
    candidates = sorted(folder.glob("*.json"))
    if len(candidates) != 1:
        raise RuntimeError(f"cannot tell which JSON in {folder} is the COCO file: {candidates}")
    return candidates[0]


def _gather_config(run: TrainingRun) -> Any:
    """The gather section with `{run_dir}` filled in and its output inside the run."""
    raw = run.config.gather.model_dump(mode="json")
    text = json.dumps(raw).replace("{run_dir}", str(run.root.resolve()))
    data = json.loads(text)
    data["out_dir"] = str(run.stage_dir("gather").resolve())
    data["progress"] = run.progress and data.get("progress", True)
    return type(run.config.gather).model_validate(data)


def stage_gather(run: TrainingRun) -> dict[str, Any]:
    from snowtrap.training.gather import gather

    result = gather(_gather_config(run))
    summary: dict[str, Any] = {
        "manifest": str(result.manifest_path),
        "labels": {name: asdict(label) for name, label in result.labels.items()},
        "rejected": len(result.rejected),
        "search_errors": result.search_errors,
        "table": result.format_summary(),
    }
    frames = read_gathered_frames(run.stage_dir("gather"), run.config.gather)
    summary["frames"] = len(frames)
    summary["leopard_frames"] = sum(f.label for f in frames)
    return summary


def read_gathered_frames(gather_dir: Path, gather_config: Any) -> list[LabelledImage]:
    """Gather's `manifest.jsonl` -> labelled frames, with ground-truth boxes when the source
    had them (COCO Camera Traps annotations)."""
    positive_label = gather_config.labels.positive
    frames = []
    for line in (gather_dir / "manifest.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        path = Path(row["path"])
        if not path.is_absolute():
            path = gather_dir / path
        label = int(row["label"] == positive_label)
        frames.append(
            LabelledImage(
                image_id=str(row.get("sha256") or row.get("id") or path.stem),
                path=path,
                label=label,
                boxes=_truth_boxes(row, positive_label),
                source=str(row.get("source", "")),
                extra={"url": row.get("url"), "licence": row.get("licence")},
            )
        )
    return frames


def _truth_boxes(row: dict[str, Any], positive_label: str) -> np.ndarray | None:
    """Normalised xyxy leopard boxes from a manifest row, or None when the source had none."""
    from snowtrap.training.sources.coco_camera_traps import normalise_category

    candidate = row.get("candidate", row)
    annotations = candidate.get("annotations") or row.get("annotations")
    width = row.get("width") or candidate.get("width")
    height = row.get("height") or candidate.get("height")
    if not annotations or not width or not height:
        return None
    wanted = normalise_category(positive_label)
    boxes = [
        a["bbox"]
        for a in annotations
        if a.get("bbox") is not None and normalise_category(str(a.get("category", ""))) == wanted
    ]
    xywh = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    return (
        np.stack([xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2], xywh[:, 1] + xywh[:, 3]], axis=1)
        / scale
    )


def _training_frames(run: TrainingRun) -> list[LabelledImage]:
    run.require("gather")
    return read_gathered_frames(run.stage_dir("gather"), run.config.gather)


def stage_classify(run: TrainingRun) -> dict[str, Any]:
    from snowtrap.training.classify import (
        FeatureCache,
        choose_gate,
        classifier_metrics,
        compute_features,
        export_feature_extractor,
        export_leopard_classifier,
        fit_leopard_head,
        imagenet_layer,
        prior_logits,
        score_features,
        split_train_validation,
    )

    cfg = run.config.classify
    out = run.stage_dir("classify")
    out.mkdir(parents=True, exist_ok=True)
    frames = _training_frames(run)
    labels = np.array([f.label for f in frames])
    if labels.sum() < 2 or (labels == 0).sum() < 2:
        raise RuntimeError(f"need leopard and other frames; got {labels.sum()} of {labels.size}")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    extractor_path = out / "feature_extractor.onnx"
    if not extractor_path.is_file():
        export_feature_extractor(cfg.backbone, cfg.weights_path, extractor_path)
    timings["export_feature_extractor"] = time.perf_counter() - started
    cache = FeatureCache(out / f"features-{cfg.backbone}.npz")
    layer = imagenet_layer(cfg.backbone, cfg.weights_path)

    def features_of(chosen: list[LabelledImage], flip: bool = False) -> np.ndarray:
        if not chosen:
            return np.zeros((0, layer[0].shape[1]), dtype=np.float32)
        return compute_features(
            chosen, extractor_path, cache, 224, cfg.batch_size, flip=flip, progress=run.progress
        )

    started = time.perf_counter()
    features = features_of(frames)
    train_idx, val_idx = split_train_validation(labels, cfg.validation_fraction, cfg.seed)
    x_train, y_train = features[train_idx], labels[train_idx]
    if cfg.augment_flip:
        flipped = features_of([frames[i] for i in train_idx], flip=True)
        x_train, y_train = np.concatenate([x_train, flipped]), np.concatenate([y_train, y_train])
    evaluation_sets = {"heldout": run.heldout_frames, "real_heldout": run.real_heldout_frames}
    evaluation_features = {name: features_of(chosen) for name, chosen in evaluation_sets.items()}
    timings["features"] = time.perf_counter() - started
    started = time.perf_counter()
    fit = fit_leopard_head(
        x_train,
        y_train,
        cfg.c_grid,
        cfg.folds,
        cfg.seed,
        prior=prior_logits(x_train, layer),
        prior_weight=cfg.prior_weight,
    )
    fit.save(out / "head.npz")
    gate = choose_gate(fit, y_train, cfg.target_recall)
    timings["fit_head"] = time.perf_counter() - started

    def trained_and_zero_shot(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prior = prior_logits(x, layer)
        return score_features(x, fit, prior), 1.0 / (1.0 + np.exp(-prior))

    scores, zero_shot = trained_and_zero_shot(features)
    started = time.perf_counter()
    export = export_leopard_classifier(fit, cfg.backbone, cfg.weights_path, out / "classifier.onnx")
    timings["export_classifier"] = time.perf_counter() - started
    split = np.array(["train"] * len(frames), dtype=object)
    split[val_idx] = "validation"
    write_json(
        out / "scores.json",
        [
            {
                "image_id": f.image_id,
                "path": str(f.path),
                "label": f.label,
                "split": s,
                "score": float(p),
                "zero_shot": float(z),
            }
            for f, s, p, z in zip(frames, split, scores, zero_shot, strict=True)
        ],
    )
    metrics: dict[str, Any] = {
        "backbone": cfg.backbone,
        "prior_weight": cfg.prior_weight,
        "gate_threshold": gate,
        "target_recall": cfg.target_recall,
        "regularisation_c": fit.regularisation_c,
        "train_rows": int(y_train.size),
        "out_of_fold": classifier_metrics(y_train, fit.out_of_fold_scores, gate),
        "validation": classifier_metrics(labels[val_idx], scores[val_idx], gate),
        "export": export,
        "timings": timings,
    }
    zero_shot_auc: dict[str, float | None] = {}
    for name, chosen in evaluation_sets.items():
        if not chosen:
            metrics[name] = None
            continue
        set_labels = np.array([f.label for f in chosen])
        set_scores, set_zero_shot = trained_and_zero_shot(evaluation_features[name])
        write_json(
            out / f"{name}_scores.json",
            [
                {
                    "image_id": f.image_id,
                    "path": str(f.path),
                    "label": f.label,
                    "score": float(p),
                    "zero_shot": float(z),
                }
                for f, p, z in zip(chosen, set_scores, set_zero_shot, strict=True)
            ],
        )
        metrics[name] = classifier_metrics(set_labels, set_scores, gate)
        metrics[name]["zero_shot_roc_auc"] = classifier_metrics(set_labels, set_zero_shot, gate)[
            "roc_auc"
        ]
        zero_shot_auc[name] = metrics[name]["zero_shot_roc_auc"]
    write_json(out / "metrics.json", metrics)
    return {
        "frames": len(frames),
        "gate_threshold": gate,
        "validation_roc_auc": metrics["validation"]["roc_auc"],
        "heldout_roc_auc": metrics["heldout"]["roc_auc"] if metrics["heldout"] else None,
        "real_heldout_roc_auc": metrics["real_heldout"]["roc_auc"]
        if metrics["real_heldout"]
        else None,
        "zero_shot_roc_auc": zero_shot_auc,
        "export_max_abs_diff": export["max_abs_diff"],
    }


def _explained_records_summary(
    records: list[dict[str, Any]], truth: dict[str, np.ndarray | None], found_iou: float
) -> dict[str, Any]:
    """LIME boxes against ground truth: single-box and per-group mode."""
    from snowtrap.training.evaluate import box_match_stats, enclosing_box, finds_all, matched_ious

    single_ious, group_pred, group_truth = [], [], []
    two_animals = two_found = 0
    for record in records:
        boxes = truth.get(record["key"])
        if boxes is None or np.asarray(boxes).size == 0:
            continue
        single = record["single_box"]
        single_ious.append(
            0.0 if single is None else float(matched_ious(single, enclosing_box(boxes))[0])
        )
        group_pred.append(record["group_boxes"])
        group_truth.append(boxes)
        if len(boxes) == 2:
            two_animals += 1
            two_found += finds_all(record["group_boxes"], boxes, found_iou)
    seconds = [r["seconds"] for r in records]
    group_stats = box_match_stats(group_pred, group_truth) if group_truth else None
    return {
        "frames": len(records),
        "frames_with_truth": len(single_ious),
        "seconds_per_image": float(np.mean(seconds)) if seconds else None,
        "single_box_mean_iou": float(np.mean(single_ious)) if single_ious else None,
        "single_box_share_iou_0_5": float(np.mean(np.array(single_ious) >= 0.5))
        if single_ious
        else None,
        "group_mode": group_stats.to_dict() if group_stats else None,
        "two_animal_frames": two_animals,
        "two_animal_frames_both_found": two_found,
        "both_found_share": two_found / two_animals if two_animals else None,
        "found_iou": found_iou,
    }


def _save_lime_samples(records: list[dict[str, Any]], folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for record in records[:count]:
        np.savez_compressed(
            folder / f"{record['key']}.npz",
            segments=record["segments"].astype(np.int16),
            importances=record["importances"],
            selected=record["selected"],
            single_box=np.zeros((0, 4)) if record["single_box"] is None else record["single_box"],
            group_boxes=record["group_boxes"],
        )


def _explain_min_score(run: TrainingRun) -> float | None:
    """`explain.min_classifier_score`, with "gate" read as the classifier's gate threshold."""
    setting = run.config.explain.min_classifier_score
    if setting == "gate":
        return float(run.require("classify")["summary"]["gate_threshold"])
    return setting


def _classified_leopard_frames(run: TrainingRun) -> list[LabelledImage]:
    """The training frames labelled leopard that the classifier also scores as leopard (at
    least `_explain_min_score`), in gather order."""
    run.require("classify")
    minimum = _explain_min_score(run)
    scores = {
        row["image_id"]: row["score"]
        for row in read_json(run.stage_dir("classify") / "scores.json")
    }
    return [
        f
        for f in _training_frames(run)
        if f.label == 1 and (minimum is None or scores[f.image_id] >= minimum)
    ]


def stage_explain(run: TrainingRun) -> dict[str, Any]:
    from snowtrap.training.lime import LimeJob, explain_dataset, write_coco_annotations

    cfg = run.config.explain
    out = run.stage_dir("explain")
    out.mkdir(parents=True, exist_ok=True)
    classifier = run.stage_dir("classify") / "classifier.onnx"
    minimum, chosen = _explain_min_score(run), _classified_leopard_frames(run)
    if cfg.max_train_images is not None:
        chosen = chosen[: cfg.max_train_images]
    heldout = [f for f in run.heldout_frames if f.label == 1][: cfg.heldout_images]
    settings = cfg.lime_settings()
    started = time.perf_counter()
    jobs = [LimeJob(i, str(f.path)) for i, f in enumerate(chosen + heldout)]
    records = explain_dataset(jobs, classifier, settings, cfg.workers, progress=run.progress)
    seconds = time.perf_counter() - started
    keys = [f"train-{i}" for i in range(len(chosen))] + [
        f"heldout-{i}" for i in range(len(heldout))
    ]
    for record, key in zip(records, keys, strict=True):
        record["key"] = key
    train_records, heldout_records = records[: len(chosen)], records[len(chosen) :]
    ids = {i: f.image_id for i, f in enumerate(chosen + heldout)}
    for mode in ("group", "single"):
        write_coco_annotations(train_records, out / f"lime_{mode}.json", mode, file_names=ids)
        write_coco_annotations(
            heldout_records, out / f"heldout_lime_{mode}.json", mode, file_names=ids
        )
    write_json(
        out / "frames.json",
        [
            {
                "key": key,
                "image_id": f.image_id,
                "path": str(f.path),
                "label": f.label,
                "set": key.split("-")[0],
                "width": r["width"],
                "height": r["height"],
                "score": r["score"],
                "seconds": r["seconds"],
                "single_box": r["single_box"],
                "group_boxes": r["group_boxes"],
                "group_shares": r["group_shares"],
                "regions": r["regions"],
                "truth": f.boxes,
            }
            for key, f, r in zip(keys, chosen + heldout, records, strict=True)
        ],
    )
    samples = run.config.report.lime_samples
    _save_lime_samples(heldout_records or train_records, out / "samples", samples)
    truth = {key: f.boxes for key, f in zip(keys, chosen + heldout, strict=True)}
    metrics = {
        "settings": cfg.model_dump(mode="json"),
        "min_classifier_score": minimum,
        "seconds": seconds,
        "train": _explained_records_summary(train_records, truth, cfg.found_iou),
        "heldout": _explained_records_summary(heldout_records, truth, cfg.found_iou),
        "mean_timings": {
            part: float(np.mean([r["timings"].get(part, 0.0) for r in records]))
            for part in sorted({part for r in records for part in r["timings"]})
        },
    }
    write_json(out / "metrics.json", metrics)
    return {
        "train_frames": len(chosen),
        "heldout_frames": len(heldout),
        "seconds": seconds,
        "heldout_single_box_mean_iou": metrics["heldout"]["single_box_mean_iou"],
        "heldout_both_found_share": metrics["heldout"]["both_found_share"],
    }


def stage_detect(run: TrainingRun) -> dict[str, Any]:
    import torch

    from snowtrap.models.detector import (
        build_leopard_detector,
        check_detector_onnx,
        detector_model_entry,
        export_detector_onnx,
        save_detector_checkpoint,
        use_test_proposals,
    )
    from snowtrap.models.inference import create_session, run_detector
    from snowtrap.training.detect import (
        detector_average_precision,
        load_training_frames,
        self_train_detector,
        train_detector,
    )
    from snowtrap.training.lime import read_rgb

    cfg = run.config.detect
    run.require("explain")
    out = run.stage_dir("detect")
    out.mkdir(parents=True, exist_ok=True)
    explained = read_json(run.stage_dir("explain") / "frames.json")
    mode = run.config.explain.detector_boxes
    box_field = "group_boxes" if mode == "group" else "single_box"
    positive_items = [
        (row["image_id"], Path(row["path"]), np.asarray(row[box_field] or [], dtype=np.float64))
        for row in explained
        if row["set"] == "train" and row[box_field]
    ]
    negative_items = [
        (f.image_id, f.path, np.zeros((0, 4))) for f in _training_frames(run) if f.label == 0
    ]
    arch = cfg.architecture()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    positives = load_training_frames(positive_items, arch.max_size)
    negatives = load_training_frames(negative_items, arch.max_size)
    timings["load"] = time.perf_counter() - started
    torch.manual_seed(cfg.seed)
    model = build_leopard_detector(arch, run.config.classify.weights_path)
    settings, augment = cfg.train_settings(), cfg.augment.settings()
    started = time.perf_counter()
    history = train_detector(model, positives, negatives, settings, augment, progress=run.progress)
    if settings.self_training_rounds:
        explained_ids = {f.image_id for f in positives}
        candidates = _classified_leopard_frames(run) if cfg.self_training_unexplained else []
        unexplained = load_training_frames(
            [
                (f.image_id, f.path, np.zeros((0, 4)))
                for f in candidates
                if f.image_id not in explained_ids
            ],
            arch.max_size,
        )
        self_history, self_rounds = self_train_detector(
            model, positives, unexplained, negatives, settings, augment, progress=run.progress
        )
        history += self_history
    else:
        self_rounds = []
    timings["train"] = time.perf_counter() - started
    arch = use_test_proposals(
        model, arch, cfg.export_rpn_pre_nms_top_n, cfg.export_rpn_post_nms_top_n
    )
    save_detector_checkpoint(model, arch, out / "detector.pt")

    started = time.perf_counter()
    heldout = run.heldout_frames
    sample = positives[0].rgb if positives else negatives[0].rgb
    onnx_path = export_detector_onnx(model, out / "detector.onnx", sample, cfg.export_opset)
    timings["export"] = time.perf_counter() - started
    check_frames = [
        read_rgb(f.path) for f in (heldout or _training_frames(run))[: cfg.check_images]
    ]
    from snowtrap.training.detect import resize_for_detector

    check_frames = [resize_for_detector(rgb, arch.max_size)[0] for rgb in check_frames]
    check = check_detector_onnx(model, onnx_path, check_frames, cfg.check_score_floor)
    check_passed = check.passed(cfg.check_iou_tolerance, cfg.check_score_tolerance)
    entry = detector_model_entry(arch, onnx_path.name, nested_share=cfg.nested_share)
    write_json(out / "model_entry.json", entry.model_dump(mode="json"))

    # Evaluate the exported graph the way the stream runs it (ONNX Runtime, manifest contract).
    started = time.perf_counter()
    session = create_session(onnx_path, ["CPUExecutionProvider"])
    evaluation: dict[str, Any] = {}
    predictions_by_key: dict[str, Any] = {}
    per_image_seconds: list[float] = []
    if heldout:
        predictions = []
        for frame in heldout:
            rgb = read_rgb(frame.path)
            t0 = time.perf_counter()
            detections = run_detector(session, entry, arch.class_names, [rgb], 0.0)[0]
            per_image_seconds.append(time.perf_counter() - t0)
            boxes = np.array(
                [
                    [
                        d.box_xywh_normalised[0],
                        d.box_xywh_normalised[1],
                        d.box_xywh_normalised[0] + d.box_xywh_normalised[2],
                        d.box_xywh_normalised[1] + d.box_xywh_normalised[3],
                    ]
                    for d in detections
                ]
            ).reshape(-1, 4)
            scores = np.array([d.score for d in detections])
            predictions.append((boxes, scores))
            predictions_by_key[frame.image_id] = {"boxes": boxes, "scores": scores}
        truth = [f.boxes if f.boxes is not None else np.zeros((0, 4)) for f in heldout]
        evaluation["heldout_vs_truth"] = detector_average_precision(predictions, truth)
        lime_rows = {r["image_id"]: r for r in explained if r["set"] == "heldout"}
        lime_pairs = [
            (p, np.asarray(lime_rows[f.image_id][box_field] or [], dtype=np.float64).reshape(-1, 4))
            for f, p in zip(heldout, predictions, strict=True)
            if f.image_id in lime_rows
        ]
        if lime_pairs:
            evaluation["heldout_vs_lime"] = detector_average_precision(
                [p for p, _ in lime_pairs], [t for _, t in lime_pairs]
            )
    timings["evaluate"] = time.perf_counter() - started
    write_json(out / "heldout_predictions.json", predictions_by_key)
    metrics = {
        "architecture": arch.to_dict(),
        "training": {
            "positive_frames": len(positives),
            "negative_frames": len(negatives),
            "box_mode": mode,
            "history": history,
            "self_training_rounds": self_rounds,
        },
        "evaluation": evaluation,
        "onnx_check": {
            **check.__dict__,
            "passed": check_passed,
            "iou_tolerance": cfg.check_iou_tolerance,
            "score_tolerance": cfg.check_score_tolerance,
        },
        "onnx_seconds_per_image": float(np.median(per_image_seconds))
        if per_image_seconds
        else None,
        "timings": timings,
    }
    write_json(out / "metrics.json", metrics)
    if not check_passed:
        raise RuntimeError(f"detector ONNX does not reproduce torch: {check}")
    vs_truth = evaluation.get("heldout_vs_truth", {})
    return {
        "heldout_map_vs_truth": vs_truth.get("map"),
        "heldout_map_vs_lime": evaluation.get("heldout_vs_lime", {}).get("map"),
        "onnx_check_passed": check_passed,
        "onnx_seconds_per_image": metrics["onnx_seconds_per_image"],
    }


def stage_bundle(run: TrainingRun) -> dict[str, Any]:
    from snowtrap.training.bundle_stage import build_bundle

    return build_bundle(run)


def stage_report(run: TrainingRun) -> dict[str, Any]:
    from snowtrap.training.report import write_report

    path = write_report(run, active_stages(run.config))
    return {"report": str(path)}


StageFn = Callable[[TrainingRun], dict[str, Any]]

STAGES: dict[str, StageFn] = {
    "synthesise": stage_synthesise,
    "gather": stage_gather,
    "classify": stage_classify,
    "explain": stage_explain,
    "detect": stage_detect,
    "bundle": stage_bundle,
    "report": stage_report,
}

# Which config sections each stage reads (its fingerprint covers them and upstream tokens).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "synthesise": ("synthetic",),
    "gather": ("gather",),
    "classify": ("classify", "heldout"),
    "explain": ("explain", "heldout"),
    "detect": ("detect", "heldout"),
    "bundle": ("bundle", "evaluate"),
    "report": ("report",),
}


def active_stages(config: TrainConfig) -> list[str]:
    return [s for s in STAGES if s != "synthesise" or config.synthetic is not None]


def stage_fingerprint(run: TrainingRun, stage: str) -> str:
    """Hash of the stage's config sections and of every earlier stage's completion token."""
    stages = active_stages(run.config)
    dump = run.config.model_dump(mode="json")
    payload: dict[str, Any] = {"stage": stage}
    payload["sections"] = {name: dump.get(name) for name in STAGE_SECTIONS[stage]}
    payload["upstream"] = {}
    for earlier in stages[: stages.index(stage)]:
        record = run.stage_record(earlier)
        payload["upstream"][earlier] = record["token"] if record else None
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_stage(run: TrainingRun, stage: str, force: bool = False) -> StageResult:
    fingerprint = stage_fingerprint(run, stage)
    record = run.stage_record(stage)
    always = stage == "report"
    if record and record.get("fingerprint") == fingerprint and not force and not always:
        return StageResult(stage, True, 0.0, record.get("summary", {}))
    # A stage that starts invalidates itself first: a crash leaves no stale 'done' marker.
    marker = run.stage_dir(stage) / STAGE_FILE
    marker.unlink(missing_ok=True)
    started = time.perf_counter()
    summary = STAGES[stage](run)
    seconds = time.perf_counter() - started
    write_json(
        marker,
        {
            "stage": stage,
            "fingerprint": fingerprint,
            "token": uuid.uuid4().hex,
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": seconds,
            "summary": summary,
        },
    )
    return StageResult(stage, False, seconds, summary)


def run_training(
    config: TrainConfig,
    only: str | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[StageResult]:
    """Run every stage (or `only` one), skipping those already done with the same inputs."""
    run = TrainingRun(config, progress)
    run.root.mkdir(parents=True, exist_ok=True)
    write_json(run.root / "config.json", config.model_dump(mode="json"))
    stages = active_stages(config)
    if only is not None:
        if only not in stages:
            raise ValueError(f"unknown stage {only!r}; stages: {', '.join(stages)}")
        stages = [only]
    results = []
    for stage in stages:
        result = run_stage(run, stage, force=force)
        word = "skipped (done)" if result.skipped else f"done in {result.seconds:.1f} s"
        log(f"[train] {stage:<10} {word}  {json.dumps(result.summary, default=str)[:300]}")
        results.append(result)
    return results


# --- CLI ----------------------------------------------------------------------------------


def _run_cli(args: argparse.Namespace) -> int:
    overrides = {"run_dir": args.run_dir} if args.run_dir else {}
    config = TrainConfig.load(args.config, **overrides)
    started = time.perf_counter()
    try:
        run_training(config, only=args.stage, force=args.force, progress=not args.quiet)
    except StageInputMissing as exc:
        print(f"snowtrap train: {exc}", file=sys.stderr)
        return 2
    print(
        f"[train] finished in {time.perf_counter() - started:.1f} s; run directory "
        f"{config.run_dir}; report {Path(config.run_dir) / 'report.html'}"
    )
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="training config (YAML)")
    parser.add_argument("--stage", choices=list(STAGES), help="run only this stage")
    parser.add_argument("--force", action="store_true", help="re-run stages even when done")
    parser.add_argument("--run-dir", type=Path, default=None, help="override run_dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_cli)
