"""HotSpotter-style individual matching: pure functions and an in-memory index, no Kafka.

The steps (Crall et al., 2013, "HotSpotter - patterned species instance recognition"):

Steps 1 and 2 live in `models.reid.features`, with the operating point `MatcherConfig`.

1. chip normalisation: greyscale (night frames are infrared greyscale anyway), resized to a
   fixed pixel area whatever the crop size, contrast-equalised with CLAHE;
2. features: OpenCV SIFT keypoints, descriptors turned into RootSIFT (L1-normalise, square
   root), so Euclidean distance compares them as the Hellinger kernel would;
3. one-vs-many: every query descriptor looks up its k+1 nearest neighbours among *all*
   descriptors of *all* enrolled chips (FLANN kd-trees); LNBNN scores each of the first k by
   how much closer it is than the (k+1)-th, counted once per individual per query descriptor,
   and the scores are summed per individual;
4. spatial verification: the query's correspondences with each shortlisted individual's chips
   go through RANSAC (a similarity transform); only inlier matches keep their score;
5. a ranked list, and a decision: known individual, new candidate, or not enough texture.

Mirror images: a leopard seen from its other side, or a pose flipped left-right, shows the
coat mirrored. The query runs on the chip *and* its horizontal mirror, and each individual
keeps the better of the two, so one enrolled side matches both directions of travel.

The index is incremental: enrolled chips go into a small brute-force "pending" set that every
query searches too; when it grows past a fraction of the main FLANN index, both are merged and
the kd-trees are rebuilt.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import cv2
import numpy as np

from snowtrap.models.reid.features import (
    DEFAULT_CONFIG,
    ChipFeatures,
    MatcherConfig,
    extract_chip,
    normalise_chip,
)
from snowtrap.models.reid.features import extract_features as extract_features  # re-export


class Decision(StrEnum):
    KNOWN = "known"
    """The top candidate passed spatial verification with a score over the threshold."""
    NEW = "new_candidate"
    """Enough texture, but no enrolled individual matches well: possibly a new leopard."""
    NOT_ENOUGH_TEXTURE = "not_enough_texture"
    """Too few keypoints to decide anything (blur, distance, mostly background)."""


# --- the index --------------------------------------------------------------------------------


@dataclass
class EnrolledChip:
    chip_id: int
    individual_id: str
    features: ChipFeatures


class DescriptorIndex:
    """Every descriptor of every enrolled chip, searchable by approximate k-NN.

    Thread-safe for one writer and many readers (a lock around add/rebuild/query).
    """

    def __init__(self, config: MatcherConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self._lock = threading.RLock()
        self.chips: dict[int, EnrolledChip] = {}
        self._main_desc = np.zeros((0, 128), np.float32)
        self._main_owner = np.zeros(0, np.int64)  # chip id per descriptor
        self._main_kp = np.zeros(0, np.int32)  # keypoint index within its chip
        self._flann: cv2.flann.Index | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_desc = np.zeros((0, 128), np.float32)
        self._pending_owner = np.zeros(0, np.int64)
        self._pending_kp = np.zeros(0, np.int32)
        self.rebuilds = 0

    # -- contents ----------------------------------------------------------------------------

    @property
    def n_descriptors(self) -> int:
        return len(self._main_desc) + len(self._pending_desc)

    @property
    def n_pending(self) -> int:
        return len(self._pending_desc)

    def individuals(self) -> set[str]:
        return {chip.individual_id for chip in self.chips.values()}

    def add(self, chips: Iterable[EnrolledChip], *, rebuild: bool | None = None) -> None:
        """Add enrolled chips; they are searchable at once (pending set or rebuilt trees)."""
        with self._lock:
            for chip in chips:
                if chip.chip_id in self.chips:
                    continue
                self.chips[chip.chip_id] = chip
                n = len(chip.features)
                if n == 0:
                    continue
                self._pending.append(
                    (
                        chip.features.descriptors.astype(np.float32),
                        np.full(n, chip.chip_id, np.int64),
                        np.arange(n, dtype=np.int32),
                    )
                )
            if self._pending:
                self._pending_desc = np.concatenate(
                    [self._pending_desc] + [p[0] for p in self._pending]
                )
                self._pending_owner = np.concatenate(
                    [self._pending_owner] + [p[1] for p in self._pending]
                )
                self._pending_kp = np.concatenate(
                    [self._pending_kp] + [p[2] for p in self._pending]
                )
                self._pending = []
            limit = max(
                self.config.rebuild_min, self.config.rebuild_fraction * len(self._main_desc)
            )
            if rebuild or (rebuild is None and len(self._pending_desc) > limit):
                self._rebuild()

    def _rebuild(self) -> None:
        self._main_desc = np.ascontiguousarray(
            np.concatenate([self._main_desc, self._pending_desc]), dtype=np.float32
        )
        self._main_owner = np.concatenate([self._main_owner, self._pending_owner])
        self._main_kp = np.concatenate([self._main_kp, self._pending_kp])
        self._pending_desc = np.zeros((0, 128), np.float32)
        self._pending_owner = np.zeros(0, np.int64)
        self._pending_kp = np.zeros(0, np.int32)
        self._flann = None
        if len(self._main_desc):
            params = {"algorithm": 1, "trees": self.config.flann_trees}  # FLANN_INDEX_KDTREE
            self._flann = cv2.flann.Index(self._main_desc, params)
        self.rebuilds += 1

    # -- search ------------------------------------------------------------------------------

    def knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distances, owner chip ids, keypoint indices), each Q x k, nearest first.

        Missing neighbours (a database smaller than k) have distance inf and owner -1.
        """
        with self._lock:
            parts_d, parts_o, parts_k = [], [], []
            if self._flann is not None and len(self._main_desc):
                kk = min(k, len(self._main_desc))
                idx, dist = self._flann.knnSearch(
                    queries, kk, params={"checks": self.config.flann_checks}
                )
                idx = idx.astype(np.int64)
                valid = idx >= 0
                idx = np.where(valid, idx, 0)
                d = np.where(valid, np.sqrt(np.maximum(dist, 0.0)), np.inf)
                parts_d.append(d)
                parts_o.append(np.where(valid, self._main_owner[idx], -1))
                parts_k.append(self._main_kp[idx])
            if len(self._pending_desc):
                kk = min(k, len(self._pending_desc))
                d2 = (
                    (queries**2).sum(1)[:, None]
                    + (self._pending_desc**2).sum(1)[None, :]
                    - 2.0 * queries @ self._pending_desc.T
                )
                idx = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
                dd = np.take_along_axis(d2, idx, axis=1)
                parts_d.append(np.sqrt(np.maximum(dd, 0.0)))
                parts_o.append(self._pending_owner[idx])
                parts_k.append(self._pending_kp[idx])
        q = len(queries)
        if not parts_d:
            return (
                np.full((q, k), np.inf, np.float32),
                np.full((q, k), -1, np.int64),
                np.zeros((q, k), np.int32),
            )
        d = np.concatenate(parts_d, axis=1)
        o = np.concatenate(parts_o, axis=1)
        kp = np.concatenate(parts_k, axis=1)
        if d.shape[1] < k:
            pad = k - d.shape[1]
            d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.inf)
            o = np.pad(o, ((0, 0), (0, pad)), constant_values=-1)
            kp = np.pad(kp, ((0, 0), (0, pad)))
        order = np.argsort(d, axis=1)[:, :k]
        return (
            np.take_along_axis(d, order, axis=1),
            np.take_along_axis(o, order, axis=1),
            np.take_along_axis(kp, order, axis=1),
        )


