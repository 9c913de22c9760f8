"""LIME over a dataset: images explained in worker processes (one ONNX Runtime session each),
and the LIME boxes written as a COCO-style annotation file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from snowtrap.training.image_files import read_rgb
from snowtrap.training.lime import LimeExplanation, LimeSettings, explain_image, onnx_score_fn

__all__ = ["LimeJob", "explain_dataset", "write_coco_annotations"]


@dataclass(frozen=True)
class LimeJob:
    image_id: int
    path: str


_WORKER: dict[str, Any] = {}


def _init_worker(onnx_path: str, threads: int, settings: LimeSettings, work_size: int) -> None:
    from snowtrap.models.inference import create_session

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    session = create_session(Path(onnx_path), ["CPUExecutionProvider"], threads)
    _WORKER.update(score=onnx_score_fn(session), settings=settings, work_size=work_size)


def _explain_job(job: LimeJob) -> dict[str, Any]:
    rgb = read_rgb(Path(job.path))
    explanation = explain_image(rgb, _WORKER["score"], _WORKER["settings"], _WORKER["work_size"])
    return _explanation_record(job, rgb.shape[1], rgb.shape[0], explanation)


def _explanation_record(
    job: LimeJob, width: int, height: int, explanation: LimeExplanation
) -> dict[str, Any]:
    boxes = explanation.boxes
    return {
        "image_id": job.image_id,
        "path": job.path,
        "width": width,
        "height": height,
        "score": explanation.score,
        "seconds": explanation.seconds,
        "timings": explanation.timings,
        "segments": explanation.segments,
        "importances": explanation.importances,
        "selected": boxes.selected,
        "single_box": boxes.single_box,
        "group_boxes": boxes.group_boxes,
        "group_shares": boxes.group_shares,
        "regions": explanation.regions,
    }


def explain_dataset(
    jobs: Sequence[LimeJob],
    classifier_onnx: Path,
    settings: LimeSettings,
    workers: int = 2,
    threads_per_worker: int | None = None,
    work_size: int = 224,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Explain every image in `jobs` with `workers` processes, each with its own ORT session.

    Returns one record per job, in job order (segments and importances included, for the
    report); `write_coco_annotations` turns them into the on-disk annotation file.
    """
    from tqdm import tqdm

    from snowtrap.models.inference import available_cpus

    threads = threads_per_worker or max(1, available_cpus() // max(workers, 1))
    init_args = (str(classifier_onnx), threads, settings, work_size)
    if workers <= 1:
        _init_worker(*init_args)
        iterator = map(_explain_job, jobs)
        return list(tqdm(iterator, total=len(jobs), desc="LIME", disable=not progress))
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # torch/ORT thread pools do not fork well
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=init_args
    ) as pool:
        iterator = pool.map(_explain_job, jobs, chunksize=1)
        return list(tqdm(iterator, total=len(jobs), desc="LIME", disable=not progress))


def write_coco_annotations(
    records: Sequence[dict[str, Any]],
    path: Path,
    mode: Literal["single", "group"],
    category_name: str = "snow_leopard",
    file_names: dict[int, str] | None = None,
) -> dict[str, Any]:
    """COCO-style JSON of the LIME boxes (pixel xywh), one category; returns the document."""
    images, annotations = [], []
    for record in records:
        width, height = record["width"], record["height"]
        images.append(
            {
                "id": record["image_id"],
                "file_name": (file_names or {}).get(record["image_id"], record["path"]),
                "width": width,
                "height": height,
            }
        )
        if mode == "single":
            boxes = [] if record["single_box"] is None else [record["single_box"]]
            shares = [1.0] * len(boxes)
        else:
            boxes, shares = list(record["group_boxes"]), list(record["group_shares"])
        for box, share in zip(boxes, shares, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            bbox = [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record["image_id"],
                    "category_id": 1,
                    "bbox": [round(v, 2) for v in bbox],
                    "area": round(bbox[2] * bbox[3], 2),
                    "iscrowd": 0,
                    "score": round(float(record["score"]), 6),
                    "importance_share": round(float(share), 6),
                }
            )
    document = {
        "info": {"description": f"LIME boxes ({mode} mode)"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": category_name}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))
    return document
