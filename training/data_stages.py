"""The stages that make the training frames: `synthesise` (optional) and `gather`.

`training_frames(run)` is what the later stages train on: the gathered images with their
labels and, where a curated source gave them, their boxes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from snowtrap.training.classify import LabelledImage
from snowtrap.training.json_files import read_json, write_json
from snowtrap.training.run_directory import TrainingRun

__all__ = [
    "append_coco_frames",
    "read_gathered_frames",
    "stage_gather",
    "stage_synthesise",
    "training_frames",
]


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


def training_frames(run: TrainingRun) -> list[LabelledImage]:
    run.require("gather")
    return read_gathered_frames(run.stage_dir("gather"), run.config.gather)
