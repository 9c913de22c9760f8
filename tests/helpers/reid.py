"""Leopard crops for the re-identification tests, cut from rendered synthetic frames."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from snowtrap.training.synthetic import AnimalSpec, FrameSpec, render_trap_frame

MARGIN = 0.15


@lru_cache(maxsize=256)
def leopard_crop(
    individual: str, seed: int, night: bool = False, camera: str = "C101"
) -> np.ndarray:
    """The box of `individual` in one rendered frame plus the worker's 15 % margin (RGB)."""
    frame = render_trap_frame(
        FrameSpec(camera, seed, 0, night=night, animals=(AnimalSpec("snow_leopard", individual),))
    )
    x, y, w, h = frame.animals[0].box
    mx, my = int(MARGIN * w), int(MARGIN * h)
    height, width = frame.rgb.shape[:2]
    crop = frame.rgb[
        max(0, y - my) : min(height, y + h + my), max(0, x - mx) : min(width, x + w + mx)
    ]
    crop.setflags(write=False)
    return crop
