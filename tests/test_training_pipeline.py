"""The whole `snowtrap train` pipeline on the small synthetic config (one shared run).

Bars are modest (the CI run is small and short) but each can fail: a classifier no better
than chance, LIME boxes off the animals, a detector graph that differs from torch, a bundle
the worker cannot open, or stages that re-run when nothing changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from snowtrap.models.bundle import load_bundle
from snowtrap.training.config import TrainConfig
from snowtrap.training.image_files import read_rgb
from snowtrap.training.pipeline import TrainingRun, run_training

pytestmark = pytest.mark.slow


def read_json(path: Path):
    return json.loads(path.read_text())


def test_all_stages_ran_and_wrote_a_report(training_run) -> None:
    assert training_run.stages_run == [
        "synthesise",
        "gather",
        "classify",
        "explain",
        "detect",
        "bundle",
        "report",
    ]
    report = (training_run.run_dir / "report.html").read_text()
    for heading in ("Classifier", "LIME explanations", "Detector", "Stages and timings"):
        assert heading in report
    assert "data:image/jpeg;base64," in report  # LIME overlays and detections are drawn
    assert "has not run yet" not in report


def test_classifier_separates_leopards_on_held_out_frames(training_run) -> None:
    metrics = read_json(training_run.run_dir / "classify" / "metrics.json")
    assert metrics["heldout"]["frames"] > 0
    assert metrics["heldout"]["roc_auc"] >= 0.85
    assert metrics["export"]["max_abs_diff"]["leopard_probability"] <= 1e-4
    assert 0.0 < metrics["gate_threshold"] < 1.0


def test_lime_boxes_overlap_ground_truth(training_run) -> None:
    metrics = read_json(training_run.run_dir / "explain" / "metrics.json")
    for name in ("train", "heldout"):
        assert metrics[name]["frames_with_truth"] > 0
    pooled = metrics["train"]["single_box_mean_iou"]
    assert pooled >= 0.3, metrics["train"]
    # Coarse to fine ran: frames were located, their crops explained, and boxes came back.
    assert metrics["mean_timings"]["refine_score"] > 0
    frames = read_json(training_run.run_dir / "explain" / "frames.json")
    located = [f for f in frames if f["regions"]]
    assert len(located) >= 0.8 * len(frames)
    for frame in located:
        for box in frame["group_boxes"]:  # every refined box lies inside one of its regions
            assert any(
                box[0] >= r[0] - 1e-9
                and box[1] >= r[1] - 1e-9
                and box[2] <= r[2] + 1e-9
                and box[3] <= r[3] + 1e-9
                for r in frame["regions"]
            )
    coco = read_json(training_run.run_dir / "explain" / "lime_group.json")
    assert coco["annotations"] and coco["categories"][0]["name"] == "snow_leopard"
    assert all(len(a["bbox"]) == 4 and a["area"] > 0 for a in coco["annotations"])


def test_detector_onnx_equals_torch_and_finds_leopards(training_run) -> None:
    metrics = read_json(training_run.run_dir / "detect" / "metrics.json")
    check = metrics["onnx_check"]
    assert check["passed"] and check["count_mismatches"] == 0
    assert check["min_box_iou"] >= 0.99 and check["max_score_diff"] <= 1e-3
    assert metrics["evaluation"]["heldout_vs_truth"]["map"] >= 0.1
    # The exported graph keeps the export proposal budget, not the relabelling one.
    detect = TrainConfig.load(training_run.config_path, run_dir=training_run.run_dir).detect
    architecture = metrics["architecture"]
    assert architecture["rpn_pre_nms_top_n_test"] == detect.export_rpn_pre_nms_top_n
    assert architecture["rpn_post_nms_top_n_test"] == detect.export_rpn_post_nms_top_n
    assert detect.export_rpn_post_nms_top_n < detect.rpn_post_nms_top_n_test


def test_self_training_relabels_and_trains_on(training_run) -> None:
    training = read_json(training_run.run_dir / "detect" / "metrics.json")["training"]
    config = TrainConfig.load(training_run.config_path, run_dir=training_run.run_dir).detect
    (round_one,) = training["self_training_rounds"]
    # Every LIME-boxed frame keeps a label (the detector's or its own), and the leopard
    # frames LIME never explained were offered to the detector too.
    assert round_one["frames"] >= training["positive_frames"]
    assert round_one["unexplained_frames"] > 0
    offered = training["positive_frames"] + round_one["unexplained_frames"]
    assert 0 <= round_one["relabelled_by_detector"] <= offered
    assert [h["epoch"] for h in training["history"]] == [
        *range(1, config.epochs + 1),
        *range(1, config.self_training_epochs + 1),
    ]


def test_bundle_loads_and_runs_like_the_worker_will(trained_bundle, training_run) -> None:
    bundle = load_bundle(trained_bundle)
    assert bundle.has_detector
    manifest = bundle.manifest
    assert manifest.class_names == ["snow_leopard"]
    assert manifest.metrics["classifier"]["heldout_roc_auc"] is not None
    card = (trained_bundle / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card")
    assert "self-training round" in card  # the CI config self-trains; the card says how
    run = TrainingRun(TrainConfig.load(training_run.config_path, run_dir=training_run.run_dir))
    leopard = next(f for f in run.heldout_frames if f.label == 1)
    empty = next(f for f in run.heldout_frames if f.label == 0)
    scores = bundle.classify([read_rgb(leopard.path), read_rgb(empty.path)])
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    detections = bundle.detect([read_rgb(leopard.path)], min_score=0.0)[0]
    assert all(0 <= d.box_xywh_normalised[0] <= 1 for d in detections)


def test_rerun_skips_done_stages_and_one_stage_can_be_rerun(training_run) -> None:
    config = TrainConfig.load(training_run.config_path, run_dir=training_run.run_dir)
    again = run_training(config, progress=False, log=lambda line: None)
    assert [r.name for r in again if not r.skipped] == ["report"]
    bundle_record = read_json(training_run.run_dir / "bundle" / "stage.json")

    only = run_training(config, only="bundle", force=True, progress=False, log=lambda _: None)
    assert [(r.name, r.skipped) for r in only] == [("bundle", False)]
    assert (
        read_json(training_run.run_dir / "bundle" / "stage.json")["token"]
        != (bundle_record["token"])
    )
    # The report depends on the bundle; it re-runs, nothing upstream does.
    after = run_training(config, progress=False, log=lambda line: None)
    assert [r.name for r in after if not r.skipped] == ["report"]
    load_bundle(training_run.bundle_dir)


def test_changed_section_reruns_that_stage_and_downstream(training_run, tmp_path) -> None:
    """Changing `report` settings re-runs only the report (fingerprints, not timestamps)."""
    from snowtrap.training.pipeline import stage_fingerprint

    config = TrainConfig.load(training_run.config_path, run_dir=training_run.run_dir)
    changed = TrainConfig.load(
        training_run.config_path, run_dir=training_run.run_dir, report={"lime_samples": 1}
    )
    run_a, run_b = TrainingRun(config), TrainingRun(changed)
    for stage in ("gather", "classify", "explain", "detect", "bundle"):
        assert stage_fingerprint(run_a, stage) == stage_fingerprint(run_b, stage)
    assert stage_fingerprint(run_a, "report") != stage_fingerprint(run_b, "report")
    detect_changed = TrainConfig.load(
        training_run.config_path, run_dir=training_run.run_dir, detect={"epochs": 99}
    )
    assert stage_fingerprint(TrainingRun(detect_changed), "detect") != stage_fingerprint(
        run_a, "detect"
    )
