"""Gather: a two-class image set (leopard / not leopard) from providers, with provenance.

The positive class comes from the positive queries; the negative class from habitat queries
and from random-word queries (the noise-contrastive idea of the original snow-leopard work:
whatever a search engine returns for "teapot" or "harbour" is, with high probability, not a
snow leopard, and it covers the visual world far more widely than a hand-picked list).

What a run does, and what it leaves in `out_dir`:

1. searches every provider for its positive and negative queries (results of web searches
   are cached in `searches/`, so a re-run asks no API again unless `reuse_searches` is off);
2. downloads each new URL once, concurrently, with timeouts, retries, a byte limit, a
   Content-Type check and then the real check: magic bytes and a full decode (HTML served
   as image/jpeg is caught here). Every outcome is appended to `fetch_log.jsonl` as it
   happens, so an interrupted run resumes where it stopped and a re-run downloads nothing
   it already has (or already refused for good);
3. deduplicates: identical bytes (sha256) within a class keep one copy; bytes found in both
   classes, or images whose perceptual hashes (`imagehash.phash`, Hamming distance at most
   `dedupe.phash_threshold`) match across classes, are dropped from *both* classes, because
   one of the two labels must be wrong and we cannot tell which. Curated labels (local
   folders, COCO files) are trusted: two frames of one camera, with and without a leopard,
   look alike and are both right;
4. writes `images/<label>/<sha256>.<ext>` (exactly the manifest's images; dropped ones move
   to `rejected/<label>/`), `manifest.jsonl` (one row per image, with source URL, page,
   licence, creator and phash), `rejected.jsonl` (one row per refused (label, URL), with the
   reason) and `summary.json`. Every (label, URL) found ends in exactly one of the two files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import random
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from snowtrap.models.decode import DecodeError, DecodeLimits, decode_trap_image, sniff_image_format
from snowtrap.training.sources.base import (
    FailureReason,
    ImageCandidate,
    ImageSource,
    SourceAuthError,
    SourceError,
)
from snowtrap.training.sources.config import CURATED_KINDS, ProviderConfig, QueryDefaults
from snowtrap.training.sources.http import DEFAULT_USER_AGENT, HttpClient, RetryPolicy

__all__ = [
    "RANDOM_WORDS",
    "DedupeSettings",
    "DownloadLimits",
    "GatherConfig",
    "GatherResult",
    "LabelNames",
    "LabelSummary",
    "ManifestRow",
    "QueryPlan",
    "RejectedRow",
    "configure_cli",
    "gather",
    "random_word_queries",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024

RANDOM_WORDS: tuple[str, ...] = (
    "accordion", "airport", "anchor", "apron", "armchair", "avenue", "backpack", "bakery",
    "balcony", "bandage", "barrel", "basket", "bathtub", "battery", "beach", "bench",
    "bicycle", "billboard", "blanket", "blender", "bookshelf", "bottle", "bouquet", "bowl",
    "bracelet", "bread", "brick", "bridge", "broom", "bucket", "bus", "cabinet", "cactus",
    "cake", "calculator", "calendar", "camera", "candle", "canoe", "carpet", "castle",
    "cathedral", "ceiling", "chair", "chandelier", "cheese", "chess", "chimney", "church",
    "clock", "cloud", "coffee", "coin", "compass", "concert", "cookie", "corridor", "cottage",
    "crane", "crayon", "cupcake", "curtain", "cushion", "desk", "diamond", "dinner", "doorway",
    "drum", "dumbbell", "elevator", "envelope", "escalator", "factory", "fence", "ferry",
    "fireworks", "flag", "flute", "fountain", "garage", "garden", "guitar", "hammer", "harbour",
    "helmet", "highway", "hospital", "kettle", "keyboard", "kitchen", "ladder", "lamp",
    "lantern", "laptop", "lawnmower", "library", "lighthouse", "locomotive", "mailbox",
    "marathon", "market", "microphone", "microscope", "mirror", "motorcycle", "mug", "museum",
    "necklace", "newspaper", "notebook", "office", "orchestra", "painting", "pancake",
    "parachute", "parking lot", "pasta", "piano", "pillow", "pizza", "playground", "pottery",
    "printer", "pyramid", "quilt", "radio", "railway", "raincoat", "refrigerator", "restaurant",
    "robot", "rocket", "sailboat", "sandwich", "saxophone", "scissors", "screwdriver",
    "sculpture", "skateboard", "skyscraper", "sneaker", "sofa", "spoon", "stadium", "staircase",
    "stapler", "suitcase", "sunglasses", "supermarket", "surfboard", "swimming pool", "table",
    "teapot", "telephone", "television", "tennis", "tent", "toaster", "toothbrush", "tractor",
    "traffic", "train station", "trampoline", "trumpet", "umbrella", "vase", "violin",
    "volcano", "waterfall", "wheelbarrow", "window", "windmill", "wristwatch", "yacht",
)  # fmt: skip
"""Everyday things, no animals: random-word queries return images that are almost surely
not snow leopards (noise-contrastive negatives)."""


def random_word_queries(count: int, seed: int) -> list[str]:
    """`count` distinct words from `RANDOM_WORDS`, the same for the same seed."""
    if count <= 0:
        return []
    return random.Random(seed).sample(RANDOM_WORDS, min(count, len(RANDOM_WORDS)))


# --------------------------------------------------------------------------------------------
# configuration


class LabelNames(BaseModel):
    """Folder and manifest names of the two classes."""

    model_config = ConfigDict(extra="forbid")

    positive: str = Field("snow_leopard", pattern=r"^[A-Za-z0-9_\-]+$")
    negative: str = Field("background", pattern=r"^[A-Za-z0-9_\-]+$")


class QueryPlan(BaseModel):
    """Search queries for the web providers (bing, openverse); others have their own defaults."""

    model_config = ConfigDict(extra="forbid")

    positive: list[str] = Field(
        default_factory=lambda: [
            "snow leopard",
            "snow leopard camera trap",
            "snow leopard in the wild",
            "Panthera uncia",
        ]
    )
    habitat: list[str] = Field(
        default_factory=lambda: [
            "himalayan mountain landscape",
            "rocky scree slope",
            "snow covered rocks",
            "alpine meadow",
            "mountain cliff",
            "tibetan plateau",
        ]
    )
    random_words: int = Field(20, ge=0, description="how many random-word negative queries")
    seed: int = 0

    def negative_queries(self) -> list[str]:
        return [*self.habitat, *random_word_queries(self.random_words, self.seed)]


class DownloadLimits(BaseModel):
    """How images are fetched and what is accepted."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(8, ge=1, le=64)
    timeout_s: float = Field(20.0, gt=0, description="socket timeout per blocking read")
    deadline_s: float = Field(120.0, gt=0, description="wall-clock limit per attempt")
    max_attempts: int = Field(3, ge=1)
    backoff_base_s: float = Field(0.5, ge=0)
    max_bytes: int = Field(20 * MiB, ge=1)
    max_pixels: int = Field(64_000_000, ge=1)
    min_side: int = Field(32, ge=1, description="smaller images (icons, spacers) are refused")
    allowed_content_types: list[str] = Field(
        default_factory=lambda: ["image/", "application/octet-stream", "binary/octet-stream"],
        description="Content-Type prefixes; the bytes are sniffed regardless",
    )
    allowed_formats: list[str] = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "TIFF"])


