"""Camera cards for the end-to-end tests: good frames, corrupt JPEGs and non-images in
folders, uploaded with the real uploader (`Uploaded` says what went where)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from helpers.messages import (
    garbled_jpeg,
    image_message,
    pdf_bytes,
    text_file_bytes,
    truncated_jpeg,
)
from helpers.topics import (
    produce,
)
from snowtrap.models.decode import sniff_image_format
from snowtrap.stream.contracts import image_id_of
from snowtrap.stream.topics import TopicNames
from snowtrap.stream.uploader import Uploader, UploaderSettings
from snowtrap.stream.uploader.privacy import strip_location

STATION = "station-k2"


@dataclass(frozen=True)
class TrapFile:
    """One file on a camera card and what the test knows about it."""

    path: Path
    camera_id: str
    has_leopard: bool
    is_night: bool
    has_gps: bool

    @property
    def image_id(self) -> str:
        return sent_image_id(self.path)


def sent_image_id(path: Path) -> str:
    """The image id the uploader sends `path` under: the hash of its bytes without GPS."""
    data = path.read_bytes()
    fmt = sniff_image_format(data)
    return image_id_of(strip_location(data, fmt) if fmt else data)


def make_trap_images(folder: Path, n: int, seed: int) -> list[TrapFile]:
    """`n` trap images from the project's synthetic camera-trap generator, with the truth
    from its COCO Camera Traps file: cameras (one folder each), leopards, other animals,
    empties, IR night frames, trap EXIF with GPS on some cameras."""
    from snowtrap.training.synthetic import write_dataset

    dataset = write_dataset(folder, n, seed, width=640, height=480)
    coco = json.loads(dataset.annotations_path.read_text())
    leopard = next(c["id"] for c in coco["categories"] if c["name"] == "snow_leopard")
    with_leopard = {a["image_id"] for a in coco["annotations"] if a["category_id"] == leopard}
    return [
        TrapFile(
            path=folder / image["file_name"],
            camera_id=image["location"],
            has_leopard=image["id"] in with_leopard,
            is_night=bool(image["night"]),
            has_gps=bool(image.get("has_gps")),
        )
        for image in coco["images"]
    ]


def write_corrupt_files(folder: Path, sources: list[TrapFile]) -> list[Path]:
    """5 damaged JPEGs (cut short, or noise over the entropy-coded data) from good frames."""
    folder.mkdir(parents=True, exist_ok=True)
    damaged = {
        "IMG_9001_truncated.jpg": truncated_jpeg(sources[0].path.read_bytes(), 0.5),
        "IMG_9002_truncated.jpg": truncated_jpeg(sources[1].path.read_bytes(), 0.1),
        "IMG_9003_header_only.jpg": truncated_jpeg(sources[2].path.read_bytes(), 0.003),
        "IMG_9004_garbled.jpg": garbled_jpeg(sources[3].path.read_bytes(), 4),
        "IMG_9005_garbled.jpg": garbled_jpeg(sources[4].path.read_bytes(), 5),
    }
    paths = []
    for name, data in damaged.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def write_non_images(folder: Path) -> list[Path]:
    """2 files with image names that are not images: field notes and a PDF datasheet."""
    folder.mkdir(parents=True, exist_ok=True)
    notes, sheet = folder / "IMG_9101.jpg", folder / "IMG_9102.JPG"
    notes.write_bytes(text_file_bytes())
    sheet.write_bytes(pdf_bytes())
    return [notes, sheet]


@dataclass
class Uploaded:
    """What went onto `trap.images` in a test."""

    ids: set[str]
    good: dict[str, TrapFile]
    """Image id -> the good trap image it is."""
    corrupt_ids: set[str]
    non_image_ids: set[str]
    cameras: list[str]


def upload(
    bootstrap: str, topics: TopicNames, cards: dict[str, list[Path]], ledger: Path
) -> tuple[set[str], list]:
    """Run the real uploader over each camera's card; returns the sent ids and rejections."""
    sent: set[str] = set()
    rejected = []
    for camera, paths in cards.items():
        settings = UploaderSettings(
            bootstrap_servers=bootstrap,
            topics=topics,
            camera_id=camera,
            station_id=STATION,
            ledger_path=ledger,
            progress=False,
            create_topics=False,
        )
        summary = Uploader(settings).run(paths)
        assert summary.exit_code == 0, summary
        assert not summary.failed
        sent |= {outcome.image_id for outcome in summary.sent if outcome.image_id}
        rejected += summary.rejected
    return sent, rejected


def prepare_cards(root: Path, n_good: int, seed: int) -> tuple[dict[str, list[Path]], Uploaded]:
    """Three camera cards holding `n_good` trap images, 5 corrupt files and 2 non-images."""
    images = make_trap_images(root / "frames", n_good, seed)
    corrupt = write_corrupt_files(root / "corrupt", images)
    non_images = write_non_images(root / "other")
    cameras = sorted({trap_file.camera_id for trap_file in images})
    assert len(cameras) >= 2
    cards: dict[str, list[Path]] = {camera: [] for camera in cameras}
    for trap_file in images:
        cards[trap_file.camera_id].append(trap_file.path)
    cards[cameras[0]] += corrupt[:3] + non_images
    cards[cameras[1]] += corrupt[3:]
    uploaded = Uploaded(
        ids=set(),
        good={trap_file.image_id: trap_file for trap_file in images},
        corrupt_ids={sent_image_id(path) for path in corrupt},
        non_image_ids={image_id_of(path.read_bytes()) for path in non_images},
        cameras=cameras,
    )
    return cards, uploaded


def upload_everything(
    bootstrap: str, topics: TopicNames, cards: dict[str, list[Path]], uploaded: Uploaded, tmp: Path
) -> None:
    """The uploader sends images (corrupt ones included) and refuses the non-images; those
    are then sent the way a careless third-party uploader would, to reach the worker too."""
    sent, rejected = upload(bootstrap, topics, cards, tmp / "ledger.sqlite")
    assert sent == set(uploaded.good) | uploaded.corrupt_ids
    assert {image_id_of(outcome.path.read_bytes()) for outcome in rejected} == (
        uploaded.non_image_ids
    )
    assert all("not an image" in outcome.reason for outcome in rejected)
    produce(
        bootstrap,
        topics.images,
        [
            image_message(
                outcome.path.read_bytes(), outcome.path.name, camera_id=uploaded.cameras[0]
            )
            for outcome in rejected
        ],
    )
    uploaded.ids = sent | uploaded.non_image_ids
