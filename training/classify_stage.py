"""The `classify` stage: the leopard / background classifier, its gate and its ONNX export."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from snowtrap.training.classify import LabelledImage
from snowtrap.training.data_stages import training_frames
from snowtrap.training.json_files import write_json
from snowtrap.training.run_directory import TrainingRun

__all__ = ["stage_classify"]


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
    frames = training_frames(run)
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
