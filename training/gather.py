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

The steps live in their own modules: `gather_config` (what to ask for), `gather_search` (1),
`image_download` (2), `gather_dedupe` (3) and `gather_files` (the files of 4); this one runs
them in order and writes the manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from snowtrap.training.gather_config import GatherConfig
from snowtrap.training.gather_dedupe import Entry, mark_duplicates
from snowtrap.training.gather_files import place_image, stored_image, write_atomic, write_lines
from snowtrap.training.gather_search import Found, plan_searches, search
from snowtrap.training.image_download import (
    FetchRecord,
    ImageDownloader,
    is_permanent,
    read_fetch_log,
)
from snowtrap.training.sources.config import CURATED_KINDS

__all__ = [
    "GatherResult",
    "LabelSummary",
    "ManifestRow",
    "RejectedRow",
    "configure_cli",
    "gather",
]

log = logging.getLogger(__name__)


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


def gather(config: GatherConfig, *, out_dir: Path | None = None) -> GatherResult:
    """Run the gather stage (resumable); see the module docstring for what it writes."""
    out = Path(out_dir or config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [config.labels.positive, config.labels.negative]
    if labels[0] == labels[1]:
        raise ValueError("the positive and negative labels must differ")
    # tqdm's disable=None hides the bars when stderr is not a terminal (CI logs stay clean).
    hide_progress = None if config.progress else True

    jobs = plan_searches(config)
    found: list[Found] = []
    search_errors: list[str] = []
    seen_pairs: set[tuple[str, str]] = set()
    for job in tqdm(jobs, desc="search", unit="query", disable=hide_progress):
        candidates, error = search(job, out, config.reuse_searches)
        if error:
            search_errors.append(error)
        for candidate in candidates:
            if (job.label, candidate.url) in seen_pairs:
                continue
            seen_pairs.add((job.label, candidate.url))
            found.append(Found(job.label, candidate, job.provider.kind in CURATED_KINDS))

    log_path = out / "fetch_log.jsonl"
    fetched = read_fetch_log(log_path)
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
            return stored_image(out, labels, record.sha256 or "", record.ext or "") is None
        return not is_permanent(record)

    todo = [url for url in first_label if needs_fetch(url)]
    downloader = ImageDownloader(config, out)
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
    found: list[Found],
    fetched: dict[str, FetchRecord],
    fetched_now: int,
    search_errors: list[str],
) -> GatherResult:
    rejected: list[RejectedRow] = []
    entries: list[Entry] = []
    for item in found:
        record = fetched[item.candidate.url]
        if record.ok:
            entries.append(Entry(item, record))
            continue
        rejected.append(_rejected_row(item, record.reason or "unknown", record.detail or "", None))
    mark_duplicates(entries, config)

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
        place_image(out, labels, label, sha, ext, (label, sha) in kept_keys)
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
    write_lines(manifest_path, (asdict(row) for row in rows))
    write_lines(rejected_path, (asdict(row) for row in rejected))
    summary = {
        "labels": {label: asdict(s) for label, s in summaries.items()},
        "fetched_now": fetched_now,
        "search_errors": search_errors,
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
    result = GatherResult(
        out, manifest_path, rejected_path, rows, rejected, summaries, fetched_now, search_errors
    )
    log.info("%s", result.format_summary())
    return result


def _rejected_row(
    item: Found, reason: str, detail: str, sha: str | None, related: str | None = None
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


def _manifest_row(entry: Entry, path: str) -> ManifestRow:
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
