"""Openverse: openly licensed images with their licence, creator and landing page.

Protocol: GET {endpoint}/v1/images/?q=&page=&page_size=&license= ; the answer is
`{"result_count", "page_count", "page_size", "page", "results": [{"id", "url", "title",
"creator", "license", "license_version", "license_url", "foreign_landing_url", "width",
"height", "thumbnail", ...}]}`. Anonymous clients get at most 20 results per page and a few
pages (240 works per query, reflected in `page_count`, which is where paging stops); an
OAuth bearer token (from /v1/auth_tokens/token/) allows larger pages, not deeper ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

from snowtrap.training.sources.base import ImageCandidate, take_distinct
from snowtrap.training.sources.http import HttpClient
from snowtrap.training.sources.shapes import (
    expect_list,
    expect_mapping,
    http_url,
    optional_int,
    optional_str,
)

__all__ = ["DEFAULT_OPENVERSE_ENDPOINT", "Openverse", "openverse_licence_name"]

log = logging.getLogger(__name__)

DEFAULT_OPENVERSE_ENDPOINT = "https://api.openverse.org"
ANONYMOUS_MAX_PAGE_SIZE = 20


def openverse_licence_name(code: str | None, version: str | None) -> str | None:
    """'by-sa' + '4.0' -> 'CC BY-SA 4.0'; 'cc0' -> 'CC0 1.0'; 'pdm' -> 'PDM 1.0'."""
    if not code:
        return None
    lowered = code.lower()
    if lowered == "cc0":
        name = "CC0"
    elif lowered == "pdm":
        name = "PDM"
    else:
        name = f"CC {lowered.upper()}"
    return f"{name} {version}" if version else name


class Openverse:
    """Pages Openverse image search by page number until `page_count` or `limit`."""

    def __init__(
        self,
        *,
        endpoint: str = DEFAULT_OPENVERSE_ENDPOINT,
        name: str = "openverse",
        token: str | None = None,
        page_size: int = 20,
        licences: Sequence[str] | None = None,
        licence_type: str | None = None,
        extra_params: Mapping[str, str] | None = None,
        http: HttpClient | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be positive, got {page_size}")
        if token is None and page_size > ANONYMOUS_MAX_PAGE_SIZE:
            # Openverse answers 401 to this, which would read as a bad key.
            raise ValueError(
                f"{name}: anonymous requests may ask for at most {ANONYMOUS_MAX_PAGE_SIZE} "
                f"results per page (got page_size={page_size}); set a token or lower it"
            )
        self.name = name
        self.endpoint = endpoint.rstrip("/")
        self.page_size = page_size
        self.licences = list(licences) if licences else None
        self.licence_type = licence_type
        self.extra_params = dict(extra_params or {})
        self._token = token
        self.http = http or HttpClient(name)

    @property
    def search_url(self) -> str:
        return f"{self.endpoint}/v1/images/"

    def search(self, query: str, limit: int) -> Iterator[ImageCandidate]:
        """Up to `limit` distinct images for `query`."""
        return take_distinct(self._results(query), limit)

    def _results(self, query: str) -> Iterator[ImageCandidate | None]:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        page_number = 1
        while True:
            params: dict[str, str | int] = {
                **self.extra_params,
                "q": query,
                "page": page_number,
                "page_size": self.page_size,
            }
            if self.licences:
                params["license"] = ",".join(self.licences)
            if self.licence_type:
                params["license_type"] = self.licence_type
            page = self.http.get_json(self.search_url, params=params, headers=headers)
            page = expect_mapping(page, self.name, self.search_url, "the response")
            results = expect_list(page.get("results"), self.name, self.search_url, "'results'")
            if not results:
                return
            yield from (self._candidate(item, query) for item in results)
            page_count = optional_int(page.get("page_count"))
            if page_count is not None and page_number >= page_count:
                return
            page_number += 1

    def _candidate(self, item: object, query: str) -> ImageCandidate | None:
        if not isinstance(item, dict):
            return None
        url = http_url(item.get("url"))
        if url is None:
            log.debug("%s: skipping a result without an http(s) url", self.name)
            return None
        return ImageCandidate(
            url=url,
            source=self.name,
            query=query,
            licence=openverse_licence_name(
                optional_str(item.get("license")), optional_str(item.get("license_version"))
            ),
            licence_url=optional_str(item.get("license_url")),
            creator=optional_str(item.get("creator")),
            title=optional_str(item.get("title")),
            page_url=optional_str(item.get("foreign_landing_url")),
            width=optional_int(item.get("width")),
            height=optional_int(item.get("height")),
            thumbnail_url=optional_str(item.get("thumbnail")),
            source_id=optional_str(item.get("id")),
            attribution=optional_str(item.get("attribution")),
        )
