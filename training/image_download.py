"""Downloading gathered images: fetch each URL once, check it is a real image, store it.

`ImageDownloader.fetch` never raises: every outcome becomes a `FetchRecord` (a line of
`fetch_log.jsonl`), so an interrupted run resumes and a re-run refetches only what a retry
could change (`is_permanent`). HTTP goes through the shared `sources.http.HttpClient`;
`file:` URLs from curated sources are read from disk under the same byte limit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import imagehash
from PIL import Image

from snowtrap.models.decode import DecodeError, DecodeLimits, decode_trap_image, sniff_image_format
from snowtrap.training.gather_config import GatherConfig
from snowtrap.training.gather_files import write_atomic
from snowtrap.training.sources.base import FailureReason, SourceError
from snowtrap.training.sources.http import HttpClient, RetryPolicy

__all__ = ["FetchRecord", "ImageDownloader", "is_permanent", "read_fetch_log"]


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchRecord:
    """Outcome of fetching one URL (a line of fetch_log.jsonl)."""

    url: str
    ok: bool
    reason: str | None = None
    detail: str | None = None
    status: int | None = None
    sha256: str | None = None
    ext: str | None = None
    format: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    phash: str | None = None


_EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "TIFF": "tif",
    "GIF": "gif",
    "BMP": "bmp",
}
_TRANSIENT = {"timeout", "connection", "rate_limited", "not_found", "error"}
_TRANSIENT_STATUS = {408, 425, 429}


def is_permanent(record: FetchRecord) -> bool:
    """Refusals a re-run would repeat (bad bytes, too big, 404, hotlink 403) are not retried;
    timeouts, dropped connections and 5xx are."""
    if record.ok or record.reason in _TRANSIENT:
        return False
    if record.reason == "http_status":
        status = record.status
        return status is not None and status < 500 and status not in _TRANSIENT_STATUS
    return True


class ImageDownloader:
    def __init__(self, config: GatherConfig, out_dir: Path) -> None:
        limits = config.download
        self.limits = limits
        self.out_dir = out_dir
        self.decode_limits = DecodeLimits(
            max_bytes=limits.max_bytes,
            max_pixels=limits.max_pixels,
            allowed_formats=frozenset(fmt.upper() for fmt in limits.allowed_formats),
        )
        self.http = HttpClient(
            "download",
            timeout_s=limits.timeout_s,
            deadline_s=limits.deadline_s,
            retry=RetryPolicy(
                max_attempts=limits.max_attempts, backoff_base_s=limits.backoff_base_s
            ),
            user_agent=config.user_agent,
        )

    def fetch(self, url: str, allow_file: bool, label: str) -> FetchRecord:
        """Download, check and store one image; never raises (one bad URL must not stop a run)."""
        try:
            data = self._read(url, allow_file)
        except SourceError as exc:
            return FetchRecord(url, False, exc.reason.value, exc.message, status=exc.status)
        try:
            return self._accept(url, data, label)
        except Exception as exc:  # e.g. a full disk; recorded as transient, retried next run
            log.exception("gather: could not process %s", url)
            return FetchRecord(url, False, "error", f"{type(exc).__name__}: {exc}")

    def _read(self, url: str, allow_file: bool) -> bytes:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme == "file" and allow_file:
            return self._read_file(url)
        response = self.http.get(
            url,
            headers={"Accept": "image/*,*/*;q=0.5"},
            max_bytes=self.limits.max_bytes,
            allowed_content_types=self.limits.allowed_content_types,
        )
        return response.body

    def _read_file(self, url: str) -> bytes:
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        try:
            size = path.stat().st_size
            if size > self.limits.max_bytes:
                raise SourceError(
                    "download",
                    url,
                    FailureReason.TOO_LARGE,
                    f"{size} bytes exceeds the limit of {self.limits.max_bytes} bytes",
                )
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise SourceError("download", url, FailureReason.NOT_FOUND, "no such file") from exc
        except IsADirectoryError as exc:
            raise SourceError("download", url, FailureReason.BAD_URL, "a directory") from exc

    def _accept(self, url: str, data: bytes, label: str) -> FetchRecord:
        fmt = sniff_image_format(data)
        if fmt is None:
            return FetchRecord(
                url, False, "not_an_image", f"no image signature; starts {data[:12]!r}"
            )
        try:
            decoded = decode_trap_image(data, self.decode_limits, max_side=256)
        except DecodeError as exc:
            return FetchRecord(url, False, exc.reason.value, exc.message)
        if min(decoded.width, decoded.height) < self.limits.min_side:
            detail = f"{decoded.width}x{decoded.height} is below min_side={self.limits.min_side}"
            return FetchRecord(url, False, "too_small", detail)
        sha = hashlib.sha256(data).hexdigest()
        ext = _EXTENSIONS.get(decoded.format, decoded.format.lower())
        write_atomic(self.out_dir / "images" / label / f"{sha}.{ext}", data)
        phash = str(imagehash.phash(Image.fromarray(decoded.rgb)))
        return FetchRecord(
            url,
            True,
            sha256=sha,
            ext=ext,
            format=decoded.format,
            bytes=len(data),
            width=decoded.width,
            height=decoded.height,
            phash=phash,
        )


def read_fetch_log(path: Path) -> dict[str, FetchRecord]:
    records: dict[str, FetchRecord] = {}
    if not path.is_file():
        return records
    with path.open() as handle:
        for line in handle:
            try:
                record = FetchRecord(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut short by an interrupted run
            records[record.url] = record
    return records
