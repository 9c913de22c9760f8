"""The synthetic survey generator: deterministic, exact boxes, stable coats, trap-like files."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snowtrap.models.decode import decode_trap_image
from snowtrap.training.classify import read_coco_camera_traps
from snowtrap.training.synthetic import (
    LEOPARD,
    AnimalSpec,
    FrameSpec,
    render_trap_frame,
    write_dataset,
)
from snowtrap.training.synthetic.coats import leopard_coat

SMALL = {"width": 320, "height": 240}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory):
    return write_dataset(tmp_path_factory.mktemp("survey"), 36, seed=11, **SMALL)


def test_same_seed_same_bytes_other_seed_other_frames(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", 8, seed=5, **SMALL)
    second = write_dataset(tmp_path / "b", 8, seed=5, **SMALL)
    other = write_dataset(tmp_path / "c", 8, seed=6, **SMALL)
    assert _digest(first.folder) == _digest(second.folder)
    assert len(_digest(first.folder)) == 9  # 8 frames + annotations.json
    shared = set(_digest(first.folder).values()) & set(_digest(other.folder).values())
    assert not shared


@pytest.mark.parametrize("seed", range(8))
def test_boxes_are_tight_around_the_animal_pixels(seed: int) -> None:
    animals = (
        AnimalSpec(LEOPARD, f"SL-{seed:03d}"),
        AnimalSpec("ibex", appearance_seed=seed),
        AnimalSpec(LEOPARD, f"SL-{seed + 50:03d}"),
    )[: 1 + seed % 3]
    spec = FrameSpec("C101", 1000 + seed, night=seed % 4 == 3, animals=animals, shadows=False)
    frame = render_trap_frame(spec)
    empty = render_trap_frame(FrameSpec("C101", 1000 + seed, night=spec.night, shadows=False))
    assert frame.animals, "every animal was placed outside the frame"
    changed = np.abs(frame.rgb.astype(int) - empty.rgb.astype(int)).max(axis=2) > 25
    inside_boxes = np.zeros(changed.shape, bool)
    for animal in frame.animals:
        x, y, w, h = animal.box
        ys, xs = np.nonzero(animal.mask)
        # Tight: every visible pixel inside, every edge touches one.
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        # The mask is where the animal really is: much of it differs from the empty scene.
        assert changed[animal.mask].mean() > 0.3
        inside_boxes[max(0, y - 2) : y + h + 2, max(0, x - 2) : x + w + 2] = True
    outside = changed & ~inside_boxes
    assert outside.sum() <= 0.001 * changed.size, "animal pixels outside every box"


def test_occluded_animals_get_the_box_of_what_is_visible() -> None:
    seen = 0
    for seed in range(30):
        spec = FrameSpec("C202", seed, animals=(AnimalSpec(LEOPARD, "SL-001"),), occlusion=True)
        frame = render_trap_frame(spec)
        for animal in frame.animals:
            ys, xs = np.nonzero(animal.mask)
            assert animal.box == (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1)
            if animal.visible_fraction < 0.95:
                seen += 1
    assert seen >= 3, "occlusion never hid part of an animal"


def test_an_individual_keeps_its_coat_and_individuals_differ() -> None:
    coat = leopard_coat("SL-007").copy()
    leopard_coat.cache_clear()
    assert np.array_equal(coat, leopard_coat("SL-007"))
    other = leopard_coat("SL-008")
    assert np.abs(coat - other).mean() > 10.0
    # The rosettes are there: a good share of dark ink on the pale ground.
    grey = coat.mean(axis=2)
    assert 0.03 < float(np.mean(grey < 120)) < 0.5


def test_night_frames_are_greyscale_and_day_frames_are_not(survey) -> None:
    document = json.loads(survey.annotations_path.read_text())
    assert 0 < sum(image["night"] for image in document["images"]) < len(document["images"])
    day_colour = []
    for image in document["images"]:
        decoded = decode_trap_image((survey.folder / image["file_name"]).read_bytes())
        hour = datetime.strptime(image["datetime"], "%Y-%m-%d %H:%M:%S").hour
        assert (hour >= 19 or hour < 6) == image["night"]
        if image["night"]:
            assert decoded.looks_like_night_ir, image["file_name"]
        else:
            day_colour.append(not decoded.looks_like_night_ir)
    # A bare snowfield at noon can be nearly grey; most day frames have colour.
    assert np.mean(day_colour) >= 0.8


def test_exif_capture_time_and_gps_on_some_cameras(survey) -> None:
    document = json.loads(survey.annotations_path.read_text())
    with_gps = 0
    for image in document["images"]:
        data = (survey.folder / image["file_name"]).read_bytes()
        decoded = decode_trap_image(data)
        assert decoded.capture_time is not None
        assert decoded.capture_time.strftime("%Y-%m-%d %H:%M:%S") == image["datetime"]
        gps = Image.open(survey.folder / image["file_name"]).getexif().get_ifd(0x8825)
        assert bool(gps) == image["has_gps"]
        with_gps += bool(gps)
    assert 0 < with_gps < len(document["images"])


def test_coco_camera_traps_file_is_consistent(survey) -> None:
    document = json.loads(survey.annotations_path.read_text())
    assert {c["name"] for c in document["categories"]} >= {"empty", LEOPARD, "ibex"}
    images = {image["id"]: image for image in document["images"]}
    annotated = {a["image_id"] for a in document["annotations"]}
    assert annotated == set(images)
    categories = {c["id"]: c["name"] for c in document["categories"]}
    leopards = 0
    for annotation in document["annotations"]:
        name = categories[annotation["category_id"]]
        if name == "empty":
            assert "bbox" not in annotation
            continue
        x, y, w, h = annotation["bbox"]
        image = images[annotation["image_id"]]
        assert x >= 0 and y >= 0 and w > 0 and h > 0
        assert x + w <= image["width"] and y + h <= image["height"]
        if name == LEOPARD:
            leopards += 1
            assert annotation["individual_id"].startswith("SL-")
    assert leopards > 0
    # Bursts: frames of one sequence share the camera and count up.
    by_sequence: dict[str, list[dict]] = {}
    for image in document["images"]:
        by_sequence.setdefault(image["seq_id"], []).append(image)
    for frames in by_sequence.values():
        assert [f["frame_num"] for f in frames] == list(range(len(frames)))
        assert {f["seq_num_frames"] for f in frames} == {len(frames)}
        assert len({f["location"] for f in frames}) == 1
    # The training pipeline's reader sees the same leopards.
    frames = read_coco_camera_traps(survey.annotations_path)
    assert sum(f.label for f in frames) == len(
        {a["image_id"] for a in document["annotations"] if categories[a["category_id"]] == LEOPARD}
    )
