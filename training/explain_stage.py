"""The `explain` stage: LIME boxes on the classifier's leopard frames, scored against truth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from snowtrap.training.classify import LabelledImage
from snowtrap.training.data_stages import training_frames
from snowtrap.training.json_files import read_json, write_json
from snowtrap.training.run_directory import TrainingRun

__all__ = ["classified_leopard_frames", "stage_explain"]


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


def classified_leopard_frames(run: TrainingRun) -> list[LabelledImage]:
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
        for f in training_frames(run)
        if f.label == 1 and (minimum is None or scores[f.image_id] >= minimum)
    ]


def stage_explain(run: TrainingRun) -> dict[str, Any]:
    from snowtrap.training.lime_dataset import LimeJob, explain_dataset, write_coco_annotations

    cfg = run.config.explain
    out = run.stage_dir("explain")
    out.mkdir(parents=True, exist_ok=True)
    classifier = run.stage_dir("classify") / "classifier.onnx"
    minimum, chosen = _explain_min_score(run), classified_leopard_frames(run)
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
