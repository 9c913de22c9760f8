"""Coats: the texture an animal wears, painted in body units and cached per individual.

A snow leopard's coat is a pale smoky ground with open dark rosettes on the flanks and solid
spots on head and legs; the layout is a pure function of the individual id, so `SL-007` wears
the same rosettes in every frame, day or night, at any scale or pose (what re-identification
needs). Distractor species wear plain fur with soft shading and no spots: the classifier has
to look at the pattern, not at "a four-legged thing".

A coat is an RGB float32 image covering the body-unit window `COAT_WINDOW` at
`COAT_PX_PER_UNIT`; `coat_to_body` gives the affine map from coat pixels to body units.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from snowtrap.training.synthetic.bodies import LEOPARD, SPOTTED_CAT
from snowtrap.training.synthetic.noise import fbm, jitter_colour, rng_for

__all__ = [
    "COAT_PX_PER_UNIT",
    "COAT_WINDOW",
    "body_to_coat",
    "distractor_coat",
    "leopard_coat",
]

COAT_WINDOW = (-2.2, -1.6, 1.4, 1.0)  # x0, y0, x1, y1 in body units (tail, horns, legs fit)
COAT_PX_PER_UNIT = 160


def body_to_coat() -> np.ndarray:
    """3x3 affine: body units -> coat pixels."""
    x0, y0, _, _ = COAT_WINDOW
    s = float(COAT_PX_PER_UNIT)
    return np.array([[s, 0.0, -x0 * s], [0.0, s, -y0 * s], [0.0, 0.0, 1.0]])


def _coat_shape() -> tuple[int, int]:
    x0, y0, x1, y1 = COAT_WINDOW
    return round((y1 - y0) * COAT_PX_PER_UNIT), round((x1 - x0) * COAT_PX_PER_UNIT)


def _body_grid() -> tuple[np.ndarray, np.ndarray]:
    height, width = _coat_shape()
    x0, y0, _, _ = COAT_WINDOW
    ys = y0 + (np.arange(height, dtype=np.float32) + 0.5) / COAT_PX_PER_UNIT
    xs = x0 + (np.arange(width, dtype=np.float32) + 0.5) / COAT_PX_PER_UNIT
    return np.meshgrid(xs, ys)


def _fur(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Fine streaky fur variation, standardised."""
    return fbm(rng, height, width, cell=6.0, octaves=3, anisotropy=3.0)


def _belly_shading(by: np.ndarray, strength: float) -> np.ndarray:
    """Lighter under the body, darker along the spine (countershading)."""
    return 1.0 + strength * np.tanh(by * 4.0)


@lru_cache(maxsize=256)
def leopard_coat(individual_id: str) -> np.ndarray:
    """This individual's coat (read-only; cached): rosettes fixed by the id."""
    rng = rng_for("coat", LEOPARD, individual_id)
    return _spotted_coat(rng, jitter_colour(rng, (196, 190, 177), 0.08))


def _spotted_coat(rng: np.random.Generator, ground: np.ndarray) -> np.ndarray:
    """Rosettes on the torso, solid spots elsewhere, on a `ground` colour (read-only)."""
    height, width = _coat_shape()
    _, by = _body_grid()
    tint = 1.0 + 0.05 * fbm(rng, height, width, cell=60.0, octaves=3)
    fur = 1.0 + 0.035 * _fur(rng, height, width)
    shade = (tint * fur * _belly_shading(by, 0.12))[..., None]
    coat = ground[None, None, :] * shade

    ink = np.zeros((height, width), np.float32)
    fill = np.zeros((height, width), np.float32)
    px = COAT_PX_PER_UNIT
    # Rosettes on a jittered grid over the torso/tail band; solid spots elsewhere.
    spacing = rng.uniform(0.13, 0.16)
    y_off = rng.uniform(0.0, spacing)
    for row, cy in enumerate(np.arange(-1.5 + y_off, 0.95, spacing * 0.87)):
        shift = (row % 2) * spacing / 2 + rng.uniform(0.0, spacing)
        for cx in np.arange(-2.15 + shift, 1.35, spacing):
            x = cx + rng.normal(0.0, spacing * 0.18)
            y = cy + rng.normal(0.0, spacing * 0.18)
            on_torso = abs(y) < 0.3 and -0.6 < x < 0.55
            radius = spacing * rng.uniform(0.28, 0.42) * (1.0 if on_torso else 0.7)
            centre = (round((x - COAT_WINDOW[0]) * px), round((y - COAT_WINDOW[1]) * px))
            r_px = max(2, round(radius * px))
            if on_torso and rng.random() < 0.85:
                # Open rosette: 3-6 dark blobs on a ring around a slightly darker centre.
                cv2.circle(fill, centre, r_px, 1.0, -1, lineType=cv2.LINE_AA)
                blobs = int(rng.integers(3, 7))
                start = rng.uniform(0.0, 2 * np.pi)
                gaps = rng.uniform(0.7, 1.0, blobs)
                angles = start + np.cumsum(gaps / gaps.sum() * 2 * np.pi)
                for angle in angles:
                    length = int(rng.uniform(0.45, 0.7) * r_px)
                    ax = (max(1, length), max(1, int(rng.uniform(0.3, 0.45) * r_px)))
                    cxy = (
                        round(centre[0] + r_px * np.cos(angle)),
                        round(centre[1] + r_px * np.sin(angle)),
                    )
                    cv2.ellipse(
                        ink, cxy, ax, float(np.degrees(angle) + 90), 0, 360, 1.0, -1, cv2.LINE_AA
                    )
            else:
                r_spot = max(2, round(r_px * rng.uniform(0.4, 0.65)))
                cv2.circle(ink, centre, r_spot, 1.0, -1, lineType=cv2.LINE_AA)
    ink = cv2.GaussianBlur(ink, (0, 0), 1.0)
    fill = cv2.GaussianBlur(fill, (0, 0), 2.0)
    darkness = np.clip(0.9 * ink, 0.0, 0.85)[..., None]
    coat = coat * (1.0 - 0.18 * fill[..., None])
    ink_colour = jitter_colour(rng, (48, 45, 42), 0.2)
    coat = coat * (1.0 - darkness) + ink_colour * darkness
    coat.setflags(write=False)
    return coat


_DISTRACTOR_COLOURS: dict[str, tuple[float, float, float]] = {
    "ibex": (142, 120, 94),
    "blue_sheep": (140, 136, 132),
    "fox": (175, 102, 55),
    "marmot": (172, 130, 75),
}


@lru_cache(maxsize=64)
def distractor_coat(species: str, seed: int) -> np.ndarray:
    """Plain fur for a non-leopard animal: a base colour, countershading, streaks; no spots.
    The spotted cat wears the leopard's pattern on a golden ground."""
    rng = rng_for("coat", species, seed)
    if species == SPOTTED_CAT:
        return _spotted_coat(rng, jitter_colour(rng, (200, 150, 80), 0.15))
    height, width = _coat_shape()
    _, by = _body_grid()
    ground = jitter_colour(rng, _DISTRACTOR_COLOURS[species], 0.15)
    shade = 1.0 + 0.06 * fbm(rng, height, width, cell=50.0, octaves=3)
    shade = shade * (1.0 + 0.04 * _fur(rng, height, width)) * _belly_shading(by, 0.22)
    coat = ground[None, None, :] * shade[..., None]
    coat.setflags(write=False)
    return coat
