"""Synthetic camera-trap surveys with exact ground truth (`snowtrap synth`).

Deterministic from a seed: scenes per camera (`scenes`), animal bodies (`bodies`), coats fixed
per snow-leopard individual (`coats`), frames with visible masks and tight boxes (`frames`),
and a survey written as trap JPEGs + COCO Camera Traps JSON (`dataset`). It feeds the tests,
the benchmarks, the demo and the training pipeline's synthetic source.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from snowtrap.training.synthetic.bodies import DISTRACTOR_SPECIES, LEOPARD, SPECIES
from snowtrap.training.synthetic.dataset import (
    CATEGORIES,
    SurveyFrame,
    SyntheticDataset,
    encode_trap_jpeg,
    individual_ids,
    plan_survey,
    write_dataset,
)
from snowtrap.training.synthetic.frames import (
    AnimalSpec,
    FrameSpec,
    RenderedAnimal,
    TrapFrame,
    render_trap_frame,
)

__all__ = [
    "CATEGORIES",
    "DISTRACTOR_SPECIES",
    "LEOPARD",
    "SPECIES",
    "AnimalSpec",
    "FrameSpec",
    "RenderedAnimal",
    "SurveyFrame",
    "SyntheticDataset",
    "TrapFrame",
    "configure_cli",
    "encode_trap_jpeg",
    "individual_ids",
    "plan_survey",
    "render_trap_frame",
    "write_dataset",
]


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="folder for CAMERA/*.jpg and annotations.json")
    parser.add_argument("--images", type=int, default=100, help="number of frames (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--individuals", type=int, default=12, help="distinct snow leopards")
    parser.add_argument("--night-fraction", type=float, default=0.35)
    parser.add_argument("--empty-fraction", type=float, default=0.3)
    parser.add_argument("--leopard-fraction", type=float, default=0.55,
                        help="share of non-empty bursts that show snow leopards")  # fmt: skip
    parser.set_defaults(run=_cli_synth)


def _cli_synth(args: argparse.Namespace) -> int:
    if args.images < 1 or args.width < 64 or args.height < 64:
        print("snowtrap synth: need --images >= 1 and a frame of at least 64 x 64", file=sys.stderr)
        return 2
    dataset = write_dataset(
        args.out_dir,
        args.images,
        args.seed,
        progress=True,
        width=args.width,
        height=args.height,
        n_cameras=args.cameras,
        individuals=args.individuals,
        night_fraction=args.night_fraction,
        empty_fraction=args.empty_fraction,
        leopard_fraction=args.leopard_fraction,
    )
    import json

    document = json.loads(dataset.annotations_path.read_text())
    names = {c["id"]: c["name"] for c in document["categories"]}
    counts = Counter(names[a["category_id"]] for a in document["annotations"])
    nights = sum(1 for image in document["images"] if image["night"])
    print(f"wrote {len(document['images'])} frames ({nights} at night) to {dataset.folder}")
    print("annotations: " + ", ".join(f"{name} {count}" for name, count in sorted(counts.items())))
    print(f"COCO Camera Traps file: {dataset.annotations_path}")
    return 0
