"""`snowtrap evaluate`: a bundle scored on a labelled COCO Camera Traps set.

The figures must agree with `training.evaluate` run on the per-image rows the evaluation
writes (so nobody re-derives AUC or false-alarm counts differently), an all-negative real set
must say "undefined" instead of crashing, and every kind of bad labels file must fail with
one `LabelsFileError` naming the file and the entry, before any model runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.bundle import test_bundle
from PIL import Image

from snowtrap.cli import main as snowtrap_main
from snowtrap.training.bundle_evaluation import evaluate_bundle
from snowtrap.training.contact_sheet import SECTION_HEADER, SHEET_COLUMNS, TILE_HEIGHT, TILE_WIDTH
from snowtrap.training.evaluate import average_precision, roc_auc
from snowtrap.training.labelled_frames import LabelsFileError, read_labels

REALDATA = Path(__file__).parents[1] / "data/realdata"
SHEET = 3


@pytest.fixture(scope="module")
def bundle_dir() -> Path:
    return test_bundle("detector")


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic frames with exact leopard boxes; the seed gives both classes."""
    from snowtrap.training.synthetic import write_dataset

    dataset = write_dataset(tmp_path_factory.mktemp("survey"), 12, seed=3, width=480, height=360)
    return dataset.annotations_path


