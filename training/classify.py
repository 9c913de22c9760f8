"""Classify stage: backbone features -> class-balanced logistic regression -> one ONNX model.

The backbone is frozen, so features are computed once per image (cached by file hash) and the
head is a logistic regression on standardised features, as in the original transfer-learning
recipe. Features are computed with the backbone exported to ONNX: on CPU that is several times
faster than torch, and the final classifier is checked against torch when it is exported.

The head is fitted *on top of the ImageNet prior*: the logit is
`prior_weight * prior_logit + w . standardised(features) + b`, where `prior_logit` is the
pretrained network's own snow-leopard log-odds (ImageNet class 289) and only `w, b` are
learnt, L2-regularised toward zero. So a frame the pretrained network is sure shows a snow
leopard keeps that evidence whatever the (synthetic or few) training frames taught the head,
and `prior_weight: 0` is the plain transfer-learning head.

The gate threshold is the highest one reaching the target leopard recall, chosen on
out-of-fold scores of the training split, so the validation split and held-out frames report
honest precision and recall at it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snowtrap.training.evaluate import (
    binary_metrics_at,
    precision_recall_points,
    roc_auc,
    roc_points,
    threshold_for_recall,
)
from snowtrap.training.image_files import read_rgb

__all__ = [
    "LEOPARD_CATEGORY",
    "ClassifierFit",
    "FeatureCache",
    "LabelledImage",
    "classifier_metrics",
    "compute_features",
    "export_feature_extractor",
    "fit_leopard_head",
    "imagenet_layer",
    "prior_logits",
    "read_coco_camera_traps",
    "score_features",
    "split_train_validation",
]

LEOPARD_CATEGORY = "snow_leopard"


@dataclass(frozen=True)
class LabelledImage:
    """One training or evaluation frame; `boxes` are normalised xyxy leopard boxes if known."""

    image_id: str
    path: Path
    label: int  # 1 = snow leopard in the frame
    boxes: np.ndarray | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_truth(self) -> bool:
        return self.boxes is not None


def read_coco_camera_traps(
    json_path: Path, image_root: Path | None = None, leopard_category: str = LEOPARD_CATEGORY
) -> list[LabelledImage]:
    """Frames of a COCO Camera Traps file with their leopard boxes (normalised xyxy)."""
    document = json.loads(Path(json_path).read_text())
    root = Path(image_root) if image_root is not None else Path(json_path).parent
    categories = {c["id"]: c["name"] for c in document.get("categories", [])}
    leopard_ids = {cid for cid, name in categories.items() if name == leopard_category}
    boxes: dict[Any, list[list[float]]] = {}
    for annotation in document.get("annotations", []):
        if annotation.get("category_id") in leopard_ids and annotation.get("bbox"):
            boxes.setdefault(annotation["image_id"], []).append(annotation["bbox"])
    frames = []
    for image in document["images"]:
        width, height = float(image["width"]), float(image["height"])
        xywh = np.asarray(boxes.get(image["id"], []), dtype=np.float64).reshape(-1, 4)
        xyxy = np.stack(
            [
                xywh[:, 0] / width,
                xywh[:, 1] / height,
                (xywh[:, 0] + xywh[:, 2]) / width,
                (xywh[:, 1] + xywh[:, 3]) / height,
            ],
            axis=1,
        )
        frames.append(
            LabelledImage(
                image_id=str(image["id"]),
                path=root / image["file_name"],
                label=int(xyxy.shape[0] > 0),
                boxes=xyxy,
                source=str(json_path),
            )
        )
    return frames


def split_train_validation(
    labels: np.ndarray, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified index split: (train indices, validation indices), both sorted."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    validation: list[int] = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        rng.shuffle(members)
        count = round(len(members) * validation_fraction)
        validation.extend(members[:count].tolist())
    mask = np.zeros(labels.size, dtype=bool)
    mask[validation] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


# --- features -----------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class FeatureCache:
    """Backbone features keyed by image file sha256, persisted as one .npz per backbone."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.features: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path) as stored:
                self.features = dict(zip(stored["keys"].tolist(), stored["values"], strict=True))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(sorted(self.features))
        values = np.stack([self.features[k] for k in keys]) if keys.size else np.zeros((0, 0))
        np.savez(self.path, keys=keys, values=values)


