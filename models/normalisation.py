"""Pixel normalisation constants, in one torch-free place.

The classifier graph, the exporter, the bundle manifest and the serving preprocessing all
read mean/std from here, so training and serving cannot drift apart. This module imports
neither torch nor numpy: stream workers read it through the bundle manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

__all__ = [
    "CLASSIFIER_INPUT_SIZE",
    "EFFICIENTNET_LITE_NORMALISATION",
    "IMAGENET_NORMALISATION",
    "Normalisation",
]

# EfficientNet-Lite0 is built with static 'same' padding computed for 224 x 224 inputs.
CLASSIFIER_INPUT_SIZE = 224


@dataclass(frozen=True)
class Normalisation:
    """Per-channel `(x - mean) / std`, with mean/std expressed on the `scale` value range.

    `scale` says what the raw input is before normalising: "0-255" (pixel values as they come
    out of the decoder) or "0-1" (pixels / 255). `applied_in_graph` says whether an exported
    model normalises by itself (callers feed raw pixels on `scale`) or expects it done outside.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: Literal["0-255", "0-1"] = "0-255"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    applied_in_graph: bool = False

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per channel")
        if any(not math.isfinite(s) or s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.scale not in ("0-255", "0-1"):
            raise ValueError(f"scale must be '0-255' or '0-1', got {self.scale!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")

    def on_0_255(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Mean and std rescaled to 0-255 pixel values."""
        factor = 255.0 if self.scale == "0-1" else 1.0
        mean = (self.mean[0] * factor, self.mean[1] * factor, self.mean[2] * factor)
        std = (self.std[0] * factor, self.std[1] * factor, self.std[2] * factor)
        return mean, std

    def in_graph(self, applied: bool = True) -> Normalisation:
        """The same constants, marked as applied inside (or outside) the exported graph."""
        return replace(self, applied_in_graph=applied)


# EfficientNet-Lite was trained on (pixel - 127) / 128 (MEAN_RGB / STDDEV_RGB in TensorFlow's
# efficientnet_lite_builder). Checked on the installed weights: with that input, the stem
# BatchNorm's running variance matches the observed stem activations (ratio ~0.7 on natural
# images); with ImageNet mean/std the activations are ~3.4x too wide, on 0-1 input ~5.7x too
# narrow. So ImageNet constants would be wrong for this backbone.
EFFICIENTNET_LITE_NORMALISATION = Normalisation(
    mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)
)
IMAGENET_NORMALISATION = Normalisation(
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale="0-1"
)
