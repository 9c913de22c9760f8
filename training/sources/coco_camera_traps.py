"""COCO Camera Traps JSON (the LILA datasets' format, and what `training.synthetic` writes).

The file has `images` ({id, file_name, width, height, ...}), `annotations` ({image_id,
category_id, bbox?}) and `categories` ({id, name}); `empty` is a category like any other. A
query names a category (by name or id) or is `@other`:

- a positive category (one of `positive_categories`) gives the images showing it;
- any other category gives the images showing it and no positive category (a frame with an
  ibex and a leopard is a leopard frame);
- `@other` gives every annotated image that shows no positive category (empties, other
  species): the negative class of a camera-trap dataset. Images with no annotation at all
  have an unknown label and are never returned.

Category names match loosely (case, spaces, '_' and '-' are ignored), so the label
`snow_leopard` finds the LILA category `snow leopard`. `file_name` resolves against
`image_base`: a folder (file:// URLs; names that climb out of it are skipped) or an http(s)
base URL (LILA's blob storage). Boxes, when the file has them, stay with the candidate as
`annotations` (COCO pixels, [x, y, w, h]) so evaluation can compare against ground truth.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snowtrap.training.sources.base import BoxAnnotation, FailureReason, ImageCandidate, SourceError
from snowtrap.training.sources.shapes import expect_list, expect_mapping, optional_int, optional_str

__all__ = ["OTHER_QUERY", "CocoCameraTraps", "normalise_category"]

log = logging.getLogger(__name__)

OTHER_QUERY = "@other"


def normalise_category(name: str) -> str:
    """'Snow_Leopard' and 'snow leopard' compare equal."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


@dataclass(frozen=True)
class _Image:
    image_id: str
    file_name: str
    width: int | None
    height: int | None
    licence: str | None
    licence_url: str | None
    category_ids: frozenset[int]
    annotations: tuple[BoxAnnotation, ...]


@dataclass(frozen=True)
class _Dataset:
    images: tuple[_Image, ...]
    category_names: dict[int, str]
    creator: str | None


