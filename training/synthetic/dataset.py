"""A synthetic camera-trap survey on disk: JPEGs with trap EXIF + a COCO Camera Traps file.

`plan_survey` decides, from one seed, which frames exist (cameras, 1-3 frame bursts, capture
times, day or night, who is in each frame); `write_dataset` renders and writes them. Capture
times agree with day/night (night frames are taken between 19:00 and 06:00). About a third
of the cameras write a GPS position into EXIF, as some trap models do, so the pipeline's
metadata stripping has something to strip.

The COCO Camera Traps file follows the LILA conventions: `images` with `location` (camera),
`datetime`, `seq_id`, `seq_num_frames`, `frame_num`; an `empty` category (id 0) annotates
frames with no animal; snow-leopard annotations carry `individual_id`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from snowtrap.training.synthetic.bodies import DISTRACTOR_SPECIES, LEOPARD, SPECIES, SPOTTED_CAT
from snowtrap.training.synthetic.frames import AnimalSpec, FrameSpec, TrapFrame, render_trap_frame
from snowtrap.training.synthetic.noise import derive_seed, rng_for

__all__ = [
    "CATEGORIES",
    "SurveyFrame",
    "SyntheticDataset",
    "background_photos",
    "encode_trap_jpeg",
    "individual_ids",
    "plan_survey",
    "write_dataset",
]

CATEGORIES: list[dict[str, Any]] = [{"id": 0, "name": "empty"}] + [
    {"id": index + 1, "name": name} for index, name in enumerate(SPECIES)
]
_CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
DATETIME_ORIGINAL, MAKE, MODEL = 0x9003, 0x010F, 0x0110


def individual_ids(count: int, prefix: str = "SL") -> list[str]:
    """Ids of the survey's leopards: SL-001, SL-002, ... (the id fixes the coat)."""
    return [f"{prefix}-{i:03d}" for i in range(1, count + 1)]


@dataclass(frozen=True)
class SurveyFrame:
    """One planned frame: what to render and where it goes."""

    file_name: str  # relative to the dataset folder: CAMERA/CAMERA_NNNNN.jpg
    spec: FrameSpec
    captured_at: datetime
    sequence_id: str
    sequence_frames: int
    gps: tuple[float, float] | None


@dataclass(frozen=True)
class SyntheticDataset:
    folder: Path
    annotations_path: Path
    frames: list[SurveyFrame]

    @property
    def image_paths(self) -> list[Path]:
        return [self.folder / frame.file_name for frame in self.frames]


def _animals(rng: np.random.Generator, individuals: list[str], options: dict) -> list[AnimalSpec]:
    """Who is in one burst: empty, leopards (0-3, distinct individuals) and/or distractors."""
    if rng.random() < options["empty_fraction"]:
        return []
    animals: list[AnimalSpec] = []
    if rng.random() < options["leopard_fraction"]:
        count = 1 + int(rng.random() < options["pair_fraction"])
        count += int(count == 2 and rng.random() < 0.15)
        chosen = rng.choice(len(individuals), size=min(count, len(individuals)), replace=False)
        animals += [AnimalSpec(LEOPARD, individuals[int(i)]) for i in chosen]
        if rng.random() < 0.15 and len(animals) < 3:
            animals.append(_distractor(rng, options["spotted_cat_share"]))
    else:
        share = options["spotted_cat_share"]
        animals += [_distractor(rng, share) for _ in range(1 + int(rng.random() < 0.3))]
    return animals


def _distractor(rng: np.random.Generator, spotted_cat_share: float) -> AnimalSpec:
    species = DISTRACTOR_SPECIES[int(rng.integers(len(DISTRACTOR_SPECIES)))]
    seed = int(rng.integers(1 << 30))
    if spotted_cat_share and rng_for("spotted-cat", seed).random() < spotted_cat_share:
        species = SPOTTED_CAT
    return AnimalSpec(species, None, seed)