class DedupeSettings(BaseModel):
    """Perceptual-hash comparison across classes."""

    model_config = ConfigDict(extra="forbid")

    phash_threshold: int = Field(4, ge=0, le=64, description="max Hamming distance (64-bit)")
    trust_curated_labels: bool = True


class GatherConfig(BaseModel):
    """The `gather` section of a training config."""

    model_config = ConfigDict(extra="forbid")

    out_dir: Path = Path("runs/gather")
    labels: LabelNames = Field(default_factory=LabelNames)
    queries: QueryPlan = Field(default_factory=QueryPlan)
    per_query_limit: int = Field(100, ge=1)
    providers: list[ProviderConfig] = Field(default_factory=list)
    download: DownloadLimits = Field(default_factory=DownloadLimits)
    dedupe: DedupeSettings = Field(default_factory=DedupeSettings)
    user_agent: str = DEFAULT_USER_AGENT
    reuse_searches: bool = True
    progress: bool = True

    @classmethod
    def from_yaml(cls, path: Path | str, section: str | None = None) -> GatherConfig:
        """Load from a YAML file; `section` picks a key (e.g. 'gather' in a train config).

        Relative paths stay relative to the working directory, as in `TrainConfig.load`;
        `relative_to_dir(path.parent)` anchors them at the file instead.
        """
        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if section is not None:
            data = data.get(section) if isinstance(data, dict) else None
        if not isinstance(data, dict):
            where = f"section {section!r} of " if section else ""
            raise ValueError(f"{where}{path}: expected a mapping")
        return cls.model_validate(data)

    def relative_to_dir(self, base: Path) -> GatherConfig:
        """A copy whose relative paths are anchored at `base`."""

        def anchored(value: Path) -> Path:
            return value if value.is_absolute() else base / value

        providers = []
        for provider in self.providers:
            updates: dict[str, Any] = {}
            for attr in ("root", "annotations"):
                if isinstance(getattr(provider, attr, None), Path):
                    updates[attr] = anchored(getattr(provider, attr))
            image_base = getattr(provider, "image_base", None)
            if image_base and not image_base.lower().startswith(("http://", "https://")):
                updates["image_base"] = str(anchored(Path(image_base)))
            providers.append(provider.model_copy(update=updates))
        return self.model_copy(update={"out_dir": anchored(self.out_dir), "providers": providers})


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class ManifestRow:
    """One accepted image; `path` is relative to the gather output folder."""

    sha256: str
    label: str
    path: str
    source: str
    query: str
    url: str
    page_url: str | None
    licence: str | None
    licence_url: str | None
    creator: str | None
    title: str | None
    attribution: str | None
    source_id: str | None
    width: int
    height: int
    bytes: int
    format: str
    phash: str
    curated: bool
    annotations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RejectedRow:
    """One refused (label, URL) and why; `related` names the other image for duplicates."""

    label: str
    url: str
    source: str
    query: str
    reason: str
    detail: str
    sha256: str | None = None
    related: str | None = None


