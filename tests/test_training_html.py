"""The training HTML pages (run report, contact sheet) escape what they show."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from snowtrap.training.contact_sheet import write_contact_sheet
from snowtrap.training.labelled_frames import LabelledFrame
from snowtrap.training.report import write_report

SCRIPT = "<script>alert(1)</script>"


class _Run:
    """Just enough of a TrainingRun: a classifier stage whose backbone name is hostile."""

    def __init__(self, root: Path) -> None:
        self.heldout_frames: list[Any] = []
        self.root = root
        self.config = SimpleNamespace(heldout=None)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        if stage == "gather":
            raise RuntimeError(SCRIPT)
        return {"seconds": 1.5, "finished_at": "now"} if stage == "classify" else None


def test_report_escapes_values(tmp_path: Path) -> None:
    (tmp_path / "classify").mkdir()
    at_gate = {"recall": 1.0, "precision": 0.5, "false_positive_rate": 0.1}
    metrics = {
        "backbone": SCRIPT,
        "regularisation_c": 1.0,
        "gate_threshold": 0.3,
        "target_recall": 0.9,
        "export": {"max_abs_diff": {"leopard_probability": 1e-6}},
        "heldout": {
            "frames": 3,
            "leopard_frames": 1,
            "roc_auc": 0.9,
            "at_gate": at_gate,
            "roc_curve": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 1.0, 1.0]},
            "pr_curve": {"recall": [1.0, 0.0], "precision": [0.5, 1.0]},
        },
    }
    (tmp_path / "classify" / "metrics.json").write_text(json.dumps(metrics))

    page = write_report(_Run(tmp_path), ["gather", "classify"]).read_text()

    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # backbone and the failed section
    assert "Dataset section failed" in page and "has not run yet" in page
    assert page.count("<svg ") == 2 and "<polyline " in page


def test_contact_sheet_escapes_file_names(tmp_path: Path) -> None:
    name = f"{SCRIPT}.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(tmp_path / "frame.png")
    frame = LabelledFrame(
        image_id="1",
        file_name=name,
        path=tmp_path / "frame.png",
        label=0,
        boxes_xywh=np.zeros((0, 4)),
        boxes_complete=True,
        width=64,
        height=48,
    )
    row = {
        "id": "1",
        "file": name,
        "label": 0,
        "score": 0.9,
        "passes_gate": True,
        "truth": [],
        "boxes": [{"xyxy": [0.1, 0.1, 0.5, 0.5], "score": 0.8}],
        "n_boxes": 1,
        "n_boxes_crop": 1,
        "max_box_score": 0.8,
    }
    summary = {"title": SCRIPT, "lines": [("frames", SCRIPT)]}

    sheet = write_contact_sheet([frame], [row], summary, tmp_path / "labels.json", tmp_path, 2)

    page = Path(sheet["html"]).read_text()
    assert "<script>" not in page and page.count("&lt;script&gt;") >= 4
    assert page.count("<figure ") == 2  # high-scoring negative and negative with a box
    assert "data-image-id='1'" in page
