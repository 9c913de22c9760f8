"""What the LIME and outline tests share: segment maps of square cells and small settings."""

from __future__ import annotations

import numpy as np

from snowtrap.training.lime import LimeSettings

COARSE_TO_FINE = LimeSettings(
    num_samples=200,
    n_segments=40,
    positive_share=0.5,
    refine_samples=150,
    refine_segments=40,
    min_region_score=0.5,
    seed=1,
)
"""Coarse to fine at test size: a few seconds a frame."""


def grid_segments(rows: int, cols: int, cell: int) -> np.ndarray:
    """A segment map of rows x cols square cells, numbered row-major."""
    ids = np.arange(rows * cols).reshape(rows, cols)
    return np.kron(ids, np.ones((cell, cell), dtype=int)).astype(np.int32)