@dataclass
class LabelSummary:
    """Per label: unique URLs found, images kept, refusals by reason."""

    label: str
    found: int = 0
    downloaded: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass
class GatherResult:
    """What a run produced; the same facts as the files it wrote in `out_dir`."""

    out_dir: Path
    manifest_path: Path
    rejected_path: Path
    rows: list[ManifestRow]
    rejected: list[RejectedRow]
    labels: dict[str, LabelSummary]
    fetched_now: int
    search_errors: list[str]

    def format_summary(self) -> str:
        """A small text table for logs and the training report."""
        lines = [f"gather -> {self.out_dir}  (downloaded this run: {self.fetched_now})"]
        lines.append(f"{'label':<16} {'found':>7} {'kept':>7}  rejected")
        for summary in self.labels.values():
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary.rejected.items())) or "-"
            lines.append(
                f"{summary.label:<16} {summary.found:>7} {summary.downloaded:>7}  {reasons}"
            )
        lines.extend(f"search error: {error}" for error in self.search_errors)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# searching


@dataclass(frozen=True)
class _Job:
    provider: ProviderConfig
    source: ImageSource
    query: str
    label: str
    limit: int


@dataclass(frozen=True)
class _Found:
    label: str
    candidate: ImageCandidate
    curated_kind: bool


