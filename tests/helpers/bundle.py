"""A real model bundle for the worker's tests, built from the pretrained backbone.

- classifier: EfficientNet-Lite0 (ImageNet weights from the local package) + a logistic
  regression head fitted on a few dozen synthetic frames, exported and checked by
  `models.export` like any production classifier;
- detector: a *stand-in* until the training issue ships a trained Faster R-CNN. It is the same
  backbone and head read as a class-activation map: the head's weights applied to the last
  feature map give a 7 x 7 leopard-evidence map whose strong region becomes the one box, and
  whose mean is exactly the classifier's logit (so the box score is the classifier's
  probability). The manifest says so in its notes and provenance.

Building takes about a minute on two cores, so bundles are cached under
`.cache/test-bundles/<hash of this file and the frame generator>` and shared by every test
module and run; a lock keeps parallel sessions from building the same bundle twice.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from helpers.frames import make_frames
from snowtrap.devtools.local_processes import file_lock
from snowtrap.models.classifier import LeopardClassifier, LinearHead, PixelFeatures

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "test-bundles"
STAND_IN_NOTE = (
    "detector is a class-activation-map stand-in derived from the classifier (one box per "
    "image), not a trained detector: the training issue had not landed when this was built"
)
TRAIN_FRAMES = 48
TRAIN_SIZE = (640, 480)
"""The frame size of the tests: the head learns features of frames decoded as the worker does."""
ANALYSIS_SIDE = 224
CAM_GRID = 56
CAM_THRESHOLD = 0.7
"""Share of the map's range a cell must reach to be inside the box."""
"""The 7 x 7 activation map is upsampled to this grid before thresholding (smoother boxes)."""