def background_photos(source: Path | str) -> list[str]:
    """Real photographs to render scenes from: the images of a COCO Camera Traps JSON (paths
    relative to its folder) or the JPEGs of a folder, sorted so a seed always picks the same."""
    source = Path(source)
    if source.is_dir():
        photos = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg"})
    else:
        try:
            document = json.loads(source.read_text())
            photos = sorted(str(source.parent / image["file_name"]) for image in document["images"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{source}: not a COCO Camera Traps file of backgrounds ({exc})"
            ) from exc
    missing = [p for p in photos if not Path(p).is_file()]
    if not photos or missing:
        raise ValueError(f"{source}: no background photos, or missing files: {missing[:3]}")
    return photos


def plan_survey(
    n_images: int,
    seed: int,
    *,
    width: int = 640,
    height: int = 480,
    n_cameras: int = 6,
    individuals: list[str] | int = 12,
    empty_fraction: float = 0.3,
    leopard_fraction: float = 0.55,
    pair_fraction: float = 0.25,
    night_fraction: float = 0.35,
    occlusion_fraction: float = 0.2,
    gps_fraction: float = 0.34,
    max_burst: int = 3,
    start: datetime = datetime(2026, 1, 10, 0, 0, 0),
    backgrounds: Path | str | None = None,
    background_share: float = 1.0,
    spotted_cat_share: float = 0.0,
) -> list[SurveyFrame]:
    """The frames of a survey, decided from `seed` alone (no pixels yet).

    `backgrounds` (a COCO Camera Traps JSON or a folder of real photographs): every burst is
    rendered on a crop of one of them instead of a generated terrain (`background_share` of
    the bursts; the rest keep the generated terrain). `spotted_cat_share` of the distractors
    are golden spotted cats: spots alone must not make a snow leopard.
    """
    photos = background_photos(backgrounds) if backgrounds is not None else []
    rng = rng_for("survey", seed)
    ids = individual_ids(individuals) if isinstance(individuals, int) else list(individuals)
    cameras = [f"C{derive_seed('camera', seed, i) % 900 + 100:03d}" for i in range(n_cameras)]
    gps_cameras = {c for c in cameras if rng_for("gps", c).random() < gps_fraction}
    options = {
        "empty_fraction": empty_fraction,
        "leopard_fraction": leopard_fraction,
        "pair_fraction": pair_fraction,
        "spotted_cat_share": spotted_cat_share,
    }
    clock = {camera: start for camera in cameras}
    counters = {camera: 0 for camera in cameras}
    frames: list[SurveyFrame] = []
    burst_index = 0
    while len(frames) < n_images:
        camera = cameras[int(rng.integers(len(cameras)))]
        night = bool(rng.random() < night_fraction)
        day = clock[camera] + timedelta(days=int(rng.integers(0, 3)))
        hour = int(rng.integers(19, 30)) % 24 if night else int(rng.integers(7, 18))
        when = datetime(day.year, day.month, day.day, hour) + timedelta(
            minutes=int(rng.integers(60)), seconds=int(rng.integers(60))
        )
        if night and hour < 6:
            when += timedelta(days=1)
        when = max(when, clock[camera] + timedelta(minutes=1))
        night = when.hour >= 19 or when.hour < 6
        burst = min(int(rng.integers(1, max_burst + 1)), n_images - len(frames))
        animals = tuple(_animals(rng, ids, options))
        occlusion = bool(animals) and rng.random() < occlusion_fraction
        sequence_seed = derive_seed("sequence", seed, burst_index)
        sequence_id = f"{camera}-s{burst_index:05d}"
        pick = rng_for("background", sequence_seed)
        background = (
            photos[int(pick.integers(len(photos)))]
            if photos and pick.random() < background_share
            else None
        )
        for frame_num in range(burst):
            counters[camera] += 1
            spec = FrameSpec(
                camera_id=camera,
                sequence_seed=sequence_seed,
                frame_num=frame_num,
                night=night,
                width=width,
                height=height,
                animals=animals,
                occlusion=occlusion,
                background=background,
            )
            position = _camera_position(camera) if camera in gps_cameras else None
            frames.append(
                SurveyFrame(
                    file_name=f"{camera}/{camera}_{counters[camera]:05d}.jpg",
                    spec=spec,
                    captured_at=when + timedelta(seconds=frame_num),
                    sequence_id=sequence_id,
                    sequence_frames=burst,
                    gps=position,
                )
            )
        clock[camera] = when + timedelta(seconds=burst)
        burst_index += 1
    return frames


def _camera_position(camera: str) -> tuple[float, float]:
    """Somewhere in the Himalaya (latitude, longitude), fixed per camera."""
    rng = rng_for("position", camera)
    return float(rng.uniform(27.5, 36.0)), float(rng.uniform(74.0, 92.0))


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round(((value - degrees) * 60 - minutes) * 60, 2)
    return float(degrees), float(minutes), float(seconds)


def encode_trap_jpeg(
    rgb: np.ndarray,
    captured_at: datetime,
    gps: tuple[float, float] | None = None,
    quality: int = 88,
    camera_model: str = "SnowTrap Synthetic TC-1",
) -> bytes:
    """JPEG bytes with the EXIF a trap camera writes: make/model, capture time, maybe GPS."""
    exif = Image.Exif()
    exif[MAKE] = "snowtrap"
    exif[MODEL] = camera_model
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = captured_at.strftime("%Y:%m:%d %H:%M:%S")
    if gps is not None:
        latitude, longitude = gps
        block = exif.get_ifd(GPS_IFD)
        block[1], block[2] = ("N" if latitude >= 0 else "S"), _dms(latitude)
        block[3], block[4] = ("E" if longitude >= 0 else "W"), _dms(longitude)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality, exif=exif.tobytes())
    return out.getvalue()