_CACHE_IRRELEVANT = {
    "name",
    "api_key",
    "token",
    "positive_queries",
    "negative_queries",
    "limit",
    "timeout_s",
    "max_attempts",
    "backoff_base_s",
    "max_retry_after_s",
    "min_request_interval_s",
}


def _plan(config: GatherConfig) -> list[_Job]:
    defaults = QueryDefaults(
        positive_label=config.labels.positive,
        negative_label=config.labels.negative,
        positive_search=tuple(config.queries.positive),
        negative_search=tuple(config.queries.negative_queries()),
    )
    names = [provider.instance_name for provider in config.providers]
    if len(set(names)) != len(names):
        raise ValueError(f"provider names must be unique (set 'name'): {names}")
    jobs: list[_Job] = []
    for provider in config.providers:
        source = provider.build(defaults, config.user_agent)
        positive, negative = provider.queries(defaults)
        if provider.limit is not None:
            limit = provider.limit
        elif provider.kind in CURATED_KINDS:
            limit = 2**62  # a labelled dataset is taken whole unless a limit is set
        else:
            limit = config.per_query_limit
        for label, queries in (
            (config.labels.positive, positive),
            (config.labels.negative, negative),
        ):
            jobs.extend(_Job(provider, source, q, label, limit) for q in dict.fromkeys(queries))
    return jobs