def _builder_hash() -> str:
    digest = hashlib.sha256()
    for path in (Path(__file__), Path(__file__).with_name("frames.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


BundleKind = Literal["detector", "classifier", "batch1", "mismatched"]


def test_bundle(kind: BundleKind = "detector") -> Path:
    """A cached test bundle, built on first use.

    - `detector`: the classifier plus the stand-in detector;
    - `classifier`: the same classifier alone (a bundle from before the detector exists);
    - `batch1`: the classifier exported for batches of exactly one image, so a batch of
      several fails in ONNX Runtime while each image alone works (real per-image fallback);
    - `mismatched`: the classifier with a manifest promising 200 x 200 inputs to a 224 x 224
      graph: it loads, and every run fails (a real whole-batch model error).
    """
    name = f"{kind}-{_builder_hash()}"
    target = CACHE_DIR / name
    source = test_bundle("detector") if kind in ("classifier", "mismatched") else None
    with file_lock(CACHE_DIR / f".{name}.lock"):
        if not (target / "manifest.json").is_file():
            staging = CACHE_DIR / f".{name}.build-{uuid.uuid4().hex[:8]}"
            try:
                if kind == "detector":
                    build_bundle(staging)
                elif kind == "batch1":
                    build_bundle(staging, batch_of_one=True)
                else:
                    assert source is not None
                    _classifier_only(source, staging, mismatched=kind == "mismatched")
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def _classifier_only(source: Path, directory: Path, *, mismatched: bool) -> None:
    from snowtrap.models.bundle import read_manifest, write_bundle

    manifest = read_manifest(source)
    classifier = manifest.models["classifier"]
    note = "classifier only: no detector"
    if mismatched:
        classifier = classifier.model_copy(update={"input_size": (200, 200)})
        note = "broken on purpose: the manifest's input size does not fit the graph"
    slim = manifest.model_copy(
        update={
            "name": "snowtrap-test-classifier-only",
            "models": {"classifier": classifier},
            "files": {},
            "provenance": manifest.provenance.model_copy(
                update={"notes": [manifest.provenance.notes[0], note]}
            ),
        }
    )
    write_bundle(directory, slim, {classifier.file: source / classifier.file})


test_bundle.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def build_bundle(directory: Path, *, batch_of_one: bool = False) -> Path:
    """Fit the head, export the classifier and the stand-in detector, write the bundle.

    `batch_of_one`: export the classifier with a fixed batch of 1 and no detector.
    """
    from snowtrap.models.bundle import write_bundle
    from snowtrap.models.export import (
        classifier_model_entry,
        export_classifier_onnx,
        export_onnx,
        export_square_detector_onnx,
    )
    from snowtrap.models.manifest import (
        BundleManifest,
        NormalisationSpec,
        Provenance,
        Thresholds,
    )

    torch.set_num_threads(2)
    features_model, head = _fit_head()
    classifier = LeopardClassifier(features_model, head).eval()
    work = directory.parent / f"{directory.name}.onnx"
    work.mkdir(parents=True, exist_ok=True)
    try:
        notes = ["test bundle: head fitted on synthetic frames, not a leopard model"]
        if batch_of_one:
            example = torch.rand((1, 3, 224, 224), generator=torch.Generator().manual_seed(0))
            report = export_onnx(
                classifier,
                example * 255.0,
                work / "classifier.onnx",
                dynamic_batch=False,
                output_names=classifier.output_names,
            )
            notes.append("classifier exported for batches of exactly one image")
        else:
            report = export_classifier_onnx(classifier, work / "classifier.onnx")
        models = {"classifier": classifier_model_entry(classifier, report)}
        files: dict[str, Path | bytes] = {"classifier.onnx": report.path}
        if not batch_of_one:
            detector = CamDetector(features_model, head).eval()
            models["detector"], det_report = export_square_detector_onnx(
                detector,
                work / "detector.onnx",
                input_size=224,
                normalisation=NormalisationSpec.of(classifier.normalisation),
                backbone=classifier.backbone_name,
                box_units="normalised",
                notes=STAND_IN_NOTE,
            )
            files["detector.onnx"] = det_report.path
            notes.append(STAND_IN_NOTE)
        manifest = BundleManifest(
            name="snowtrap-test",
            version=f"0.0.0-test.{_builder_hash()[:8]}",
            class_names=["snow_leopard"],
            models=models,
            thresholds=Thresholds(classifier_gate=0.5, detection_confidence=0.5, crop=0.5),
            metrics={"note": "synthetic test frames only"},
            provenance=Provenance(
                data_sources=["tests/helpers/frames.py synthetic frames"], notes=notes
            ),
        )
        write_bundle(directory, manifest, files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return directory


def fit_standardised_head(
    features: np.ndarray, labels: np.ndarray, *, c: float, max_iter: int
) -> tuple[LinearHead, Any]:
    """StandardScaler + LogisticRegression fitted on backbone features, and the two folded into
    one `LinearHead` (the sklearn pipeline comes back too, to compare against)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    pipeline.fit(features, labels)
    scaler, regression = pipeline[0], pipeline[1]
    head = LinearHead.from_logistic_regression(
        regression.coef_, regression.intercept_, scaler.mean_, scaler.scale_
    )
    return head, pipeline


def _fit_head() -> tuple[PixelFeatures, LinearHead]:
    """Backbone features of synthetic frames + a standardised logistic regression, folded."""
    from snowtrap.models.backbone import build_feature_extractor
    from snowtrap.models.decode import decode_trap_image
    from snowtrap.models.inference import preprocess_for_classifier

    features_model = PixelFeatures(build_feature_extractor("efficientnet_lite0")).eval()
    frames = make_frames(TRAIN_FRAMES, seed=7, leopard_rate=0.5, night_rate=0.3, size=TRAIN_SIZE)
    rgbs = [decode_trap_image(frame.jpeg, max_side=ANALYSIS_SIDE).rgb for frame in frames]
    labels = np.array([int(frame.has_leopard) for frame in frames])
    pixels = preprocess_for_classifier(rgbs, features_model.extractor.normalisation.in_graph(), 224)
    with torch.no_grad():
        features = features_model(torch.from_numpy(pixels)).numpy()
    head, _ = fit_standardised_head(features, labels, c=0.01, max_iter=2000)
    return features_model, head


class CamDetector(nn.Module):
    """RGB 0..255 NCHW (224 x 224) -> one box per image from the class-activation map.

    Outputs `boxes` (N, 1, 4) normalised xyxy, `scores` (N, 1) = the classifier's probability,
    `labels` (N, 1) = 1 (snow_leopard).
    """

    def __init__(self, features_model: PixelFeatures, head: LinearHead) -> None:
        super().__init__()
        self.normaliser = features_model.normaliser
        self.trunk = features_model.extractor.body.net
        weight = head.linear.weight.detach().reshape(1, -1, 1, 1)
        self.register_buffer("weight", weight.clone())
        self.register_buffer("bias", head.linear.bias.detach().clone())
        self.register_buffer("index", torch.arange(CAM_GRID, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feature_map = self.trunk.extract_features(self.normaliser(pixels))
        cam = (feature_map * self.weight).sum(dim=1, keepdim=True)  # (N, 1, 7, 7)
        score = torch.sigmoid(cam.mean(dim=(1, 2, 3)) + self.bias)
        fine = functional.interpolate(
            cam, size=(CAM_GRID, CAM_GRID), mode="bilinear", align_corners=False
        )[:, 0]
        low = fine.amin(dim=(1, 2), keepdim=True)
        high = fine.amax(dim=(1, 2), keepdim=True)
        mask = ((fine - low) / (high - low + 1e-6) >= CAM_THRESHOLD).float()
        cols, rows = mask.amax(dim=1), mask.amax(dim=2)  # (N, G) each
        big = float(CAM_GRID)
        x0 = (cols * self.index + (1 - cols) * big).amin(dim=1)
        x1 = (cols * (self.index + 1)).amax(dim=1)
        y0 = (rows * self.index + (1 - rows) * big).amin(dim=1)
        y1 = (rows * (self.index + 1)).amax(dim=1)
        boxes = torch.stack([x0, y0, x1, y1], dim=1) / big
        labels = torch.ones_like(score, dtype=torch.int64)
        return boxes[:, None, :], score[:, None], labels[:, None]
