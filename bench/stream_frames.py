"""The stream benches' frames: a survey from the project's generator, cached on disk.

`training.synthetic` renders leopards the trained bundles were trained to find (the simple
frames of `tests/helpers/frames.py` are not, so a trained detector finds nothing on them and
a bench on them measures no detector or crop cost). Rendering 1280 x 960 frames takes a
fifth of a second each on 2 cores, so a survey is written once under
`.cache/bench-frames/<size, count, rates, seed>/` and read back on later runs.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache" / "bench-frames"
LEOPARD_SPECIES = "snow_leopard"


@dataclass(frozen=True)
class BenchFrame:
    """One frame of the survey: where it is, its bytes, and whether a leopard is in it."""

    path: Path
    jpeg: bytes
    leopards: int


@dataclass(frozen=True)
class FrameSet:
    folder: Path
    frames: list[BenchFrame]
    cached: bool

    @property
    def leopard_frames(self) -> int:
        return sum(1 for frame in self.frames if frame.leopards)

    @property
    def megabytes(self) -> float:
        return sum(len(frame.jpeg) for frame in self.frames) / 1e6


def survey_options(leopard_rate: float, night_rate: float) -> dict[str, float]:
    """`plan_survey` options giving `leopard_rate` of the frames a leopard: half the bursts
    are empty, and a share of the rest show leopards (others show distractors)."""
    empty = 0.5
    return {
        "empty_fraction": empty,
        "leopard_fraction": min(1.0, leopard_rate / (1.0 - empty)),
        "night_fraction": night_rate,
    }


def bench_frames(
    count: int, width: int, height: int, leopard_rate: float, night_rate: float, seed: int
) -> FrameSet:
    """The survey for these inputs, rendered on first use (with a progress bar)."""
    key = f"{width}x{height}-n{count}-l{leopard_rate:g}-night{night_rate:g}-s{seed}"
    folder = CACHE_DIR / key
    annotations = folder / "annotations.json"
    cached = annotations.is_file()
    if not cached:
        from snowtrap.training.synthetic import write_dataset

        staging = CACHE_DIR / f".{key}.{uuid.uuid4().hex[:8]}"
        try:
            write_dataset(
                staging,
                count,
                seed,
                progress=True,
                width=width,
                height=height,
                **survey_options(leopard_rate, night_rate),
            )
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return FrameSet(folder, read_frames(folder), cached)


def read_frames(folder: Path) -> list[BenchFrame]:
    """The frames listed in the survey's COCO file, in its order, with leopard counts."""
    coco = json.loads((folder / "annotations.json").read_text())
    leopard_ids = {c["id"] for c in coco["categories"] if c["name"] == LEOPARD_SPECIES}
    leopards: dict[str, int] = {}
    for annotation in coco["annotations"]:
        if annotation.get("category_id") in leopard_ids and "bbox" in annotation:
            image_id = annotation["image_id"]
            leopards[image_id] = leopards.get(image_id, 0) + 1
    frames = []
    for image in coco["images"]:
        path = folder / image["file_name"]
        frames.append(BenchFrame(path, path.read_bytes(), leopards.get(image["id"], 0)))
    return frames
