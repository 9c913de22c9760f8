"""A classifier bundle from the real pretrained backbone: export, write, verify, reload, score.

Tolerance: ONNX Runtime and torch must agree on leopard probabilities within 1e-4 (absolute),
both in the exporter's own check and through the full bundle path (decode-free RGB frames ->
preprocess -> ORT vs the same tensor through torch).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.bundle import fit_standardised_head

from snowtrap.cli import main as snowtrap_main
from snowtrap.models.backbone import build_feature_extractor
from snowtrap.models.bundle import BundleError, load_bundle, read_manifest, write_bundle
from snowtrap.models.classifier import LeopardClassifier, PixelFeatures
from snowtrap.models.export import ExportReport, classifier_model_entry, export_classifier_onnx
from snowtrap.models.inference import preprocess_for_classifier
from snowtrap.models.manifest import BundleManifest, Provenance, Thresholds

PROBABILITY_TOLERANCE = 1e-4


def synthetic_frames(count: int, spotted: bool, seed: int) -> list[np.ndarray]:
    """Grey rocky noise, optionally with dark rosette-like blobs: enough for a toy head."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        height, width = rng.integers(180, 260), rng.integers(240, 360)
        frame = rng.normal(150, 25, (height, width, 3)).clip(0, 255)
        if spotted:
            yy, xx = np.mgrid[0:height, 0:width]
            for _ in range(40):
                cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(4, 9)
                frame[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] *= 0.3
        frames.append(frame.astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def classifier() -> LeopardClassifier:
    """Backbone features + a logistic regression fitted on 8 synthetic frames."""
    torch.set_num_threads(2)
    features_model = PixelFeatures(build_feature_extractor("efficientnet_lite0"))
    frames = synthetic_frames(4, True, seed=1) + synthetic_frames(4, False, seed=2)
    labels = np.array([1] * 4 + [0] * 4)
    pixels = preprocess_for_classifier(
        frames, features_model.extractor.normalisation.in_graph(True), 224
    )
    with torch.no_grad():
        features = features_model(torch.from_numpy(pixels)).numpy()
    head, pipeline = fit_standardised_head(features, labels, c=0.1, max_iter=500)
    model = LeopardClassifier(features_model, head, emit_features=True).eval()
    with torch.no_grad():
        folded = model(torch.from_numpy(pixels))[0].numpy()
    np.testing.assert_allclose(folded, pipeline.predict_proba(features)[:, 1], atol=1e-5)
    return model


@pytest.fixture(scope="module")
def exported(
    classifier: LeopardClassifier, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ExportReport]:
    work = tmp_path_factory.mktemp("export")
    report = export_classifier_onnx(classifier, work / "classifier.onnx")
    manifest = BundleManifest(
        name="snowtrap-test",
        version="0.0.1-test",
        class_names=["snow_leopard"],
        models={"classifier": classifier_model_entry(classifier, report)},
        thresholds=Thresholds(classifier_gate=0.2, detection_confidence=0.3, crop=0.5),
        metrics={"note": "synthetic head, not a leopard model"},
        provenance=Provenance(data_sources=["synthetic test frames"], notes=["test bundle"]),
    )
    bundle_dir = work / "bundle"
    write_bundle(bundle_dir, manifest, {"classifier.onnx": report.path})
    return bundle_dir, report


def test_export_matches_torch(exported: tuple[Path, ExportReport]) -> None:
    _, report = exported
    assert report.max_abs_diff["leopard_probability"] <= PROBABILITY_TOLERANCE
    assert report.max_abs_diff["features"] <= 1e-3
    assert report.checked_batch_sizes == (2, 3)  # dynamic batch really exercised
    assert report.inputs[0].shape == ["batch", 3, 224, 224]


def test_reloaded_bundle_scores_like_torch(
    exported: tuple[Path, ExportReport], classifier: LeopardClassifier
) -> None:
    bundle_dir, _ = exported
    bundle = load_bundle(bundle_dir, providers=["CPUExecutionProvider"], intra_op_threads=2)
    entry = bundle.manifest.models["classifier"]
    assert entry.normalisation.mean == (127.0, 127.0, 127.0)
    assert entry.normalisation.std == (128.0, 128.0, 128.0)
    assert entry.normalisation.applied_in_graph and entry.resize == "squash"
    frames = synthetic_frames(3, True, seed=5) + synthetic_frames(3, False, seed=6)
    probabilities, features = bundle.classify_with_features(frames, batch_size=4)
    assert probabilities.shape == (6,) and features.shape == (6, 1280)
    pixels = preprocess_for_classifier(frames, entry.normalisation.to_normalisation(), 224)
    with torch.no_grad():
        expected, _ = classifier(torch.from_numpy(pixels))
    assert float(np.abs(probabilities - expected.numpy()).max()) <= PROBABILITY_TOLERANCE
    np.testing.assert_allclose(bundle.classify(frames), probabilities, atol=1e-6)
    assert bundle.classify([]).shape == (0,)
    with pytest.raises(BundleError, match="no detector"):
        bundle.detect(frames)


def test_manifest_records_hashes_and_provenance(exported: tuple[Path, ExportReport]) -> None:
    bundle_dir, report = exported
    manifest = read_manifest(bundle_dir)
    assert manifest.format_version == 1
    assert manifest.files["classifier.onnx"].sha256 == report.sha256
    assert manifest.models["classifier"].sha256 == report.sha256
    assert manifest.created_at.tzinfo is not None
    assert [s.name for s in manifest.models["classifier"].outputs] == [
        "leopard_probability",
        "features",
    ]


def test_tampered_file_is_named(exported: tuple[Path, ExportReport], tmp_path: Path) -> None:
    copy = shutil.copytree(exported[0], tmp_path / "tampered")
    model_file = copy / "classifier.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_file.write_bytes(bytes(data))
    with pytest.raises(BundleError) as caught:
        load_bundle(copy)
    assert caught.value.path == model_file
    assert "classifier.onnx" in str(caught.value) and "sha256" in str(caught.value)


def test_missing_file_and_wrong_format_version(
    exported: tuple[Path, ExportReport], tmp_path: Path
) -> None:
    copy = shutil.copytree(exported[0], tmp_path / "bad")
    manifest_path = copy / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    raw["format_version"] = 2
    manifest_path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="format_version 2"):
        load_bundle(copy)
    raw["format_version"] = 1
    manifest_path.write_text(json.dumps(raw))
    (copy / "classifier.onnx").unlink()
    with pytest.raises(BundleError, match="missing") as caught:
        load_bundle(copy)
    assert caught.value.path.name == "classifier.onnx"
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_write_bundle_refuses_to_clobber(exported: tuple[Path, ExportReport]) -> None:
    bundle_dir, report = exported
    manifest = read_manifest(bundle_dir)
    with pytest.raises(FileExistsError):
        write_bundle(bundle_dir, manifest, {"classifier.onnx": report.path})
    with pytest.raises(ValueError, match="bad bundle file name"):
        write_bundle(bundle_dir.parent / "x", manifest, {"../escape.onnx": b"x"})
    assert not (bundle_dir.parent / "x").exists()


def test_cli_verify_and_show(
    exported: tuple[Path, ExportReport], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle_dir, _ = exported
    assert snowtrap_main(["bundle", "verify", str(bundle_dir), "--threads", "2"]) == 0
    assert "OK" in capsys.readouterr().out
    assert snowtrap_main(["bundle", "show", str(bundle_dir)]) == 0
    shown = capsys.readouterr().out
    assert "snowtrap-test" in shown and "mean [127.0, 127.0, 127.0]" in shown
    copy = shutil.copytree(bundle_dir, tmp_path / "tampered")
    (copy / "classifier.onnx").write_bytes(b"not onnx")
    assert snowtrap_main(["bundle", "verify", str(copy)]) == 1
    assert "classifier.onnx" in capsys.readouterr().err
