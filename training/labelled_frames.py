"""The labelled set `snowtrap evaluate` reads: COCO Camera Traps JSON (the LILA format).

Bad labels fail fast with one `LabelsFileError` naming the labels file and the entry, before
any model runs; `decode_frame` turns an unreadable image into the same error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from snowtrap.training.classify import LEOPARD_CATEGORY
from snowtrap.training.sources.coco_camera_traps import normalise_category

MAX_LISTED_MISSING = 5
"""Missing image files named one by one in the error (the rest are counted)."""

__all__ = ["LabelledFrame", "LabelsFileError", "check_image_files", "decode_frame", "read_labels"]


class LabelsFileError(Exception):
    """A labels file (or an image it names) that cannot be evaluated; names file and entry."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class LabelledFrame:
    """One frame of the labels file: pixel boxes stay as COCO gives them until decoded."""

    image_id: str
    file_name: str
    path: Path
    label: int  # 1 = a snow_leopard annotation on the frame
    boxes_xywh: np.ndarray  # (K, 4) leopard boxes, COCO pixels
    boxes_complete: bool  # every leopard annotation has a box (else AP skips the frame)
    width: int | None
    height: int | None

    @property
    def entry(self) -> str:
        """How error messages and the sheet name this frame."""
        return f"image {self.image_id} ({self.file_name})"

    def truth_xyxy(self, width: int, height: int) -> np.ndarray:
        """Leopard boxes as normalised xyxy, on the JSON's size when it gives one."""
        w, h = float(self.width or width), float(self.height or height)
        b = self.boxes_xywh
        return np.stack(
            [b[:, 0] / w, b[:, 1] / h, (b[:, 0] + b[:, 2]) / w, (b[:, 1] + b[:, 3]) / h], 1
        )


# --- reading the labels ---------------------------------------------------------------------


def _entry_list(document: dict[str, Any], key: str, path: Path, required: bool) -> list[Any]:
    value = document.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise LabelsFileError(path, f"not a COCO Camera Traps file (no {key!r} list)")
    return value


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return int(value)


def _pixel_box(value: Any) -> list[float] | None:
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    box = [float(v) for v in value]
    if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        return None
    return box


def read_labels(labels: Path, image_root: Path | None = None) -> list[LabelledFrame]:
    """Frames of a COCO Camera Traps file, leopard or not, with their leopard boxes.

    A frame is a leopard frame when any annotation's category is snow_leopard (names match
    loosely: "Snow Leopard" too). Every malformed entry raises `LabelsFileError` naming it,
    so a user fixes the file once instead of discovering problems one run at a time.
    """
    labels = Path(labels)
    root = Path(image_root) if image_root is not None else labels.parent
    try:
        document = json.loads(labels.read_bytes())
    except FileNotFoundError as exc:
        raise LabelsFileError(labels, "file not found") from exc
    except IsADirectoryError as exc:
        raise LabelsFileError(labels, "is a directory, not a labels file") from exc
    except OSError as exc:
        raise LabelsFileError(labels, f"cannot read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelsFileError(labels, f"not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise LabelsFileError(labels, "not a COCO Camera Traps file (not a JSON object)")
    images = _entry_list(document, "images", labels, required=True)
    annotations = _entry_list(document, "annotations", labels, required=False)
    categories = _entry_list(document, "categories", labels, required=False)

    names: dict[str, str] = {}
    for index, item in enumerate(categories):
        if not isinstance(item, dict) or item.get("id") is None or item.get("name") is None:
            raise LabelsFileError(labels, f"categories[{index}]: needs an 'id' and a 'name'")
        names[str(item["id"])] = str(item["name"])
    leopard = normalise_category(LEOPARD_CATEGORY)

    entries: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(images):
        if not isinstance(item, dict):
            raise LabelsFileError(labels, f"images[{index}]: not a JSON object")
        image_id, file_name = item.get("id"), item.get("file_name")
        if image_id is None or isinstance(image_id, dict | list):
            raise LabelsFileError(labels, f"images[{index}]: no 'id'")
        if not isinstance(file_name, str) or not file_name.strip():
            raise LabelsFileError(labels, f"images[{index}] (id {image_id}): no 'file_name'")
        key = str(image_id)
        if key in entries:
            raise LabelsFileError(labels, f"images[{index}]: image id {image_id} appears twice")
        for side in ("width", "height"):
            if item.get(side) is not None and _positive_int(item[side]) is None:
                raise LabelsFileError(
                    labels, f"image {image_id} ({file_name}): bad {side} {item[side]!r}"
                )
        entries[key] = {"item": item, "leopard": False, "boxes": [], "complete": True}

    for index, item in enumerate(annotations):
        if not isinstance(item, dict):
            raise LabelsFileError(labels, f"annotations[{index}]: not a JSON object")
        image_id = item.get("image_id")
        if image_id is None or str(image_id) not in entries:
            raise LabelsFileError(
                labels, f"annotations[{index}]: image_id {image_id!r} is not among the images"
            )
        category = item.get("category_id")
        if category is not None and names and str(category) not in names:
            raise LabelsFileError(
                labels, f"annotations[{index}]: category_id {category!r} is not a category"
            )
        name = names.get(str(category)) or str(item.get("category") or "")
        if normalise_category(name) != leopard:
            continue
        entry = entries[str(image_id)]
        entry["leopard"] = True
        if item.get("bbox") is None:
            entry["complete"] = False
            continue
        box = _pixel_box(item["bbox"])
        if box is None:
            raise LabelsFileError(
                labels, f"annotations[{index}] (image {image_id}): bad bbox {item['bbox']!r}"
            )
        entry["boxes"].append(box)

    return [
        LabelledFrame(
            image_id=key,
            file_name=entry["item"]["file_name"],
            path=root / entry["item"]["file_name"],
            label=int(entry["leopard"]),
            boxes_xywh=np.asarray(entry["boxes"], dtype=np.float64).reshape(-1, 4),
            boxes_complete=entry["complete"],
            width=_positive_int(entry["item"].get("width")),
            height=_positive_int(entry["item"].get("height")),
        )
        for key, entry in entries.items()
    ]


def check_image_files(frames: Sequence[LabelledFrame], labels: Path) -> None:
    """Every image file exists: checked before the models load, so a typo fails in a second."""
    missing = [frame for frame in frames if not frame.path.is_file()]
    if not missing:
        return
    if len(missing) == 1:
        raise LabelsFileError(labels, f"{missing[0].entry}: file not found ({missing[0].path})")
    listed = ", ".join(frame.entry for frame in missing[:MAX_LISTED_MISSING])
    more = len(missing) - MAX_LISTED_MISSING
    root = missing[0].path.parent
    raise LabelsFileError(
        labels,
        f"{len(missing)} image files not found (e.g. under {root}): {listed}"
        + (f" and {more} more" if more > 0 else ""),
    )


def decode_frame(frame: LabelledFrame, labels: Path, max_side: int | None) -> Any:
    from snowtrap.models.decode import DecodeError, decode_trap_image

    try:
        return decode_trap_image(frame.path.read_bytes(), max_side=max_side)
    except OSError as exc:
        raise LabelsFileError(labels, f"{frame.entry}: cannot read: {exc}") from exc
    except DecodeError as exc:
        raise LabelsFileError(labels, f"{frame.entry}: cannot decode: {exc}") from exc
