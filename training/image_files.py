"""Training images read from disk as the stream worker reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["read_rgb"]


def read_rgb(path: Path) -> np.ndarray:
    """A training image as (H, W, 3) uint8, upright, through the same decoder as serving."""
    from snowtrap.models.decode import decode_trap_image

    return np.asarray(decode_trap_image(Path(path).read_bytes()).rgb)