def export_feature_extractor(backbone: str, weights_path: Path | None, out_path: Path) -> Path:
    """The frozen backbone (pixels 0..255 -> pooled features) as ONNX, checked against torch."""
    import torch

    from snowtrap.models.backbone import build_feature_extractor
    from snowtrap.models.classifier import FEATURES_OUTPUT, PixelFeatures
    from snowtrap.models.export import export_onnx

    features = PixelFeatures(build_feature_extractor(backbone, weights_path)).eval()
    size = features.input_size
    example = torch.rand((2, 3, size, size), generator=torch.Generator().manual_seed(0)) * 255
    export_onnx(
        features,
        example,
        out_path,
        output_names=[FEATURES_OUTPUT],
        tolerances={FEATURES_OUTPUT: 1e-3},
    )
    return out_path


def compute_features(
    frames: Sequence[LabelledImage],
    feature_onnx: Path,
    cache: FeatureCache,
    input_size: int,
    batch_size: int = 32,
    flip: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """(N, D) float32 features of the frames (squashed to the classifier input, as served).

    With `flip`, features of the mirrored frames instead (a cheap augmentation).
    """
    from tqdm import tqdm

    from snowtrap.models.inference import create_session, resize_rgb

    keys = [file_digest(frame.path) + (":flip" if flip else "") for frame in frames]
    missing = [i for i, key in enumerate(keys) if key not in cache.features]
    if missing:
        session = create_session(feature_onnx, ["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        bar = tqdm(
            total=len(missing),
            desc="features" + (" (flipped)" if flip else ""),
            disable=not progress,
        )
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            pixels = []
            for i in chunk:
                rgb = resize_rgb(read_rgb(frames[i].path), input_size, input_size)
                pixels.append(rgb[:, ::-1] if flip else rgb)
            batch = np.ascontiguousarray(np.stack(pixels).transpose(0, 3, 1, 2), dtype=np.float32)
            values = session.run(None, {input_name: batch})[0]
            for i, vector in zip(chunk, values, strict=True):
                cache.features[keys[i]] = np.asarray(vector, dtype=np.float32)
            bar.update(len(chunk))
        bar.close()
        cache.save()
    return np.stack([cache.features[key] for key in keys]).astype(np.float32)


# --- the head -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierFit:
    """A fitted head: logistic regression on standardised features, and how it was chosen."""

    coef: np.ndarray  # (D,)
    intercept: float
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    regularisation_c: float
    out_of_fold_scores: np.ndarray  # P(leopard) of each training row from cross-validation
    prior_weight: float = 0.0  # times the ImageNet snow-leopard log-odds added to the logit

    def save(self, path: Path) -> None:
        np.savez(
            path,
            coef=self.coef,
            intercept=np.array(self.intercept),
            feature_mean=self.feature_mean,
            feature_scale=self.feature_scale,
            regularisation_c=np.array(self.regularisation_c),
            out_of_fold_scores=self.out_of_fold_scores,
            prior_weight=np.array(self.prior_weight),
        )

    @classmethod
    def load(cls, path: Path) -> ClassifierFit:
        with np.load(path) as stored:
            return cls(
                coef=stored["coef"],
                intercept=float(stored["intercept"]),
                feature_mean=stored["feature_mean"],
                feature_scale=stored["feature_scale"],
                regularisation_c=float(stored["regularisation_c"]),
                out_of_fold_scores=stored["out_of_fold_scores"],
                prior_weight=float(stored["prior_weight"]) if "prior_weight" in stored else 0.0,
            )


def imagenet_layer(backbone: str, weights_path: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's pretrained ImageNet layer (weight (1000, D), bias (1000,)) as numpy."""
    from snowtrap.models.backbone import build_feature_extractor

    fc = build_feature_extractor(backbone, weights_path).imagenet_fc
    return fc.weight.detach().numpy().copy(), fc.bias.detach().numpy().copy()


def prior_logits(features: np.ndarray, layer: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The pretrained network's snow-leopard log-odds of each row of pooled features."""
    from snowtrap.models.classifier import imagenet_prior_logit

    return imagenet_prior_logit(features, *layer)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def score_features(
    features: np.ndarray, fit: ClassifierFit, prior: np.ndarray | None = None
) -> np.ndarray:
    """P(leopard) from features (and their prior logits), the same arithmetic as the export."""
    z = ((features - fit.feature_mean) / fit.feature_scale) @ fit.coef + fit.intercept
    if fit.prior_weight:
        if prior is None:
            raise ValueError("this head sits on the ImageNet prior: pass the prior logits")
        z = z + fit.prior_weight * prior
    return _sigmoid(z)


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, c: float, offset: np.ndarray
) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression with a fixed per-row offset in the logit.

    sklearn has no offset term, which the prior needs; the objective is sklearn's
    (C x weighted log-loss + |w|^2 / 2, intercept unpenalised), solved by L-BFGS.
    """
    from scipy.optimize import minimize

    counts = np.bincount(y, minlength=2).astype(np.float64)
    row_weight = (y.size / (2.0 * counts))[y]
    sign = 2.0 * y - 1.0

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:-1], params[-1]
        margin = sign * (x @ w + b + offset)
        value = c * np.sum(row_weight * np.logaddexp(0.0, -margin)) + 0.5 * np.dot(w, w)
        slope = -c * row_weight * sign * _sigmoid(-margin)
        return value, np.append(x.T @ slope + w, slope.sum())

    start = np.zeros(x.shape[1] + 1)
    result = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 5000})
    return result.x[:-1], float(result.x[-1])


def fit_leopard_head(
    features: np.ndarray,
    labels: np.ndarray,
    c_grid: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0),
    folds: int = 5,
    seed: int = 0,
    prior: np.ndarray | None = None,
    prior_weight: float = 0.0,
) -> ClassifierFit:
    """Class-balanced logistic regression on standardised features, C chosen by
    cross-validated ROC-AUC; with `prior_weight`, fitted as a correction on top of
    `prior_weight * prior` (the rows' ImageNet snow-leopard log-odds).

    Leopards are a minority in trap data: class balancing stops the head from buying
    accuracy by calling everything empty.
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels).astype(int)
    offset = np.zeros(labels.size) if not prior_weight else prior_weight * np.asarray(prior)
    scaler = StandardScaler().fit(features)
    x = scaler.transform(features)
    folds = max(2, min(folds, int(np.bincount(labels, minlength=2).min())))
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels))
    best: tuple[float, float, np.ndarray] | None = None
    for c in c_grid:
        oof = np.zeros(labels.size)
        for train, test in splits:
            w, b = _fit_logistic(x[train], labels[train], c, offset[train])
            oof[test] = _sigmoid(x[test] @ w + b + offset[test])
        auc = roc_auc(labels, oof)
        if best is None or auc > best[0] + 1e-9:
            best = (auc, c, oof)
    assert best is not None
    _, chosen_c, oof = best
    w, b = _fit_logistic(x, labels, chosen_c, offset)
    return ClassifierFit(
        coef=w.astype(np.float64),
        intercept=b,
        feature_mean=scaler.mean_.astype(np.float64),
        feature_scale=scaler.scale_.astype(np.float64),
        regularisation_c=float(chosen_c),
        out_of_fold_scores=oof,
        prior_weight=float(prior_weight),
    )


def classifier_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """ROC-AUC, the operating point at `threshold`, and the curves (for the report)."""
    fpr, tpr = roc_points(labels, scores)
    recall, precision = precision_recall_points(labels, scores)
    return {
        "frames": int(np.size(labels)),
        "leopard_frames": int(np.sum(labels)),
        "roc_auc": roc_auc(labels, scores),
        "at_gate": binary_metrics_at(labels, scores, threshold).to_dict(),
        "roc_curve": {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()},
        "pr_curve": {"recall": recall.round(5).tolist(), "precision": precision.round(5).tolist()},
    }


def choose_gate(fit: ClassifierFit, train_labels: np.ndarray, target_recall: float) -> float:
    """Gate threshold for the target leopard recall, from out-of-fold training scores."""
    return threshold_for_recall(train_labels, fit.out_of_fold_scores, target_recall)


def export_leopard_classifier(
    fit: ClassifierFit, backbone: str, weights_path: Path | None, out_path: Path
) -> dict[str, Any]:
    """Backbone + head as ONE ONNX model, checked against torch; returns the export report."""
    from snowtrap.models.classifier import build_leopard_classifier
    from snowtrap.models.export import classifier_model_entry, export_classifier_onnx

    started = time.perf_counter()
    classifier = build_leopard_classifier(
        fit.coef,
        fit.intercept,
        backbone=backbone,
        weights_path=weights_path,
        feature_mean=fit.feature_mean,
        feature_scale=fit.feature_scale,
        prior_weight=fit.prior_weight,
    )
    report = export_classifier_onnx(classifier, out_path)
    entry = classifier_model_entry(classifier, report, out_path.name)
    return {
        "path": str(out_path),
        "max_abs_diff": report.max_abs_diff,
        "tolerances": report.tolerances,
        "sha256": report.sha256,
        "seconds": time.perf_counter() - started,
        "model_entry": entry.model_dump(mode="json"),
    }
