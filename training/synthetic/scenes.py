"""Scenes: what a fixed trap camera sees when no animal is there.

A camera id fixes its scene (terrain, horizon, boulders), as a real trap is strapped to one
rock for a season; each frame then varies the light (exposure, colour temperature, cloud
shadows). Night frames are infrared: greyscale, lit by the camera's flash, which falls off
towards the corners and lights near things brighter, with sensor noise.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from snowtrap.training.synthetic.noise import fbm, jitter_colour, rng_for, smoothstep

__all__ = [
    "TERRAINS",
    "camera_scene",
    "infrared",
    "light_frame",
    "real_scene",
    "terrain_of",
]

TERRAINS: tuple[str, ...] = ("rock", "snow", "grass", "scree")

_GROUND: dict[str, tuple[float, float, float]] = {
    "rock": (128, 119, 106),
    "snow": (220, 224, 230),
    "grass": (140, 134, 82),
    "scree": (142, 137, 130),
}


def terrain_of(camera_id: str) -> str:
    """The terrain a camera looks at (fixed by its id)."""
    return TERRAINS[int(rng_for("terrain", camera_id).integers(len(TERRAINS)))]


def _ground(rng: np.random.Generator, terrain: str, height: int, width: int) -> np.ndarray:
    base = jitter_colour(rng, _GROUND[terrain], 0.15 if terrain != "snow" else 0.05)
    large = fbm(rng, height, width, cell=height / 3, octaves=4)
    fine = fbm(rng, height, width, cell=6.0, octaves=3, anisotropy=3.0 if terrain == "grass" else 1)
    spread = {"rock": 0.16, "snow": 0.05, "grass": 0.12, "scree": 0.1}[terrain]
    shade = 1.0 + spread * large + 0.5 * spread * fine
    ground = base[None, None, :] * shade[..., None]
    if terrain == "snow":  # dark rock showing through the snow
        patches = smoothstep(1.0, 1.4, fbm(rng, height, width, cell=height / 6, octaves=4))
        rock = jitter_colour(rng, (98, 92, 85), 0.15)
        ground = ground * (1 - patches[..., None]) + rock * patches[..., None]
    if terrain == "scree":  # pebbles: small irregular light and dark stones
        count = int(height * width / 900)
        stones = np.zeros((height, width), np.float32)
        for _ in range(count):
            centre = (int(rng.integers(width)), int(rng.integers(height)))
            axes = (int(rng.integers(2, 7)), int(rng.integers(2, 5)))
            value = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.25))
            cv2.ellipse(stones, centre, axes, float(rng.uniform(0, 180)), 0, 360, value, -1)
        ground = ground * (1.0 + stones[..., None])
    return ground


def _boulders(rng: np.random.Generator, scene: np.ndarray, top: int) -> None:
    """A few shaded boulders standing on the ground (drawn in place)."""
    height, width = scene.shape[:2]
    for _ in range(int(rng.integers(1, 5))):
        cx = int(rng.integers(0, width))
        cy = int(rng.integers(top + (height - top) // 4, height))
        rx = int(rng.uniform(0.05, 0.2) * width)
        ry = int(rx * rng.uniform(0.4, 0.8))
        mask = np.zeros((height, width), np.float32)
        cv2.ellipse(mask, (cx, cy), (rx, ry), float(rng.uniform(-15, 15)), 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), 1.5)
        colour = jitter_colour(rng, (120, 113, 104), 0.22)
        yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
        rel = np.clip((yy * height - (cy - ry)) / max(2 * ry, 1), 0.0, 1.0)
        light = 1.15 - 0.45 * rel  # lit from above, dark at the foot
        texture = 1.0 + 0.12 * fbm(rng, height, width, cell=max(4.0, rx / 4), octaves=4)
        rock = colour[None, None, :] * (light * texture)[..., None]
        scene[:] = scene * (1 - mask[..., None]) + rock * mask[..., None]


@lru_cache(maxsize=32)
def camera_scene(camera_id: str, width: int, height: int) -> tuple[np.ndarray, int]:
    """(RGB float32 scene, horizon row) for a camera; read-only, cached."""
    rng = rng_for("scene", camera_id, width, height)
    terrain = terrain_of(camera_id)
    horizon = int(height * rng.uniform(0.0, 0.3)) if rng.random() < 0.7 else 0
    scene = _ground(rng, terrain, height, width)
    if horizon > 0:
        sky_top = jitter_colour(rng, (140, 168, 205), 0.1)
        sky_low = jitter_colour(rng, (208, 215, 222), 0.06)
        t = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
        scene[:horizon] = sky_top * (1 - t) + sky_low * t
        ridge = horizon + (fbm(rng, 1, width, cell=width / 6, octaves=3)[0] * height * 0.03)
        rows = np.arange(height, dtype=np.float32)[:, None]
        under = smoothstep(-1.0, 1.0, rows - ridge[None, :])
        ground = _ground(rng, terrain, height, width) * 0.85
        scene = scene * (1 - under[..., None]) + ground * under[..., None]
    _boulders(rng, scene, horizon)
    scene = np.clip(scene, 0, 255).astype(np.float32)
    scene.setflags(write=False)
    return scene, horizon


@lru_cache(maxsize=8)
def _real_photo(path: str, max_side: int) -> np.ndarray:
    """A real photograph as float32 RGB, shrunk to at most `max_side` (cached: bursts reuse it)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        photo = ImageOps.exif_transpose(image).convert("RGB")
        photo.thumbnail((max_side, max_side), Image.Resampling.BOX)
        rgb = np.asarray(photo, dtype=np.float32)
    rgb.setflags(write=False)
    return rgb