@pytest.fixture(scope="module")
def synthetic_result(
    bundle_dir: Path, survey: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("evaluation")
    return evaluate_bundle(bundle_dir, survey, out_dir=out, progress=False, max_sheet=SHEET)


def _leopard_truth(labels: Path) -> tuple[set[str], int]:
    """Leopard image ids and leopard box count, read straight from the JSON."""
    document = json.loads(labels.read_text())
    leopard = {c["id"] for c in document["categories"] if c["name"] == "snow_leopard"}
    ids, boxes = set(), 0
    for annotation in document["annotations"]:
        if annotation["category_id"] in leopard:
            ids.add(str(annotation["image_id"]))
            boxes += "bbox" in annotation
    return ids, boxes


def _check_consistency(result: dict[str, Any]) -> None:
    """Counts in the summary equal counts over the per-image rows."""
    rows, gate = result["rows"], result["thresholds"]["classifier_gate"]
    image = result["image_level"]
    assert image["images"] == len(rows)
    assert image["negative_frames_passing"] == sum(
        1 for r in rows if not r["label"] and r["score"] >= gate
    )
    assert image["leopard_frames_passing"] == sum(
        1 for r in rows if r["label"] and r["score"] >= gate
    )
    assert all(r["passes_gate"] == (r["score"] >= gate) for r in rows)
    negatives = [r for r in rows if not r["label"]]
    everywhere, served = result["detector"]["all_frames"], result["detector"]["served"]
    assert everywhere["at_crop"]["false_alarm_frames"] == sum(
        1 for r in negatives if r["n_boxes_crop"]
    )
    assert everywhere["at_crop"]["false_alarm_boxes"] == sum(r["n_boxes_crop"] for r in negatives)
    assert everywhere["at_detection_confidence"]["false_alarm_boxes"] == sum(
        r["n_boxes"] for r in negatives
    )
    assert served["at_crop"]["false_alarm_frames"] == sum(
        1 for r in negatives if r["n_boxes_crop"] and r["passes_gate"]
    )
    assert served["at_crop"]["false_alarm_boxes"] <= everywhere["at_crop"]["false_alarm_boxes"]


def _expected_sheet_height(sections: dict[str, list[str]]) -> int:
    return sum(
        SECTION_HEADER + math.ceil(len(ids) / SHEET_COLUMNS) * TILE_HEIGHT
        for ids in sections.values()
    )


def test_synthetic_survey_figures_match_the_rows(
    synthetic_result: dict[str, Any], survey: Path
) -> None:
    result = synthetic_result
    leopard_ids, leopard_boxes = _leopard_truth(survey)
    rows = result["rows"]
    assert {r["id"] for r in rows if r["label"]} == leopard_ids
    assert 0 < len(leopard_ids) < len(rows), "the seed must give both classes"
    labels = np.array([r["label"] for r in rows])
    scores = np.array([r["score"] for r in rows])
    auc = result["image_level"]["roc_auc"]
    assert auc is not None and 0.0 <= auc <= 1.0
    assert auc == pytest.approx(roc_auc(labels, scores), abs=1e-6)
    assert result["image_level"]["roc_auc_note"] is None
    _check_consistency(result)
    everywhere = result["detector"]["all_frames"]
    assert everywhere["leopard_boxes"] == leopard_boxes > 0
    assert everywhere["ap50"] is not None and 0.0 <= everywhere["ap50"] <= 1.0
    assert all(len(r["truth"]) == (r["label"] and len(r["truth"])) for r in rows)
    for row in rows:  # truth boxes are normalised xyxy inside the frame
        for x0, y0, x1, y1 in row["truth"]:
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
    written = json.loads(Path(result["evaluation_json"]).read_text())
    assert written == json.loads(json.dumps(result))


def test_contact_sheet_shows_the_worst_frames(synthetic_result: dict[str, Any]) -> None:
    result = synthetic_result
    rows = result["rows"]
    sections = result["sheet"]["sections"]
    leopards = sorted((r for r in rows if r["label"]), key=lambda r: r["score"])
    negatives = sorted((r for r in rows if not r["label"]), key=lambda r: -r["score"])
    assert sections["misses"] == [r["id"] for r in leopards[:SHEET]]
    assert sections["high_scoring_negatives"] == [r["id"] for r in negatives[:SHEET]]
    boxed = [r for r in rows if not r["label"] and r["n_boxes_crop"]]
    assert len(sections["negatives_with_boxes"]) == min(SHEET, len(boxed))
    with Image.open(result["sheet"]["png"]) as sheet:
        assert sheet.size == (TILE_WIDTH * SHEET_COLUMNS, _expected_sheet_height(sections))
    page = Path(result["sheet"]["html"]).read_text()
    shown = [i for ids in sections.values() for i in ids]
    assert page.count("<figure ") == len(shown)
    for image_id in shown:
        assert f"data-image-id='{image_id}'" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_all_negative_real_frames_say_undefined(bundle_dir: Path, tmp_path: Path) -> None:
    result = evaluate_bundle(
        bundle_dir, REALDATA / "labels.json", out_dir=tmp_path, progress=False, max_sheet=2
    )
    image = result["image_level"]
    assert (image["images"], image["leopard_frames"], image["negative_frames"]) == (24, 0, 24)
    assert image["roc_auc"] is None and "only" in image["roc_auc_note"]
    assert image["recall"] is None
    assert 0.0 <= image["false_alarm_rate"] <= 1.0
    assert image["false_alarm_rate"] == pytest.approx(image["negative_frames_passing"] / 24)
    for path in ("all_frames", "served"):
        assert result["detector"][path]["ap50"] is None
        assert "no leopard boxes" in result["detector"][path]["ap50_note"]
    _check_consistency(result)
    sections = result["sheet"]["sections"]
    assert sections["misses"] == [] and len(sections["high_scoring_negatives"]) == 2
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.height == _expected_sheet_height(sections)


def test_cli_writes_to_the_default_folder(
    bundle_dir: Path, survey: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code = snowtrap_main(["evaluate", str(bundle_dir), str(survey), "--max-sheet", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ROC-AUC" in printed and "AP@0.5" in printed
    written = tmp_path / "runs/evaluate/snowtrap-test"
    result = json.loads((written / "evaluation.json").read_text())
    assert len(result["rows"]) == 12
    assert (written / "contact_sheet.png").is_file() and (written / "contact_sheet.html").is_file()


@pytest.fixture(scope="module")
def strict_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test bundle with three different thresholds, so mixing them up shows."""
    from snowtrap.models.bundle import read_manifest, write_bundle
    from snowtrap.models.manifest import Thresholds

    manifest = read_manifest(bundle_dir)
    thresholds = Thresholds(classifier_gate=0.6, detection_confidence=0.0, crop=0.9)
    target = tmp_path_factory.mktemp("strict") / "bundle"
    write_bundle(
        target,
        manifest.model_copy(update={"thresholds": thresholds, "files": {}}),
        {name: bundle_dir / name for name in manifest.files},
    )
    return target


@pytest.fixture(scope="module")
def frames_survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames like the ones the test bundle's head learnt (other seed): the scores separate.

    The category is spelt "Snow Leopard", as in LILA files, to check the loose match.
    """
    from helpers.frames import make_frames

    folder = tmp_path_factory.mktemp("frames")
    width, height = 640, 480
    images, annotations = [], []
    for index, frame in enumerate(make_frames(16, seed=21, leopard_rate=0.5)):
        (folder / f"{frame.name}.jpg").write_bytes(frame.jpeg)
        images.append(
            {"id": index, "file_name": f"{frame.name}.jpg", "width": width, "height": height}
        )
        if frame.box is None:
            annotations.append({"id": index, "image_id": index, "category_id": 2})
        else:
            x, y, w, h = frame.box
            bbox = [x * width, y * height, w * width, h * height]
            annotations.append({"id": index, "image_id": index, "category_id": 1, "bbox": bbox})
    document = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    return _labels(folder, document, "frames.json")


def test_each_figure_uses_its_own_threshold(
    strict_bundle: Path, frames_survey: Path, tmp_path: Path
) -> None:
    result = evaluate_bundle(strict_bundle, frames_survey, out_dir=tmp_path, progress=False)
    rows = result["rows"]
    assert sum(r["label"] for r in rows) == 8
    labels = np.array([r["label"] for r in rows])
    scores = np.array([r["score"] for r in rows])
    assert result["image_level"]["roc_auc"] == pytest.approx(roc_auc(labels, scores), abs=1e-9)
    assert result["image_level"]["roc_auc"] > 0.5, "frames like its training frames"
    for row in rows:  # detection_confidence 0: the rows hold every box the detector drew
        box_scores = [box["score"] for box in row["boxes"]]
        assert row["n_boxes"] == len(box_scores)
        assert row["n_boxes_crop"] == sum(score >= 0.9 for score in box_scores)
        assert row["passes_gate"] == (row["score"] >= 0.6)
    _check_consistency(result)
    everywhere, served = result["detector"]["all_frames"], result["detector"]["served"]
    negatives = [r for r in rows if not r["label"]]
    assert everywhere["at_detection_confidence"]["false_alarm_frames"] == sum(
        1 for r in negatives if r["boxes"]
    )
    assert served["at_detection_confidence"]["false_alarm_frames"] == sum(
        1 for r in negatives if r["boxes"] and r["passes_gate"]
    )
    for figures, gated in ((everywhere, False), (served, True)):
        kept = [r if r["passes_gate"] or not gated else {**r, "boxes": []} for r in rows]
        expected = average_precision(
            [np.array([b["xyxy"] for b in r["boxes"]]) for r in kept],
            [np.array([b["score"] for b in r["boxes"]]) for r in kept],
            [np.array(r["truth"]) for r in kept],
        )
        assert figures["ap50"] == pytest.approx(expected, abs=0.02)  # rows round boxes to 1e-4


def test_classifier_only_bundle_has_no_detector_figures(survey: Path, tmp_path: Path) -> None:
    result = evaluate_bundle(
        test_bundle("classifier"), survey, out_dir=tmp_path, progress=False, max_sheet=1
    )
    assert result["detector"] is None and result["bundle"]["has_detector"] is False
    assert all(r["n_boxes"] == 0 and r["max_box_score"] is None for r in result["rows"])
    assert result["sheet"]["sections"]["negatives_with_boxes"] == []
    assert result["image_level"]["roc_auc"] is not None


# --- bad input --------------------------------------------------------------------------------


def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (120, 110, 100)).save(path, format="JPEG")


def _labels(tmp_path: Path, document: Any, name: str = "labels.json") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


GOOD_IMAGE = {"id": 1, "file_name": "images/ok.jpg", "width": 64, "height": 48}
CATEGORIES = [{"id": 1, "name": "Snow Leopard"}, {"id": 2, "name": "empty"}]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (None, "labels.json: file not found"),
        ("{not json", "labels.json: not JSON"),
        ([1, 2], "labels.json: not a COCO Camera Traps file"),
        ({"annotations": []}, "labels.json: not a COCO Camera Traps file (no 'images' list)"),
        (
            {"images": [GOOD_IMAGE, {"file_name": "images/a.jpg"}]},
            "labels.json: images[1]: no 'id'",
        ),
        ({"images": [{"id": 7}]}, "labels.json: images[0] (id 7): no 'file_name'"),
        (
            {"images": [GOOD_IMAGE, {"id": 7, "file_name": "images/x.jpg"}]},
            "labels.json: image 7 (images/x.jpg): file not found",
        ),
        (
            {
                "images": [GOOD_IMAGE],
                "categories": CATEGORIES,
                "annotations": [{"id": 1, "image_id": 99, "category_id": 1}],
            },
            "labels.json: annotations[0]: image_id 99 is not among the images",
        ),
        (
            {
                "images": [GOOD_IMAGE],
                "categories": CATEGORIES,
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, -3]}],
            },
            "labels.json: annotations[0] (image 1): bad bbox",
        ),
    ],
    ids=[
        "missing",
        "not-json",
        "not-a-dict",
        "no-images",
        "no-id",
        "no-file-name",
        "image-missing",
        "unknown-image-id",
        "bad-bbox",
    ],
)
def test_bad_labels_fail_before_any_model_runs(
    tmp_path: Path, document: Any, expected: str
) -> None:
    _jpeg(tmp_path / "images/ok.jpg")
    labels = tmp_path / "labels.json" if document is None else _labels(tmp_path, document)
    # no bundle at all: a labels error that waited for the models would be a BundleError
    with pytest.raises(LabelsFileError) as raised:
        evaluate_bundle(tmp_path / "no-bundle", labels, out_dir=tmp_path / "out", progress=False)
    assert str(raised.value).startswith(str(tmp_path / expected.split(":")[0]))
    assert expected.split(": ", 1)[1] in str(raised.value)
    assert raised.value.path == labels
    assert not (tmp_path / "out").exists()