class CocoCameraTraps:
    """Labelled camera-trap frames from one COCO Camera Traps JSON file."""

    def __init__(
        self,
        annotations_file: Path | str,
        *,
        positive_categories: Sequence[str | int],
        image_base: Path | str | None = None,
        name: str = "coco_camera_traps",
        licence: str | None = None,
        licence_url: str | None = None,
        creator: str | None = None,
    ) -> None:
        if not positive_categories:
            raise ValueError(f"{name}: at least one positive category is needed")
        self.name = name
        self.annotations_file = Path(annotations_file).expanduser().resolve()
        self.positive_categories = list(positive_categories)
        base = image_base if image_base is not None else self.annotations_file.parent
        self._base_url = (
            str(base) if str(base).lower().startswith(("http://", "https://")) else None
        )
        self._base_dir = None if self._base_url else Path(base).expanduser().resolve()
        self.licence = licence
        self.licence_url = licence_url
        self.creator = creator
        self._dataset: _Dataset | None = None
        self._positive_ids: frozenset[int] | None = None
        self._lock = threading.Lock()

    @property
    def file_url(self) -> str:
        return self.annotations_file.as_uri()

    def search(self, query: str, limit: int) -> Iterator[ImageCandidate]:
        """Up to `limit` images for a category name/id or `@other`, in file order."""
        dataset, positive_ids = self._load()
        if query.strip() == OTHER_QUERY:
            wanted: frozenset[int] | None = None
        else:
            wanted = self._category_ids(query, dataset)
        wants_positive = wanted is not None and bool(wanted & positive_ids)
        produced = 0
        for image in dataset.images:
            if produced >= limit:
                return
            if not image.category_ids:
                continue
            shows_positive = bool(image.category_ids & positive_ids)
            if wanted is None:
                if shows_positive:
                    continue
            elif not image.category_ids & wanted or (shows_positive and not wants_positive):
                continue
            url = self._resolve(image.file_name)
            if url is None:
                continue
            produced += 1
            yield ImageCandidate(
                url=url,
                source=self.name,
                query=query,
                licence=image.licence or self.licence,
                licence_url=image.licence_url or self.licence_url,
                creator=self.creator or dataset.creator,
                title=image.file_name,
                width=image.width,
                height=image.height,
                source_id=image.image_id,
                curated=True,
                annotations=image.annotations,
            )

    def _category_ids(self, query: str, dataset: _Dataset) -> frozenset[int]:
        text = query.strip()
        if text.isdigit() and int(text) in dataset.category_names:
            return frozenset({int(text)})
        key = normalise_category(text)
        ids = frozenset(
            cid for cid, name in dataset.category_names.items() if normalise_category(name) == key
        )
        if not ids:
            known = ", ".join(sorted(set(dataset.category_names.values())))
            raise SourceError(
                self.name,
                self.file_url,
                FailureReason.NOT_FOUND,
                f"no category {text!r}; the file has: {known}",
            )
        return ids

    def _resolve(self, file_name: str) -> str | None:
        relative = file_name.replace("\\", "/").lstrip("/")
        if self._base_url is not None:
            return f"{self._base_url.rstrip('/')}/{urllib.parse.quote(relative)}"
        assert self._base_dir is not None
        path = (self._base_dir / relative).resolve()
        if not path.is_relative_to(self._base_dir):
            log.warning("%s: skipping %r, it leaves the image folder", self.name, file_name)
            return None
        return path.as_uri()

    def _load(self) -> tuple[_Dataset, frozenset[int]]:
        with self._lock:
            if self._dataset is None or self._positive_ids is None:
                self._dataset = self._read()
                self._positive_ids = frozenset().union(
                    *(self._category_ids(str(c), self._dataset) for c in self.positive_categories)
                )
            return self._dataset, self._positive_ids

    def _read(self) -> _Dataset:
        url = self.file_url
        try:
            raw = json.loads(self.annotations_file.read_bytes())
        except FileNotFoundError as exc:
            raise SourceError(self.name, url, FailureReason.NOT_FOUND, "file not found") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SourceError(self.name, url, FailureReason.BAD_JSON, str(exc)) from exc
        data = expect_mapping(raw, self.name, url, "the file")
        images = expect_list(data.get("images"), self.name, url, "'images'")
        annotations = expect_list(data.get("annotations", []), self.name, url, "'annotations'")
        categories = expect_list(data.get("categories"), self.name, url, "'categories'")
        licences = {
            optional_int(item.get("id")): item
            for item in data.get("licenses") or []
            if isinstance(item, dict)
        }
        category_names: dict[int, str] = {}
        for item in categories:
            item = expect_mapping(item, self.name, url, "a category")
            cid, cname = optional_int(item.get("id")), optional_str(item.get("name"))
            if cid is None or cname is None:
                raise SourceError(
                    self.name, url, FailureReason.UNEXPECTED_SHAPE, f"bad category {item!r}"
                )
            category_names[cid] = cname

        by_image: dict[str, list[tuple[int, BoxAnnotation]]] = {}
        for item in annotations:
            item = expect_mapping(item, self.name, url, "an annotation")
            cid = optional_int(item.get("category_id"))
            image_id = item.get("image_id")
            if cid is None or cid not in category_names or image_id is None:
                raise SourceError(
                    self.name, url, FailureReason.UNEXPECTED_SHAPE, f"bad annotation {item!r}"
                )
            box = BoxAnnotation(category=category_names[cid], bbox=_bbox(item.get("bbox")))
            by_image.setdefault(str(image_id), []).append((cid, box))

        parsed: list[_Image] = []
        for item in images:
            item = expect_mapping(item, self.name, url, "an image")
            image_id, file_name = item.get("id"), optional_str(item.get("file_name"))
            if image_id is None or file_name is None:
                raise SourceError(
                    self.name, url, FailureReason.UNEXPECTED_SHAPE, f"bad image {item!r}"
                )
            found = by_image.get(str(image_id), [])
            licence = licences.get(optional_int(item.get("license")))
            parsed.append(
                _Image(
                    image_id=str(image_id),
                    file_name=file_name,
                    width=optional_int(item.get("width")),
                    height=optional_int(item.get("height")),
                    licence=optional_str(licence.get("name")) if licence else None,
                    licence_url=optional_str(licence.get("url")) if licence else None,
                    category_ids=frozenset(cid for cid, _ in found),
                    annotations=tuple(box for _, box in found),
                )
            )
        info = data.get("info") if isinstance(data.get("info"), dict) else {}
        return _Dataset(tuple(parsed), category_names, optional_str(info.get("contributor")))


def _bbox(value: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    x, y, w, h = (float(v) for v in value)
    return (x, y, w, h)