def real_scene(path: str, width: int, height: int, seed: int) -> tuple[np.ndarray, int]:
    """(RGB float32 scene, horizon row) cut from a real photograph: a crop of the frame's shape
    covering 50-100% of the photo's width, mirrored half the time, chosen by `seed`.

    Real backgrounds keep the classifier from learning the generator's terrain instead of the
    animal. The horizon is unknown, so animals stand in the lower three quarters.
    """
    rng = rng_for("real-scene", seed)
    photo = _real_photo(path, 2 * max(width, height))
    rows, cols = photo.shape[:2]
    aspect = width / height
    crop_w = min(cols, rows * aspect) * rng.uniform(0.5, 1.0)
    crop_h = crop_w / aspect
    x0 = int(rng.uniform(0, cols - crop_w + 1))
    y0 = int(rng.uniform(0, rows - crop_h + 1))
    crop = photo[y0 : y0 + int(crop_h), x0 : x0 + int(crop_w)]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    scene = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_AREA)
    return scene.astype(np.float32), int(height * 0.25)


def light_frame(rng: np.random.Generator, scene: np.ndarray) -> np.ndarray:
    """The day light of one frame: exposure, colour temperature, drifting cloud shadows."""
    height, width = scene.shape[:2]
    exposure = rng.uniform(0.8, 1.12)
    warmth = rng.uniform(-0.06, 0.06)
    tint = np.array([1.0 + warmth, 1.0, 1.0 - warmth], np.float32)
    clouds = 1.0 + 0.1 * fbm(rng, height, width, cell=width / 2.5, octaves=2)
    return scene * (exposure * clouds)[..., None] * tint


def infrared(rng: np.random.Generator, rgb: np.ndarray, near: np.ndarray) -> np.ndarray:
    """A night IR frame from the day rendering: flash falloff, greyscale, noise.

    `near` (HxW, 0..1) is how close each pixel is to the flash (animals, the ground below).
    """
    height, width = rgb.shape[:2]
    grey = rgb @ np.array([0.33, 0.45, 0.22], np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / width) ** 2 + ((yy - height * 0.6) / height) ** 2
    flash = rng.uniform(0.75, 1.05) * np.exp(-r2 * rng.uniform(2.0, 3.5))
    lit = grey * flash * (0.7 + 0.45 * near)
    lit = lit + rng.normal(0.0, rng.uniform(3.0, 7.0), lit.shape).astype(np.float32)
    lit = np.clip(lit, 0, 255)
    return np.repeat(lit[..., None], 3, axis=2)
