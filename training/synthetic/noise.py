"""Seeds and noise: the deterministic raw material of every synthetic texture.

Everything random in the generator draws from a `numpy.random.Generator` whose seed is
derived by hashing names (`derive_seed("coat", "SL-007")`), never from global state, so a
frame, a coat or a camera scene is a pure function of its key and comes out bit-for-bit the
same on every run.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

__all__ = [
    "derive_seed",
    "fbm",
    "jitter_colour",
    "periodic_fbm",
    "rng_for",
    "smoothstep",
    "standardise",
    "value_noise",
]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts: stable across runs, platforms and Python hash seeds."""
    text = "\x1f".join(repr(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def rng_for(*parts: object) -> np.random.Generator:
    """A generator keyed by names, so unrelated draws never shift each other."""
    return np.random.default_rng(derive_seed(*parts))


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at edge0 to 1 at edge1 (soft material boundaries)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def standardise(field: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread: thresholds can then be given in standard deviations."""
    field = field - field.mean(dtype=np.float64)
    spread = float(field.std(dtype=np.float64))
    return (field / (spread if spread > 1e-12 else 1.0)).astype(np.float32)


def value_noise(
    rng: np.random.Generator, height: int, width: int, cell_y: float, cell_x: float | None = None
) -> np.ndarray:
    """Smooth random field in [~0, ~1]: a random lattice with one value per cell, upsampled.

    `cell_x` different from `cell_y` gives streaks (grass blades, fur).
    """
    cell_x = cell_y if cell_x is None else cell_x
    grid_h = max(2, int(np.ceil(height / max(cell_y, 1e-6))) + 1)
    grid_w = max(2, int(np.ceil(width / max(cell_x, 1e-6))) + 1)
    grid = rng.random((grid_h, grid_w), dtype=np.float32)
    if grid_h >= height and grid_w >= width:
        return grid[:height, :width].copy()
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def fbm(
    rng: np.random.Generator,
    height: int,
    width: int,
    cell: float,
    octaves: int = 5,
    gain: float = 0.5,
    anisotropy: float = 1.0,
) -> np.ndarray:
    """Fractal (multi-octave) value noise, standardised: natural terrain-like variation."""
    total = np.zeros((height, width), np.float32)
    amplitude = 1.0
    for _ in range(octaves):
        total += amplitude * value_noise(rng, height, width, cell, cell * anisotropy)
        amplitude *= gain
        cell /= 2.0
        if cell < 0.75:
            break
    return standardise(total)


def _periodic_value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise on a torus: tiles without seams (ground textures repeat towards the horizon)."""
    cells = max(2, min(cells, size))
    factor = max(1, size // cells)
    cells = size // factor
    grid = rng.random((cells, cells), dtype=np.float32)
    padded = np.pad(grid, 2, mode="wrap")
    up = cv2.resize(
        padded, (padded.shape[1] * factor, padded.shape[0] * factor), interpolation=cv2.INTER_CUBIC
    )
    start = 2 * factor
    return up[start : start + size, start : start + size]


def periodic_fbm(
    rng: np.random.Generator, size: int, cells: int, octaves: int = 5, gain: float = 0.5
) -> np.ndarray:
    """Seamless square fBm, standardised; `cells` lattice cells across the lowest octave."""
    total = np.zeros((size, size), np.float32)
    amplitude = 1.0
    for _ in range(octaves):
        if cells > size // 2:
            break
        total += amplitude * _periodic_value_noise(rng, size, cells)
        amplitude *= gain
        cells *= 2
    return standardise(total)


def jitter_colour(
    rng: np.random.Generator, rgb: tuple[float, float, float], brightness: float, hue: float = 0.03
) -> np.ndarray:
    """A colour near `rgb`: one brightness factor for all channels plus a small tint.

    Drawing channels independently would give pink rocks and purple sheep.
    """
    factor = rng.uniform(1.0 - brightness, 1.0 + brightness)
    tint = rng.uniform(1.0 - hue, 1.0 + hue, 3)
    return (np.asarray(rgb, np.float32) * factor * tint).astype(np.float32)
