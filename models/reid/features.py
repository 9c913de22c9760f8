"""Chips and their features, as HotSpotter matches them (steps 1 and 2 of `matching`).

1. chip normalisation: greyscale (night frames are infrared greyscale anyway), resized to a
   fixed pixel area whatever the crop size, contrast-equalised with CLAHE;
2. features: OpenCV SIFT keypoints, descriptors turned into RootSIFT (L1-normalise, square
   root), so Euclidean distance compares them as the Hellinger kernel would.

`MatcherConfig` is the whole matcher's operating point; its `version` names it in outputs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass

import cv2
import numpy as np

ALGORITHM = "hotspotter-rootsift"
ALGORITHM_VERSION = 1


@dataclass(frozen=True)
class MatcherConfig:
    """The matcher's operating point; `version` names it in every output."""

    chip_area: int = 300 * 120
    """Pixels of the normalised chip (aspect ratio kept)."""
    clahe_clip: float = 2.0
    clahe_tile: int = 8
    max_features: int = 400
    """SIFT keypoints kept per chip (strongest first)."""
    contrast_threshold: float = 0.03
    min_keypoints: int = 25
    """Fewer keypoints than this: not enough texture."""
    knn: int = 4
    """k of LNBNN: neighbours scored per query descriptor (the k+1-th normalises)."""
    flann_trees: int = 4
    flann_checks: int = 48
    shortlist: int = 5
    """Candidates that go through spatial verification."""
    ransac_threshold: float = 0.06
    """RANSAC reprojection threshold, as a fraction of the chip's diagonal."""
    min_inliers: int = 6
    known_threshold: float = 4.5
    """Verified score at or above which the top candidate is a known individual."""
    top_k: int = 5
    mirror: bool = True
    """Query with the chip and its horizontal mirror."""
    rebuild_fraction: float = 0.2
    """Merge the pending set into the kd-trees once it exceeds this share of the index."""
    rebuild_min: int = 20_000

    @property
    def version(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return f"{ALGORITHM}-v{ALGORITHM_VERSION}+{digest}"


DEFAULT_CONFIG = MatcherConfig()


# --- chips and features ---------------------------------------------------------------------


def normalise_chip(image: np.ndarray, config: MatcherConfig = DEFAULT_CONFIG) -> np.ndarray:
    """RGB/BGR/grey uint8 crop -> greyscale uint8 chip of `chip_area` pixels, CLAHE applied."""
    if image.ndim == 3:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.shape[2] == 3 else image[..., 0]
    else:
        grey = image
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    height, width = grey.shape[:2]
    if height < 2 or width < 2:
        raise ValueError(f"chip of {width}x{height} pixels is too small")
    scale = (config.chip_area / float(width * height)) ** 0.5
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    chip = cv2.resize(grey, size, interpolation=interpolation)
    clahe = cv2.createCLAHE(clipLimit=config.clahe_clip, tileGridSize=(config.clahe_tile,) * 2)
    return clahe.apply(chip)


_SIFT_LOCAL = threading.local()


def _sift(config: MatcherConfig) -> cv2.SIFT:
    key = (config.max_features, config.contrast_threshold)
    cached = getattr(_SIFT_LOCAL, "sift", None)
    if cached is None or cached[0] != key:
        sift = cv2.SIFT_create(nfeatures=config.max_features, contrastThreshold=key[1])
        _SIFT_LOCAL.sift = cached = (key, sift)
    return cached[1]


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """SIFT -> RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, element-wise sqrt."""
    d = descriptors.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-7)
    return np.sqrt(d)


@dataclass(frozen=True)
class ChipFeatures:
    """Keypoints (N x 4: x, y, size, angle, in chip pixels) and RootSIFT descriptors (N x 128)."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.keypoints)


def extract_chip(chip: np.ndarray, config: MatcherConfig = DEFAULT_CONFIG) -> ChipFeatures:
    """SIFT keypoints + RootSIFT descriptors of a normalised chip."""
    keypoints, descriptors = _sift(config).detectAndCompute(chip, None)
    height, width = chip.shape[:2]
    if descriptors is None or not keypoints:
        return ChipFeatures(
            np.zeros((0, 4), np.float32), np.zeros((0, 128), np.float32), width, height
        )
    points = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in keypoints], np.float32)
    return ChipFeatures(points, root_sift(descriptors), width, height)


def extract_features(
    image: np.ndarray, config: MatcherConfig = DEFAULT_CONFIG, *, mirror: bool = False
) -> ChipFeatures:
    """Normalise a crop (optionally mirrored left-right) and extract its features."""
    chip = normalise_chip(image, config)
    if mirror:
        chip = np.ascontiguousarray(chip[:, ::-1])
    return extract_chip(chip, config)


def quantise(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (values in [0, 1]) -> uint8 for storage; `dequantise` undoes it."""
    return np.clip(np.rint(descriptors * 255.0), 0, 255).astype(np.uint8)


def dequantise(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float32) / 255.0
