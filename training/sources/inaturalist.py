"""iNaturalist: research-grade observation photos of one taxon, filtered by photo licence.

A query is a taxon: a numeric taxon id, or a scientific/common name looked up once through
GET {endpoint}/v1/taxa?q= (exact name match preferred, species rank preferred). Names are the
default rather than hard-coded ids because ids are easy to get wrong: 41976, sometimes quoted
for the snow leopard, is Lynx rufus (the bobcat).

Observations: GET {endpoint}/v1/observations?taxon_id=&quality_grade=research&photo_license=
&per_page=&order_by=id&order=asc&id_above= ; the answer is `{"total_results", "page",
"per_page", "results": [{"id", "uri", "photos": [{"id", "url", "license_code", "attribution",
"original_dimensions"}], "taxon": {...}, "user": {...}}]}`. Paging is by `id_above` (the
last id seen), which the API documents for deep paging: page numbers stop at 10,000 results.
Photo `url`s point at the 75 px square thumbnail; the size wanted replaces 'square' in it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from snowtrap.training.sources.base import FailureReason, ImageCandidate, SourceError
from snowtrap.training.sources.http import HttpClient
from snowtrap.training.sources.shapes import (
    expect_list,
    expect_mapping,
    http_url,
    optional_int,
    optional_str,
)

__all__ = [
    "DEFAULT_INATURALIST_ENDPOINT",
    "DEFAULT_PHOTO_LICENCES",
    "SNOW_LEOPARD_TAXON",
    "INaturalist",
    "photo_url_for_size",
]

log = logging.getLogger(__name__)

DEFAULT_INATURALIST_ENDPOINT = "https://api.inaturalist.org"
DEFAULT_PHOTO_LICENCES = ("cc-by", "cc-by-nc", "cc0")
SNOW_LEOPARD_TAXON = "Panthera uncia"
MAX_PER_PAGE = 200

PhotoSize = Literal["small", "medium", "large", "original"]
_LONG_SIDE = {"small": 240, "medium": 500, "large": 1024}
_SQUARE = re.compile(r"/square(\.[A-Za-z0-9]+)")
_ATTRIBUTION_NAME = re.compile(r"^\(c\)\s*(?P<name>.+?),\s", re.IGNORECASE)


def photo_url_for_size(square_url: str, size: PhotoSize) -> str:
    """'.../photos/1/square.jpg?x' -> '.../photos/1/large.jpg?x' (unchanged if no 'square')."""
    return _SQUARE.sub(lambda match: f"/{size}{match.group(1)}", square_url, count=1)


def _licence_name(code: str) -> str:
    """'cc-by-nc' -> 'CC BY-NC'; 'cc0' -> 'CC0'."""
    lowered = code.lower()
    if lowered == "cc0":
        return "CC0"
    return "CC " + lowered.removeprefix("cc-").upper()


def _scaled(dimensions: Any, size: PhotoSize) -> tuple[int | None, int | None]:
    if not isinstance(dimensions, dict):
        return None, None
    width, height = optional_int(dimensions.get("width")), optional_int(dimensions.get("height"))
    if width is None or height is None or size == "original":
        return width, height
    ratio = min(1.0, _LONG_SIDE[size] / max(width, height, 1))
    return max(1, round(width * ratio)), max(1, round(height * ratio))


class INaturalist:
    """Research-grade observation photos of a taxon, in observation-id order."""

    def __init__(
        self,
        *,
        endpoint: str = DEFAULT_INATURALIST_ENDPOINT,
        name: str = "inaturalist",
        photo_licences: Sequence[str] = DEFAULT_PHOTO_LICENCES,
        quality_grade: str = "research",
        per_page: int = 200,
        photo_size: PhotoSize = "large",
        photos_per_observation: int = 1,
        http: HttpClient | None = None,
    ) -> None:
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be in 1..{MAX_PER_PAGE}, got {per_page}")
        if photos_per_observation < 1:
            raise ValueError("photos_per_observation must be at least 1")
        self.name = name
        self.endpoint = endpoint.rstrip("/")
        self.photo_licences = [code.lower() for code in photo_licences]
        self.quality_grade = quality_grade
        self.per_page = per_page
        self.photo_size = photo_size
        self.photos_per_observation = photos_per_observation
        # iNaturalist asks API users for about one request per second.
        self.http = http or HttpClient(name, min_interval_s=1.0)
        self._taxon_ids: dict[str, int] = {}
        self._taxon_lock = threading.Lock()

    @property
    def observations_url(self) -> str:
        return f"{self.endpoint}/v1/observations"

    @property
    def taxa_url(self) -> str:
        return f"{self.endpoint}/v1/taxa"

    def resolve_taxon(self, query: str) -> int:
        """Taxon id for a numeric id or a name (cached); `SourceError(not_found)` if none."""
        text = query.strip()
        if text.isdigit():
            return int(text)
        key = " ".join(text.lower().split())
        with self._taxon_lock:
            if key in self._taxon_ids:
                return self._taxon_ids[key]
        answer = self.http.get_json(
            self.taxa_url, params={"q": text, "is_active": "true", "per_page": 30}
        )
        answer = expect_mapping(answer, self.name, self.taxa_url, "the taxa response")
        results = expect_list(answer.get("results"), self.name, self.taxa_url, "'results'")
        taxa = [item for item in results if isinstance(item, dict) and optional_int(item.get("id"))]
        if not taxa:
            raise SourceError(
                self.name, self.taxa_url, FailureReason.NOT_FOUND, f"no taxon matches {text!r}"
            )

        def rank_of(taxon: dict[str, Any]) -> tuple[int, int]:
            names = {
                " ".join(str(taxon.get(field) or "").lower().split())
                for field in ("name", "preferred_common_name", "matched_term")
            }
            return (0 if key in names else 1, 0 if taxon.get("rank") == "species" else 1)

        best = min(taxa, key=rank_of)
        taxon_id = int(best["id"])
        log.info("%s: taxon %r -> %d (%s)", self.name, text, taxon_id, best.get("name"))
        with self._taxon_lock:
            self._taxon_ids[key] = taxon_id
        return taxon_id

    def search(self, query: str, limit: int) -> Iterator[ImageCandidate]:
        """Up to `limit` photos of the taxon named by `query`."""
        taxon_id = self.resolve_taxon(query)
        id_above = 0
        produced = 0
        while produced < limit:
            params: dict[str, str | int] = {
                "taxon_id": taxon_id,
                "quality_grade": self.quality_grade,
                "photos": "true",
                "per_page": self.per_page,
                "order_by": "id",
                "order": "asc",
            }
            if self.photo_licences:
                params["photo_license"] = ",".join(self.photo_licences)
            if id_above:
                params["id_above"] = id_above
            page = self.http.get_json(self.observations_url, params=params)
            page = expect_mapping(page, self.name, self.observations_url, "the response")
            results = expect_list(
                page.get("results"), self.name, self.observations_url, "'results'"
            )
            if not results:
                return
            last_id = id_above
            for observation in results:
                if not isinstance(observation, dict):
                    continue
                last_id = max(last_id, optional_int(observation.get("id")) or 0)
                for candidate in self._candidates(observation, query):
                    yield candidate
                    produced += 1
                    if produced >= limit:
                        return
            total = optional_int(page.get("total_results"))
            if last_id <= id_above or (total is not None and total <= len(results)):
                return
            id_above = last_id

    def _candidates(self, observation: dict[str, Any], query: str) -> Iterator[ImageCandidate]:
        photos = observation.get("photos")
        if not isinstance(photos, list):
            return
        taxon = observation.get("taxon") if isinstance(observation.get("taxon"), dict) else {}
        title = optional_str(taxon.get("preferred_common_name")) or optional_str(taxon.get("name"))
        user = observation.get("user") if isinstance(observation.get("user"), dict) else {}
        page_url = optional_str(observation.get("uri"))
        taken = 0
        for photo in photos:
            if taken >= self.photos_per_observation:
                return
            if not isinstance(photo, dict):
                continue
            code = optional_str(photo.get("license_code"))
            square_url = http_url(photo.get("url"))
            if code is None or square_url is None:
                continue  # no licence code means all rights reserved
            if self.photo_licences and code.lower() not in self.photo_licences:
                continue
            attribution = optional_str(photo.get("attribution"))
            match = _ATTRIBUTION_NAME.match(attribution or "")
            creator = match.group("name") if match else None
            creator = creator or optional_str(user.get("name")) or optional_str(user.get("login"))
            width, height = _scaled(photo.get("original_dimensions"), self.photo_size)
            taken += 1
            yield ImageCandidate(
                url=photo_url_for_size(square_url, self.photo_size),
                source=self.name,
                query=query,
                licence=_licence_name(code),
                creator=creator,
                title=title,
                page_url=page_url,
                width=width,
                height=height,
                thumbnail_url=square_url,
                source_id=str(photo.get("id")) if photo.get("id") is not None else None,
                attribution=attribution,
            )
