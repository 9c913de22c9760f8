"""Bing Image Search v7-compatible client.

Microsoft retired the Bing Search APIs in August 2025; several services still speak the v7
protocol, so the endpoint is configurable and the default is the historical public one.

Protocol: GET {endpoint}/images/search?q=&count=&offset=&safeSearch= with the key in the
`Ocp-Apim-Subscription-Key` header. The answer is `{"_type": "Images", "value": [...],
"nextOffset": N, "totalEstimatedMatches": N}`; each value carries `contentUrl`, `hostPageUrl`,
`name`, `width`, `height`, `encodingFormat`, `thumbnailUrl`. Results carry no licence: Bing
indexes the open web, so candidates from here have `licence=None` and must be reviewed before
any use beyond research.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Literal

from snowtrap.training.sources.base import (
    FailureReason,
    ImageCandidate,
    SourceError,
    take_distinct,
)
from snowtrap.training.sources.http import HttpClient
from snowtrap.training.sources.shapes import (
    expect_list,
    expect_mapping,
    http_url,
    optional_int,
    optional_str,
)

__all__ = ["DEFAULT_BING_ENDPOINT", "MAX_BING_COUNT", "BingImageSearchV7"]

log = logging.getLogger(__name__)

DEFAULT_BING_ENDPOINT = "https://api.bing.microsoft.com/v7.0"
MAX_BING_COUNT = 150
"""The v7 API's largest `count` per request."""

SafeSearch = Literal["Off", "Moderate", "Strict"]


class BingImageSearchV7:
    """Pages a v7 image search by count/offset, following `nextOffset`."""

    def __init__(
        self,
        api_key: str,
        *,
        endpoint: str = DEFAULT_BING_ENDPOINT,
        name: str = "bing",
        page_size: int = 50,
        safe_search: SafeSearch = "Moderate",
        market: str | None = None,
        extra_params: Mapping[str, str] | None = None,
        http: HttpClient | None = None,
    ) -> None:
        if not api_key:
            raise ValueError(f"{name}: an API key is required (Ocp-Apim-Subscription-Key)")
        if not 1 <= page_size <= MAX_BING_COUNT:
            raise ValueError(f"page_size must be in 1..{MAX_BING_COUNT}, got {page_size}")
        self.name = name
        self.endpoint = endpoint.rstrip("/")
        self.page_size = page_size
        self.safe_search = safe_search
        self.market = market
        self.extra_params = dict(extra_params or {})
        self._api_key = api_key
        self.http = http or HttpClient(name)

    @property
    def search_url(self) -> str:
        return f"{self.endpoint}/images/search"

    def search(self, query: str, limit: int) -> Iterator[ImageCandidate]:
        """Up to `limit` distinct images for `query`; stops at an empty page or the end."""
        return take_distinct(self._results(query), limit)

    def _results(self, query: str) -> Iterator[ImageCandidate | None]:
        offset = 0
        while True:
            params: dict[str, str | int] = {
                **self.extra_params,
                "q": query,
                "count": self.page_size,
                "offset": offset,
                "safeSearch": self.safe_search,
            }
            if self.market:
                params["mkt"] = self.market
            page = self.http.get_json(
                self.search_url,
                params=params,
                headers={"Ocp-Apim-Subscription-Key": self._api_key},
            )
            page = expect_mapping(page, self.name, self.search_url, "the response")
            kind = page.get("_type")
            if kind is not None and kind != "Images":
                raise SourceError(
                    self.name,
                    self.search_url,
                    FailureReason.UNEXPECTED_SHAPE,
                    f"expected _type 'Images', got {kind!r}",
                )
            values = expect_list(page.get("value", []), self.name, self.search_url, "'value'")
            if not values:
                return
            yield from (self._candidate(item, query) for item in values)
            next_offset = optional_int(page.get("nextOffset"))
            if next_offset is None or next_offset <= offset:
                next_offset = offset + len(values)
            total = optional_int(page.get("totalEstimatedMatches"))
            if total is not None and next_offset >= total:
                return
            offset = next_offset

    def _candidate(self, item: object, query: str) -> ImageCandidate | None:
        if not isinstance(item, dict):
            log.debug("%s: skipping a non-object result %r", self.name, item)
            return None
        url = http_url(item.get("contentUrl"))
        if url is None:
            log.debug("%s: skipping a result without an http(s) contentUrl", self.name)
            return None
        return ImageCandidate(
            url=url,
            source=self.name,
            query=query,
            title=optional_str(item.get("name")),
            page_url=optional_str(item.get("hostPageUrl")),
            width=optional_int(item.get("width")),
            height=optional_int(item.get("height")),
            thumbnail_url=optional_str(item.get("thumbnailUrl")),
            source_id=optional_str(item.get("imageId")),
        )