def _coco_entries(
    frame: SurveyFrame, image_id: str, rendered: TrapFrame
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec = frame.spec
    image = {
        "id": image_id,
        "file_name": frame.file_name,
        "width": spec.width,
        "height": spec.height,
        "location": spec.camera_id,
        "datetime": frame.captured_at.strftime("%Y-%m-%d %H:%M:%S"),
        "seq_id": frame.sequence_id,
        "seq_num_frames": frame.sequence_frames,
        "frame_num": spec.frame_num,
        "night": spec.night,
        "has_gps": frame.gps is not None,
    }
    if spec.background is not None:
        image["background"] = Path(spec.background).name
    annotations = []
    for offset, animal in enumerate(rendered.animals):
        entry: dict[str, Any] = {
            "id": f"{image_id}-a{offset}",
            "image_id": image_id,
            "category_id": _CATEGORY_ID[animal.species],
            "bbox": [float(v) for v in animal.box],
            "visible_fraction": round(animal.visible_fraction, 3),
        }
        if animal.individual_id is not None:
            entry["individual_id"] = animal.individual_id
            entry["flipped"] = animal.flipped
        annotations.append(entry)
    if not annotations:
        annotations.append({"id": f"{image_id}-a0", "image_id": image_id, "category_id": 0})
    return image, annotations


def write_dataset(
    out_dir: Path | str,
    n_images: int,
    seed: int,
    *,
    quality: int = 88,
    progress: bool = False,
    **plan_options: Any,
) -> SyntheticDataset:
    """Render and write a survey: `out_dir/CAMERA/*.jpg` and `out_dir/annotations.json`.

    `plan_options` are `plan_survey`'s keywords (size, cameras, individuals, shares).
    """
    from tqdm import tqdm

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    frames = plan_survey(n_images, seed, **plan_options)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for frame in tqdm(frames, desc="synthesising frames", unit="img", disable=not progress):
        rendered = render_trap_frame(frame.spec)
        path = folder / frame.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_trap_jpeg(rendered.rgb, frame.captured_at, frame.gps, quality))
        image_id = frame.file_name.rsplit(".", 1)[0]
        image, entries = _coco_entries(frame, image_id, rendered)
        images.append(image)
        annotations.extend(entries)
    document = {
        "info": {
            "version": "1.0",
            "description": f"snowtrap synthetic camera-trap survey (seed {seed})",
            "contributor": "training.synthetic",
            "generator_options": {"n_images": n_images, "seed": seed, **_jsonable(plan_options)},
            "backgrounds": "real photographs (see generator_options.backgrounds and their licence)"
            if plan_options.get("backgrounds")
            else "generated terrain",
        },
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    annotations_path = folder / "annotations.json"
    annotations_path.write_text(json.dumps(document, indent=1))
    return SyntheticDataset(folder=folder, annotations_path=annotations_path, frames=frames)


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value.isoformat()
        if isinstance(value, datetime)
        else str(value)
        if isinstance(value, Path)
        else value
        for key, value in options.items()
    }
