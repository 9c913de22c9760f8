"""The `detect` stage: the detector trained on the LIME boxes (plus self-training), evaluated
and exported to ONNX."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from snowtrap.training.data_stages import training_frames
from snowtrap.training.explain_stage import classified_leopard_frames
from snowtrap.training.json_files import read_json, write_json
from snowtrap.training.run_directory import TrainingRun

__all__ = ["stage_detect"]


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
    from snowtrap.training.image_files import read_rgb

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
        (f.image_id, f.path, np.zeros((0, 4))) for f in training_frames(run) if f.label == 0
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
        candidates = classified_leopard_frames(run) if cfg.self_training_unexplained else []
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
    check_frames = [read_rgb(f.path) for f in (heldout or training_frames(run))[: cfg.check_images]]
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
