"""What every image provider promises: candidates with provenance, and one error type.

The gather stage treats all providers alike (web search APIs, open collections, local folders,
COCO Camera Traps files): each turns a query into `ImageCandidate`s that say where the image is
and under which licence it may be used. Nothing here downloads images; that is `gather`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "BoxAnnotation",
    "FailureReason",
    "ImageCandidate",
    "ImageSource",
    "SourceAuthError",
    "SourceError",
    "take_distinct",
]


class FailureReason(StrEnum):
    """Why a provider request failed; stable strings for logs and `rejected.jsonl`."""

    AUTH = "auth"
    BAD_JSON = "bad_json"
    UNEXPECTED_SHAPE = "unexpected_shape"
    HTTP_STATUS = "http_status"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    TOO_LARGE = "too_large"
    CONTENT_TYPE = "content_type"
    BAD_URL = "bad_url"
    NOT_FOUND = "not_found"


class SourceError(Exception):
    """A provider request that failed for good (after any retries); names provider and URL."""

    def __init__(
        self,
        provider: str,
        url: str,
        reason: FailureReason,
        message: str,
        *,
        status: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{provider}: {reason.value}: {message} ({url})")
        self.provider = provider
        self.url = url
        self.reason = reason
        self.message = message
        self.status = status
        self.attempts = attempts


class SourceAuthError(SourceError):
    """401/403: a missing or wrong key; retrying cannot help, so nothing retries it."""


@dataclass(frozen=True)
class BoxAnnotation:
    """One annotation carried over from a labelled source (COCO); bbox in pixels [x, y, w, h]."""

    category: str
    bbox: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class ImageCandidate:
    """An image a provider found, with everything needed to credit and trace it.

    `curated` is True when the label comes from people (annotations, sorted folders) rather
    than from a search engine; gather trusts such labels when it looks for cross-class
    near-duplicates (two frames of one camera, with and without a leopard, are legitimate).
    """

    url: str
    source: str
    query: str
    licence: str | None = None
    licence_url: str | None = None
    creator: str | None = None
    title: str | None = None
    page_url: str | None = None
    width: int | None = None
    height: int | None = None
    thumbnail_url: str | None = None
    source_id: str | None = None
    attribution: str | None = None
    curated: bool = False
    annotations: tuple[BoxAnnotation, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (used by the search cache and the manifest)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageCandidate:
        """Inverse of `to_json`."""
        values = dict(data)
        values["annotations"] = tuple(
            BoxAnnotation(
                category=str(item["category"]),
                bbox=tuple(item["bbox"]) if item.get("bbox") is not None else None,
            )
            for item in values.get("annotations") or ()
        )
        return cls(**values)


@runtime_checkable
class ImageSource(Protocol):
    """A provider: turns a query into image candidates, at most `limit` of them.

    `name` identifies the provider instance in manifests (`bing`, `openverse`, ...). `search`
    pages lazily, so stopping early costs no further requests. It raises `SourceError` when a
    request fails for good; candidates yielded before the failure remain valid.
    """

    name: str

    def search(self, query: str, limit: int) -> Iterator[ImageCandidate]: ...


def take_distinct(
    candidates: Iterable[ImageCandidate | None], limit: int
) -> Iterator[ImageCandidate]:
    """At most `limit` candidates with distinct URLs, pulled lazily (a paging provider asks for
    no page beyond the one that reaches `limit`); None entries (unusable results) are skipped."""
    if limit <= 0:
        return
    seen: set[str] = set()
    for candidate in candidates:
        if candidate is None or candidate.url in seen:
            continue
        seen.add(candidate.url)
        yield candidate
        if len(seen) >= limit:
            return