def test_many_missing_images_are_listed_up_to_five(tmp_path: Path) -> None:
    images = [{"id": i, "file_name": f"cam/{i}.jpg"} for i in range(7)]
    labels = _labels(tmp_path, {"images": images})
    with pytest.raises(LabelsFileError) as raised:
        evaluate_bundle(tmp_path / "no-bundle", labels, progress=False)
    message = str(raised.value)
    assert "7 image files not found" in message and "and 2 more" in message
    assert "image 4 (cam/4.jpg)" in message and "image 5 (cam/5.jpg)" not in message


def test_undecodable_image_names_the_entry(bundle_dir: Path, tmp_path: Path) -> None:
    _jpeg(tmp_path / "images/ok.jpg")
    (tmp_path / "images/notes.jpg").write_text("field notes, not a photo")
    labels = _labels(
        tmp_path, {"images": [GOOD_IMAGE, {"id": "cam-3", "file_name": "images/notes.jpg"}]}
    )
    with pytest.raises(LabelsFileError) as raised:
        evaluate_bundle(bundle_dir, labels, out_dir=tmp_path / "out", progress=False)
    assert str(raised.value).startswith(f"{labels}: image cam-3 (images/notes.jpg): cannot decode")


def test_cli_reports_one_error_line_and_exits_2(tmp_path: Path, capsys) -> None:
    labels = _labels(tmp_path, {"images": [{"id": 7, "file_name": "images/x.jpg"}]})
    code = snowtrap_main(["evaluate", str(tmp_path / "no-bundle"), str(labels)])
    assert code == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: {labels}: image 7 (images/x.jpg): file not found ({tmp_path}/images/x.jpg)\n"
    )
    missing_bundle = tmp_path / "no-bundle"
    assert snowtrap_main(["evaluate", str(missing_bundle), str(REALDATA / "labels.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {missing_bundle}/manifest.json") and "Traceback" not in err


def test_category_names_match_loosely_and_boxes_normalise(tmp_path: Path) -> None:
    labels = _labels(
        tmp_path,
        {
            "images": [GOOD_IMAGE, {"id": 2, "file_name": "images/b.jpg"}],
            "categories": CATEGORIES,
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [16, 12, 32, 24]},
                {"id": 2, "image_id": 2, "category_id": 2},
            ],
        },
    )
    first, second = read_labels(labels)
    assert (first.label, second.label) == (1, 0)
    assert first.path == tmp_path / "images/ok.jpg"
    np.testing.assert_allclose(first.truth_xyxy(640, 480), [[0.25, 0.25, 0.75, 0.75]])
    assert second.truth_xyxy(64, 48).shape == (0, 4)
