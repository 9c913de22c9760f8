"""Searching for a gather run: one job per (provider, query, label), results cached on disk.

Web searches are cached under `searches/<provider>/`, keyed by the provider settings that
change results, so a re-run asks no API again; curated sources (local folders, COCO files)
are read afresh. A wrong key (`SourceAuthError`) stops the run; other search errors are
logged and reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from snowtrap.training.gather_config import GatherConfig
from snowtrap.training.gather_files import write_lines
from snowtrap.training.sources.base import (
    ImageCandidate,
    ImageSource,
    SourceAuthError,
    SourceError,
)
from snowtrap.training.sources.config import CURATED_KINDS, ProviderConfig, QueryDefaults

__all__ = ["Found", "SearchJob", "plan_searches", "search"]


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchJob:
    provider: ProviderConfig
    source: ImageSource
    query: str
    label: str
    limit: int


@dataclass(frozen=True)
class Found:
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


def plan_searches(config: GatherConfig) -> list[SearchJob]:
    defaults = QueryDefaults(
        positive_label=config.labels.positive,
        negative_label=config.labels.negative,
        positive_search=tuple(config.queries.positive),
        negative_search=tuple(config.queries.negative_queries()),
    )
    names = [provider.instance_name for provider in config.providers]
    if len(set(names)) != len(names):
        raise ValueError(f"provider names must be unique (set 'name'): {names}")
    jobs: list[SearchJob] = []
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
            jobs.extend(
                SearchJob(provider, source, q, label, limit) for q in dict.fromkeys(queries)
            )
    return jobs


def _cache_path(out_dir: Path, job: SearchJob) -> Path:
    settings = job.provider.model_dump(mode="json", exclude=_CACHE_IRRELEVANT)
    key = json.dumps({"provider": settings, "query": job.query, "limit": job.limit}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return out_dir / "searches" / job.provider.instance_name / f"{digest}.jsonl"


def search(job: SearchJob, out_dir: Path, reuse: bool) -> tuple[list[ImageCandidate], str | None]:
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
        write_lines(cache, (candidate.to_json() for candidate in found))
    return found, None