def _cache_path(out_dir: Path, job: _Job) -> Path:
    settings = job.provider.model_dump(mode="json", exclude=_CACHE_IRRELEVANT)
    key = json.dumps({"provider": settings, "query": job.query, "limit": job.limit}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return out_dir / "searches" / job.provider.instance_name / f"{digest}.jsonl"


def _search(job: _Job, out_dir: Path, reuse: bool) -> tuple[list[ImageCandidate], str | None]:
    cacheable = job.provider.kind not in CURATED_KINDS
    cache = _cache_path(out_dir, job)
    if cacheable and reuse and cache.is_file():
        with cache.open() as handle:
            return [
                ImageCandidate.from_json(json.loads(line)) for line in handle if line.strip()
            ], None
    found: list[ImageCandidate] = []
    try:
        found.extend(job.source.search(job.query, job.limit))
    except SourceAuthError:
        raise  # a wrong key would silently empty a class; stop instead
    except SourceError as exc:
        log.warning("search %s %r failed: %s", job.provider.instance_name, job.query, exc)
        return found, str(exc)
    if cacheable:
        _write_lines(cache, (candidate.to_json() for candidate in found))
    return found, None


# --------------------------------------------------------------------------------------------
# downloading


@dataclass(frozen=True)
class _Fetched:
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


def _is_permanent(record: _Fetched) -> bool:
    """Refusals a re-run would repeat (bad bytes, too big, 404, hotlink 403) are not retried;
    timeouts, dropped connections and 5xx are."""
    if record.ok or record.reason in _TRANSIENT:
        return False
    if record.reason == "http_status":
        status = record.status
        return status is not None and status < 500 and status not in _TRANSIENT_STATUS
    return True


class _Downloader:
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

    def fetch(self, url: str, allow_file: bool, label: str) -> _Fetched:
        """Download, check and store one image; never raises (one bad URL must not stop a run)."""
        try:
            data = self._read(url, allow_file)
        except SourceError as exc:
            return _Fetched(url, False, exc.reason.value, exc.message, status=exc.status)
        try:
            return self._accept(url, data, label)
        except Exception as exc:  # e.g. a full disk; recorded as transient, retried next run
            log.exception("gather: could not process %s", url)
            return _Fetched(url, False, "error", f"{type(exc).__name__}: {exc}")

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

    def _accept(self, url: str, data: bytes, label: str) -> _Fetched:
        fmt = sniff_image_format(data)
        if fmt is None:
            return _Fetched(url, False, "not_an_image", f"no image signature; starts {data[:12]!r}")
        try:
            decoded = decode_trap_image(data, self.decode_limits, max_side=256)
        except DecodeError as exc:
            return _Fetched(url, False, exc.reason.value, exc.message)
        if min(decoded.width, decoded.height) < self.limits.min_side:
            detail = f"{decoded.width}x{decoded.height} is below min_side={self.limits.min_side}"
            return _Fetched(url, False, "too_small", detail)
        sha = hashlib.sha256(data).hexdigest()
        ext = _EXTENSIONS.get(decoded.format, decoded.format.lower())
        _write_atomic(self.out_dir / "images" / label / f"{sha}.{ext}", data)
        phash = str(imagehash.phash(Image.fromarray(decoded.rgb)))
        return _Fetched(
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


# --------------------------------------------------------------------------------------------
# files


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_lines(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    for row in rows:
        buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
    _write_atomic(path, buffer.getvalue().encode())


def _read_fetch_log(path: Path) -> dict[str, _Fetched]:
    records: dict[str, _Fetched] = {}
    if not path.is_file():
        return records
    with path.open() as handle:
        for line in handle:
            try:
                record = _Fetched(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut short by an interrupted run
            records[record.url] = record
    return records


def _image_file(out_dir: Path, labels: Sequence[str], sha: str, ext: str) -> Path | None:
    name = f"{sha}.{ext}"
    for folder in ("images", "rejected"):
        for label in labels:
            path = out_dir / folder / label / name
            if path.is_file():
                return path
    return None


def _place(
    out_dir: Path, labels: Sequence[str], label: str, sha: str, ext: str, keep: bool
) -> None:
    """Put the file of (label, sha) under images/ when kept, else under rejected/."""
    name = f"{sha}.{ext}"
    target = out_dir / ("images" if keep else "rejected") / label / name
    other = out_dir / ("rejected" if keep else "images") / label / name
    if target.is_file():
        other.unlink(missing_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if other.is_file():
        os.replace(other, target)
        return
    source = _image_file(out_dir, labels, sha, ext)
    if source is not None:
        shutil.copyfile(source, target)


# --------------------------------------------------------------------------------------------
# deduplication


@dataclass
class _Entry:
    found: _Found
    record: _Fetched
    rejection: tuple[str, str, str | None] | None = None  # reason, detail, related


def _hamming_pairs(
    left: Sequence[str], right: Sequence[str], threshold: int
) -> list[tuple[int, int, int]]:
    """(i, j, distance) for hex phashes left[i], right[j] within `threshold` bits."""
    if not left or not right:
        return []
    a = np.array([int(h, 16) for h in left], dtype=np.uint64)
    b = np.array([int(h, 16) for h in right], dtype=np.uint64)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, len(a), 1024):
        distances = np.bitwise_count(a[start : start + 1024, None] ^ b[None, :])
        for i, j in zip(*np.nonzero(distances <= threshold), strict=True):
            pairs.append((start + int(i), int(j), int(distances[i, j])))
    return pairs


def _dedupe(entries: list[_Entry], config: GatherConfig) -> None:
    """Mark rejections in place: same bytes across classes, duplicates, phash conflicts."""
    labels_by_sha: dict[str, set[str]] = {}
    for entry in entries:
        labels_by_sha.setdefault(entry.record.sha256 or "", set()).add(entry.found.label)
    kept_by_key: dict[tuple[str, str], _Entry] = {}
    for entry in entries:
        sha = entry.record.sha256 or ""
        label = entry.found.label
        if len(labels_by_sha[sha]) > 1:
            others = ", ".join(sorted(labels_by_sha[sha] - {label}))
            entry.rejection = (
                "in_both_classes",
                f"the same bytes were also found as {others}",
                None,
            )
            continue
        first = kept_by_key.setdefault((label, sha), entry)
        if first is not entry:
            entry.rejection = ("duplicate", "same bytes as a kept image", first.found.candidate.url)

    positive, negative = config.labels.positive, config.labels.negative
    kept = [e for e in entries if e.rejection is None]
    pos = [e for e in kept if e.found.label == positive]
    neg = [e for e in kept if e.found.label == negative]
    pairs = _hamming_pairs(
        [e.record.phash or "0" for e in pos],
        [e.record.phash or "0" for e in neg],
        config.dedupe.phash_threshold,
    )
    trust = config.dedupe.trust_curated_labels
    for i, j, distance in pairs:
        a, b = pos[i], neg[j]
        if trust and a.found.candidate.curated and b.found.candidate.curated:
            continue
        for entry, partner in ((a, b), (b, a)):
            if entry.rejection is None:
                detail = (
                    f"looks like a {partner.found.label} image (phash distance {distance} <= "
                    f"{config.dedupe.phash_threshold}); one label must be wrong"
                )
                entry.rejection = (
                    "near_duplicate_across_classes",
                    detail,
                    partner.found.candidate.url,
                )


# --------------------------------------------------------------------------------------------
# the stage


def gather(config: GatherConfig, *, out_dir: Path | None = None) -> GatherResult:
    """Run the gather stage (resumable); see the module docstring for what it writes."""
    out = Path(out_dir or config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [config.labels.positive, config.labels.negative]
    if labels[0] == labels[1]:
        raise ValueError("the positive and negative labels must differ")
    # tqdm's disable=None hides the bars when stderr is not a terminal (CI logs stay clean).
    hide_progress = None if config.progress else True

    jobs = _plan(config)
    found: list[_Found] = []
    search_errors: list[str] = []
    seen_pairs: set[tuple[str, str]] = set()
    for job in tqdm(jobs, desc="search", unit="query", disable=hide_progress):
        candidates, error = _search(job, out, config.reuse_searches)
        if error:
            search_errors.append(error)
        for candidate in candidates:
            if (job.label, candidate.url) in seen_pairs:
                continue
            seen_pairs.add((job.label, candidate.url))
            found.append(_Found(job.label, candidate, job.provider.kind in CURATED_KINDS))

    log_path = out / "fetch_log.jsonl"
    fetched = _read_fetch_log(log_path)
    first_label: dict[str, str] = {}
    local_ok: dict[str, bool] = {}
    for item in found:
        first_label.setdefault(item.candidate.url, item.label)
        local_ok[item.candidate.url] = local_ok.get(item.candidate.url, False) or item.curated_kind

    def needs_fetch(url: str) -> bool:
        record = fetched.get(url)
        if record is None or url.startswith("file:"):
            # Local files are read again every run: cheap, and they change under the same
            # name (a re-synthesised survey, a re-exported labelled set).
            return True
        if record.ok:
            return _image_file(out, labels, record.sha256 or "", record.ext or "") is None
        return not _is_permanent(record)

    todo = [url for url in first_label if needs_fetch(url)]
    downloader = _Downloader(config, out)
    fetched_now = 0
    with (
        log_path.open("a") as fetch_log,
        ThreadPoolExecutor(config.download.concurrency, thread_name_prefix="gather") as pool,
    ):
        futures = [
            pool.submit(downloader.fetch, url, local_ok[url], first_label[url]) for url in todo
        ]
        for future in tqdm(
            as_completed(futures), total=len(futures), desc="download", disable=hide_progress
        ):
            record = future.result()
            fetched[record.url] = record
            fetched_now += record.ok
            fetch_log.write(json.dumps(asdict(record)) + "\n")
            fetch_log.flush()

    return _finish(config, out, labels, found, fetched, fetched_now, search_errors)


def _finish(
    config: GatherConfig,
    out: Path,
    labels: list[str],
    found: list[_Found],
    fetched: dict[str, _Fetched],
    fetched_now: int,
    search_errors: list[str],
) -> GatherResult:
    rejected: list[RejectedRow] = []
    entries: list[_Entry] = []
    for item in found:
        record = fetched[item.candidate.url]
        if record.ok:
            entries.append(_Entry(item, record))
            continue
        rejected.append(_rejected_row(item, record.reason or "unknown", record.detail or "", None))
    _dedupe(entries, config)

    rows: list[ManifestRow] = []
    kept_keys: set[tuple[str, str]] = set()
    all_keys: dict[tuple[str, str], str] = {}
    for entry in entries:
        sha, ext = entry.record.sha256 or "", entry.record.ext or ""
        all_keys[(entry.found.label, sha)] = ext
        if entry.rejection is not None:
            reason, detail, related = entry.rejection
            rejected.append(_rejected_row(entry.found, reason, detail, sha, related))
            continue
        kept_keys.add((entry.found.label, sha))
        rows.append(_manifest_row(entry, f"images/{entry.found.label}/{sha}.{ext}"))

    for (label, sha), ext in all_keys.items():
        _place(out, labels, label, sha, ext, (label, sha) in kept_keys)
    for label in labels:  # files left from earlier runs whose image is no longer kept
        folder = out / "images" / label
        for path in folder.glob("*.*") if folder.is_dir() else ():
            if (label, path.stem) not in kept_keys and not path.name.startswith("."):
                target = out / "rejected" / label / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)

    summaries = {label: LabelSummary(label) for label in labels}
    for item in found:
        summaries[item.label].found += 1
    for row in rows:
        summaries[row.label].downloaded += 1
    for rejection in rejected:
        counts = summaries[rejection.label].rejected
        counts[rejection.reason] = counts.get(rejection.reason, 0) + 1

    manifest_path, rejected_path = out / "manifest.jsonl", out / "rejected.jsonl"
    _write_lines(manifest_path, (asdict(row) for row in rows))
    _write_lines(rejected_path, (asdict(row) for row in rejected))
    summary = {
        "labels": {label: asdict(s) for label, s in summaries.items()},
        "fetched_now": fetched_now,
        "search_errors": search_errors,
    }
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
    result = GatherResult(
        out, manifest_path, rejected_path, rows, rejected, summaries, fetched_now, search_errors
    )
    log.info("%s", result.format_summary())
    return result


def _rejected_row(
    item: _Found, reason: str, detail: str, sha: str | None, related: str | None = None
) -> RejectedRow:
    candidate = item.candidate
    return RejectedRow(
        label=item.label,
        url=candidate.url,
        source=candidate.source,
        query=candidate.query,
        reason=reason,
        detail=detail,
        sha256=sha,
        related=related,
    )


def _manifest_row(entry: _Entry, path: str) -> ManifestRow:
    candidate, record = entry.found.candidate, entry.record
    return ManifestRow(
        sha256=record.sha256 or "",
        label=entry.found.label,
        path=path,
        source=candidate.source,
        query=candidate.query,
        url=candidate.url,
        page_url=candidate.page_url,
        licence=candidate.licence,
        licence_url=candidate.licence_url,
        creator=candidate.creator,
        title=candidate.title,
        attribution=candidate.attribution,
        source_id=candidate.source_id,
        width=record.width or 0,
        height=record.height or 0,
        bytes=record.bytes or 0,
        format=record.format or "",
        phash=record.phash or "",
        curated=candidate.curated,
        annotations=[
            {"category": box.category, "bbox": list(box.bbox) if box.bbox else None}
            for box in candidate.annotations
        ],
    )


# --------------------------------------------------------------------------------------------
# command line


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """Arguments for `snowtrap gather` / `python -m snowtrap.training.gather`."""
    parser.add_argument("config", type=Path, help="YAML file: a GatherConfig or a train config")
    parser.add_argument("--section", default=None, help="key holding the gather config")
    parser.add_argument("--out", type=Path, default=None, help="override out_dir")
    parser.set_defaults(run=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = GatherConfig.from_yaml(args.config, section=args.section)
    gather(config, out_dir=args.out)  # logs its summary table
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snowtrap.training.gather", description=__doc__)
    configure_cli(parser)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
