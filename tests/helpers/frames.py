"""Small synthetic camera-trap frames with ground truth, for the worker's tests.

Rocky day scenes and infrared night frames, some with a spotted cat (pale coat, dark rosettes,
long tail) whose box is known exactly. Every JPEG carries EXIF DateTimeOriginal *and* a GPS
position, like a real trap camera: a crop that leaked metadata would leak the location.

`training.synthetic` is the project's full generator; these frames stay deliberately simple and
fast so unit tests and the end-to-end test can make hundreds of them in a second or two.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

EXIF_IFD = 0x8769
GPS_IFD = 0x8825
DATETIME_ORIGINAL = 0x9003


@dataclass(frozen=True)
class Frame:
    """One frame and its truth: leopard box in normalised (x, y, w, h), or None."""

    name: str
    jpeg: bytes
    box: tuple[float, float, float, float] | None
    is_night: bool
    capture_time: datetime

    @property
    def has_leopard(self) -> bool:
        return self.box is not None


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Rock and scree: a vertical tint gradient plus blurred noise at two scales."""
    base = np.array(rng.uniform([110, 100, 85], [170, 160, 150]), dtype=np.float32)
    rows = np.linspace(-25, 25, height, dtype=np.float32)[:, None, None]
    coarse = rng.normal(0, 22, (height // 16 + 2, width // 16 + 2)).astype(np.float32)
    coarse = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]
    fine = rng.normal(0, 10, (height, width, 1)).astype(np.float32)
    return base + rows + coarse + fine


def _paint_leopard(rng: np.random.Generator, rgb: np.ndarray) -> tuple[float, float, float, float]:
    """A pale spotted body with a tail; returns its exact normalised box."""
    height, width = rgb.shape[:2]
    body_w = int(rng.uniform(0.22, 0.38) * width)
    body_h = int(body_w * rng.uniform(0.45, 0.6))
    cx = int(rng.uniform(0.25, 0.75) * width)
    cy = int(rng.uniform(0.4, 0.75) * height)
    yy, xx = np.mgrid[0:height, 0:width]
    body = ((xx - cx) / (body_w / 2)) ** 2 + ((yy - cy) / (body_h / 2)) ** 2 <= 1.0
    tail_y = cy + int(body_h * 0.15)
    tail_x0 = cx + body_w // 2 - 4
    tail_len = int(body_w * 0.5)
    tail = (
        (xx >= tail_x0) & (xx < tail_x0 + tail_len) & (np.abs(yy - tail_y) <= max(3, body_h // 10))
    )
    animal = body | tail
    coat = np.array([205, 200, 190], dtype=np.float32) + rng.normal(0, 6, (height, width, 1))
    rgb[animal] = coat[animal]
    spots = np.zeros_like(animal)
    for _ in range(int(body_w * body_h / 180)):
        sy = int(rng.integers(cy - body_h // 2, cy + body_h // 2))
        sx = int(rng.integers(cx - body_w // 2, tail_x0 + tail_len))
        radius = rng.uniform(2.0, 4.5)
        top, left = max(sy - 5, 0), max(sx - 5, 0)
        window = (yy[top : sy + 6, left : sx + 6] - sy) ** 2 + (
            xx[top : sy + 6, left : sx + 6] - sx
        ) ** 2 <= radius**2
        spots[top : sy + 6, left : sx + 6] |= window
    rgb[spots & animal] = np.array([45, 40, 38], dtype=np.float32)
    ys, xs = np.nonzero(animal)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return (
        float(x0 / width),
        float(y0 / height),
        float((x1 - x0) / width),
        float((y1 - y0) / height),
    )


def trap_jpeg(rgb: np.ndarray, when: datetime, quality: int = 88) -> bytes:
    """JPEG bytes with EXIF DateTimeOriginal and a GPS position (as trap cameras write)."""
    image = Image.fromarray(rgb)
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = when.strftime("%Y:%m:%d %H:%M:%S")
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[2] = "N", (27.0, 59.0, 17.0)  # GPSLatitudeRef, GPSLatitude
    gps[3], gps[4] = "E", (86.0, 55.0, 31.0)  # GPSLongitudeRef, GPSLongitude
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, exif=exif.tobytes())
    return out.getvalue()


def make_frame(
    seed: int, *, leopard: bool, night: bool, size: tuple[int, int] = (640, 480)
) -> Frame:
    """One deterministic frame; `size` is (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    rgb = _scene(rng, height, width)
    box = _paint_leopard(rng, rgb) if leopard else None
    if night:  # infrared: greyscale, flat and a little brighter in the middle (the flash)
        grey = rgb.mean(axis=2, keepdims=True) * 0.8
        yy, xx = np.mgrid[0:height, 0:width]
        falloff = 1.2 - 0.6 * (((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2)
        rgb = np.repeat(grey * falloff[..., None], 3, axis=2)
    pixels = np.clip(rgb, 0, 255).astype(np.uint8)
    when = datetime(2025, 1, 1, 6, 0, 0) + timedelta(minutes=7 * seed)
    kind = ("leopard" if leopard else "empty") + ("_night" if night else "")
    return Frame(f"{seed:05d}_{kind}.jpg", trap_jpeg(pixels, when), box, night, when)


def make_frames(
    count: int,
    seed: int,
    *,
    leopard_rate: float = 0.3,
    night_rate: float = 0.25,
    size: tuple[int, int] = (640, 480),
) -> list[Frame]:
    """`count` frames with the given shares of leopards and night frames (deterministic)."""
    rng = np.random.default_rng(seed)
    leopards = rng.permutation(count) < round(count * leopard_rate)
    nights = rng.permutation(count) < round(count * night_rate)
    return [
        make_frame(seed * 100_000 + i, leopard=bool(leopards[i]), night=bool(nights[i]), size=size)
        for i in range(count)
    ]


def write_frames(frames: list[Frame], folder: Path) -> list[Path]:
    """Write the frames as files named after them; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for frame in frames:
        path = folder / frame.name
        path.write_bytes(frame.jpeg)
        paths.append(path)
    return paths
