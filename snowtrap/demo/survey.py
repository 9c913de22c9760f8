"""The synthetic survey the demo uploads: frames with exact boxes, plus two bad files."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from snowtrap.demo.settings import LEOPARD_SPECIES, DemoSettings


@dataclass
class Survey:
    """The synthetic images on disk, their ground truth, and the two bad files."""

    folder: Path
    upload_paths: list[Path]
    truth: dict[Path, list[list[float]]]
    """Absolute image path -> ground-truth leopard boxes, pixels [x, y, w, h]."""
    sizes: dict[Path, tuple[int, int]]
    bad_files: list[Path]


def make_survey(settings: DemoSettings) -> Survey:
    from snowtrap.training.synthetic import write_dataset

    folder = settings.run_dir / f"images-{settings.seed}"
    shutil.rmtree(folder, ignore_errors=True)
    dataset = write_dataset(
        folder / "cameras",
        settings.images,
        settings.seed,
        width=settings.width,
        height=settings.height,
        leopard_fraction=0.5,
    )
    coco = json.loads(dataset.annotations_path.read_text())
    leopard_ids = {c["id"] for c in coco["categories"] if c["name"] == LEOPARD_SPECIES}
    by_id = {image["id"]: image for image in coco["images"]}
    truth: dict[Path, list[list[float]]] = {}
    sizes: dict[Path, tuple[int, int]] = {}
    for image in coco["images"]:
        path = (dataset.folder / image["file_name"]).absolute()
        truth[path] = []
        sizes[path] = (int(image["width"]), int(image["height"]))
    for annotation in coco["annotations"]:
        if annotation.get("category_id") in leopard_ids and "bbox" in annotation:
            image = by_id[annotation["image_id"]]
            truth[(dataset.folder / image["file_name"]).absolute()].append(annotation["bbox"])
    extras = folder / "extras"
    extras.mkdir(parents=True)
    first = sorted(truth)[0].read_bytes()
    corrupt = extras / "corrupt-card-write.jpg"
    corrupt.write_bytes(first[: len(first) // 3])  # a JPEG cut short, as a bad SD write does
    not_image = extras / "station-notes.txt"
    not_image.write_text("battery 61%, lens cleaned, card swapped\n")
    cameras = sorted(p for p in dataset.folder.iterdir() if p.is_dir())
    return Survey(
        folder=folder,
        upload_paths=[*cameras, extras],
        truth=truth,
        sizes=sizes,
        bad_files=[corrupt.absolute(), not_image.absolute()],
    )