# --- scoring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    individual_id: str
    score: float
    """Verified score: LNBNN of the RANSAC inliers (0 when not verified)."""
    raw_score: float
    """LNBNN score summed over all of the query's descriptors, before verification."""
    inliers: int
    chip_id: int | None
    mirrored: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "individual_id": self.individual_id,
            "score": round(self.score, 4),
            "raw_score": round(self.raw_score, 4),
            "inliers": self.inliers,
            "chip_id": self.chip_id,
            "mirrored": self.mirrored,
        }


@dataclass(frozen=True)
class MatchResult:
    decision: Decision
    candidates: list[Candidate]
    n_keypoints: int
    seconds: float
    config_version: str

    @property
    def individual_id(self) -> str | None:
        if self.decision is Decision.KNOWN and self.candidates:
            return self.candidates[0].individual_id
        return None

    @property
    def top_score(self) -> float:
        return self.candidates[0].score if self.candidates else 0.0


@dataclass
class _Side:
    """Scores and correspondences of one orientation of the query."""

    features: ChipFeatures
    mirrored: bool
    scores: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # individual -> chip id -> list of (query kp index, db kp index, lnbnn weight)
    matches: dict[str, dict[int, list[tuple[int, int, float]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )


def _lnbnn(side: _Side, index: DescriptorIndex, config: MatcherConfig) -> None:
    k = config.knn
    dist, owner, kps = index.knn(side.features.descriptors, k + 1)
    norm = dist[:, k]
    chips = index.chips
    for qi in range(len(dist)):
        normaliser = norm[qi]
        if not np.isfinite(normaliser):
            normaliser = dist[qi][np.isfinite(dist[qi])].max(initial=0.0)
        seen: set[str] = set()
        for j in range(k):
            chip_id = int(owner[qi, j])
            if chip_id < 0:
                break
            weight = float(normaliser - dist[qi, j])
            if weight <= 0:
                continue
            individual = chips[chip_id].individual_id
            if individual in seen:  # one vote per individual per query descriptor
                continue
            seen.add(individual)
            side.scores[individual] += weight
            side.matches[individual][chip_id].append((qi, int(kps[qi, j]), weight))


def _verify(
    side: _Side, individual: str, index: DescriptorIndex, config: MatcherConfig
) -> tuple[float, int, int | None]:
    """RANSAC similarity per enrolled chip of `individual`; the best (score, inliers, chip)."""
    best: tuple[float, int, int | None] = (0.0, 0, None)
    query_kp = side.features.keypoints
    for chip_id, pairs in side.matches.get(individual, {}).items():
        if len(pairs) < max(3, config.min_inliers):
            continue
        enrolled = index.chips[chip_id].features
        src = np.array([query_kp[q, :2] for q, _, _ in pairs], np.float32)
        dst = np.array([enrolled.keypoints[d, :2] for _, d, _ in pairs], np.float32)
        weights = np.array([w for _, _, w in pairs], np.float32)
        diagonal = float(np.hypot(enrolled.width, enrolled.height))
        _, mask = cv2.estimateAffinePartial2D(
            src,
            dst,
            method=cv2.RANSAC,
            ransacReprojThreshold=config.ransac_threshold * diagonal,
            maxIters=500,
            confidence=0.99,
        )
        if mask is None:
            continue
        inlier = mask.ravel().astype(bool)
        n = int(inlier.sum())
        if n < config.min_inliers:
            continue
        score = float(weights[inlier].sum())
        if score > best[0]:
            best = (score, n, chip_id)
    return best


def match_features(
    sides: Sequence[tuple[ChipFeatures, bool]],
    index: DescriptorIndex,
    config: MatcherConfig = DEFAULT_CONFIG,
) -> tuple[Decision, list[Candidate], int]:
    """Score (features, mirrored) query orientations against the index."""
    n_keypoints = max((len(f) for f, _ in sides), default=0)
    if n_keypoints < config.min_keypoints:
        return Decision.NOT_ENOUGH_TEXTURE, [], n_keypoints
    if not index.chips:
        return Decision.NEW, [], n_keypoints
    scored: list[_Side] = []
    for features, mirrored in sides:
        side = _Side(features, mirrored)
        _lnbnn(side, index, config)
        scored.append(side)
    # Best orientation per individual by raw score; shortlist by that.
    raw: dict[str, tuple[float, _Side]] = {}
    for side in scored:
        for individual, score in side.scores.items():
            if individual not in raw or score > raw[individual][0]:
                raw[individual] = (score, side)
    ranked = sorted(raw.items(), key=lambda item: -item[1][0])
    candidates: list[Candidate] = []
    for individual, (raw_score, _) in ranked[: config.shortlist]:
        best = Candidate(individual, 0.0, raw_score, 0, None, False)
        for side in scored:
            score, inliers, chip_id = _verify(side, individual, index, config)
            if score > best.score:
                best = Candidate(individual, score, raw_score, inliers, chip_id, side.mirrored)
        candidates.append(best)
    candidates.sort(key=lambda c: (-c.score, -c.raw_score))
    for individual, (raw_score, _) in ranked[config.shortlist : config.top_k]:
        candidates.append(Candidate(individual, 0.0, raw_score, 0, None, False))
    candidates = candidates[: config.top_k]
    top = candidates[0] if candidates else None
    known = top is not None and top.score >= config.known_threshold
    return (Decision.KNOWN if known else Decision.NEW), candidates, n_keypoints


def query_sides(
    image: np.ndarray, config: MatcherConfig = DEFAULT_CONFIG
) -> list[tuple[ChipFeatures, bool]]:
    """The query's orientations: the chip, and its mirror when `config.mirror`."""
    chip = normalise_chip(image, config)
    sides = [(extract_chip(chip, config), False)]
    if config.mirror:
        sides.append((extract_chip(np.ascontiguousarray(chip[:, ::-1]), config), True))
    return sides


def match_image(
    image: np.ndarray, index: DescriptorIndex, config: MatcherConfig | None = None
) -> MatchResult:
    """Identify the leopard in a crop (RGB uint8) against the enrolled individuals."""
    config = config or index.config
    started = time.perf_counter()
    decision, candidates, n_keypoints = match_features(query_sides(image, config), index, config)
    return MatchResult(
        decision, candidates, n_keypoints, time.perf_counter() - started, config.version
    )
