"""Deduplicating a gather run's images, within and across the two classes.

Identical bytes within a class keep one copy; bytes found in both classes, or images whose
perceptual hashes match across classes, are dropped from both, since one label must be wrong.
Curated labels (local folders, COCO files) are trusted when `trust_curated_labels` is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from snowtrap.training.gather_config import GatherConfig
from snowtrap.training.gather_search import Found
from snowtrap.training.image_download import FetchRecord

__all__ = ["Entry", "hamming_pairs", "mark_duplicates"]


@dataclass
class Entry:
    found: Found
    record: FetchRecord
    rejection: tuple[str, str, str | None] | None = None  # reason, detail, related


def hamming_pairs(
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


def mark_duplicates(entries: list[Entry], config: GatherConfig) -> None:
    """Mark rejections in place: same bytes across classes, duplicates, phash conflicts."""
    labels_by_sha: dict[str, set[str]] = {}
    for entry in entries:
        labels_by_sha.setdefault(entry.record.sha256 or "", set()).add(entry.found.label)
    kept_by_key: dict[tuple[str, str], Entry] = {}
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
    pairs = hamming_pairs(
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
