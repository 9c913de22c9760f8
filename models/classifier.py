"""The leopard classifier: frozen pretrained features + a logistic-regression head.

Input contract (the same in torch and in the exported ONNX graph): float32 NCHW RGB pixel
values in 0..255, already resized to the backbone's input size (see
`models.inference.preprocess_for_classifier`). The normalisation is part of the graph, so a
serving process cannot feed the model with the wrong mean/std, and the constants travel
inside the ONNX file as well as in the bundle manifest. float32 rather than uint8 keeps one
input type for the classifier and detectors and lets LIME feed perturbed (averaged) pixels.

Outputs: `leopard_probability` (N,), and with `emit_features=True` also `features`
(N, feature_dim), the pooled backbone features the head was fitted on (for LIME and debugging).

The pretrained network already knows "snow leopard" (ImageNet class 289). `ImageNetPrior`
turns the pooled features into that class's log-odds with the backbone's own ImageNet layer;
the classifier's logit is `head(features) + prior_weight * prior_logit`. With a zero head and
weight 1 it is the untouched pretrained network (the zero-shot bundle); training fits the head
as a correction on top of the prior, so field accuracy starts from what ImageNet taught.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from snowtrap.models.backbone import FeatureExtractor, build_feature_extractor
from snowtrap.models.normalisation import Normalisation

__all__ = [
    "FEATURES_OUTPUT",
    "PIXELS_INPUT",
    "PROBABILITY_OUTPUT",
    "SNOW_LEOPARD_IMAGENET_CLASS",
    "ImageNetPrior",
    "LeopardClassifier",
    "LinearHead",
    "PixelFeatures",
    "PixelNormaliser",
    "build_leopard_classifier",
    "imagenet_prior_logit",
]

PIXELS_INPUT = "pixels"
PROBABILITY_OUTPUT = "leopard_probability"
FEATURES_OUTPUT = "features"
SNOW_LEOPARD_IMAGENET_CLASS = 289


def imagenet_prior_logit(
    features: np.ndarray,
    fc_weight: np.ndarray,
    fc_bias: np.ndarray,
    target: int = SNOW_LEOPARD_IMAGENET_CLASS,
) -> np.ndarray:
    """log(p / (1 - p)) of ImageNet class `target` under the softmax, from pooled features.

    Computed as logit[target] - logsumexp(other logits), which stays finite where p is ~0 or ~1.
    The same arithmetic as `ImageNetPrior`, in numpy for training on cached features.
    """
    logits = np.asarray(features, dtype=np.float64) @ np.asarray(fc_weight, np.float64).T
    logits = logits + np.asarray(fc_bias, dtype=np.float64)
    others = np.delete(logits, target, axis=1)
    peak = others.max(axis=1, keepdims=True)
    rest = peak[:, 0] + np.log(np.exp(others - peak).sum(axis=1))
    return logits[:, target] - rest


class ImageNetPrior(nn.Module):
    """Pooled features -> `weight` x the log-odds of one ImageNet class (snow leopard)."""

    def __init__(
        self, fc: nn.Linear, weight: float = 1.0, target: int = SNOW_LEOPARD_IMAGENET_CLASS
    ) -> None:
        super().__init__()
        others = [i for i in range(fc.out_features) if i != target]
        with torch.no_grad():
            self.register_buffer("target_weight", fc.weight[target].detach().clone())
            self.register_buffer("target_bias", fc.bias[target].detach().clone())
            self.register_buffer("other_weight", fc.weight[others].detach().clone())
            self.register_buffer("other_bias", fc.bias[others].detach().clone())
        self.weight = float(weight)
        self.target = target

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        target = features @ self.target_weight + self.target_bias
        others = features @ self.other_weight.T + self.other_bias
        return self.weight * (target - torch.logsumexp(others, dim=1))


class PixelNormaliser(nn.Module):
    """RGB 0..255 NCHW -> the backbone's normalised input, `(x - mean) / std` per channel."""

    def __init__(self, normalisation: Normalisation) -> None:
        super().__init__()
        mean, std = normalisation.on_0_255()
        self.flip_to_bgr = normalisation.channel_order == "BGR"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer(
            "inv_std", (1.0 / torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(torch.float32)
        if self.flip_to_bgr:
            x = x.flip(1)
        return (x - self.mean) * self.inv_std


class PixelFeatures(nn.Module):
    """RGB 0..255 NCHW -> pooled backbone features: what the head is fitted on.

    The training pipeline should compute the features it fits the logistic regression on with
    this module, so training and serving see identical preprocessing.
    """

    def __init__(self, extractor: FeatureExtractor) -> None:
        super().__init__()
        self.normaliser = PixelNormaliser(extractor.normalisation)
        self.extractor = extractor

    @property
    def feature_dim(self) -> int:
        return self.extractor.feature_dim

    @property
    def input_size(self) -> int:
        return self.extractor.input_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.extractor(self.normaliser(pixels))


class LinearHead(nn.Module):
    """features -> one logit; weights usually come from a fitted logistic regression."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, 1)

    @classmethod
    def from_logistic_regression(
        cls,
        coef: np.ndarray,
        intercept: np.ndarray | float,
        feature_mean: np.ndarray | None = None,
        feature_scale: np.ndarray | None = None,
    ) -> LinearHead:
        """Head from sklearn-style `coef_` (1, D) or (D,) and `intercept_`.

        When the regression was fitted on standardised features (StandardScaler's `mean_` and
        `scale_`), pass them and the standardisation is folded into the weights:
        w' = w / scale, b' = b - sum(w * mean / scale).
        """
        weights = np.asarray(coef, dtype=np.float64).reshape(-1)
        bias = float(np.asarray(intercept, dtype=np.float64).reshape(-1)[0])
        if np.asarray(coef).ndim == 2 and np.asarray(coef).shape[0] != 1:
            raise ValueError(f"expected a binary regression, coef has shape {np.shape(coef)}")
        if feature_scale is not None:
            scale = np.asarray(feature_scale, dtype=np.float64).reshape(-1)
            if scale.shape != weights.shape or np.any(scale <= 0):
                raise ValueError("feature_scale must be positive with one value per feature")
            weights = weights / scale
        if feature_mean is not None:
            mean = np.asarray(feature_mean, dtype=np.float64).reshape(-1)
            if mean.shape != weights.shape:
                raise ValueError("feature_mean needs one value per feature")
            bias = bias - float(np.dot(weights, mean))
        if not np.all(np.isfinite(weights)) or not np.isfinite(bias):
            raise ValueError("head weights must be finite")
        head = cls(weights.shape[0])
        with torch.no_grad():
            head.linear.weight.copy_(torch.from_numpy(weights.astype(np.float32)).view(1, -1))
            head.linear.bias.fill_(bias)
        return head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features).squeeze(1)


class LeopardClassifier(nn.Module):
    """RGB 0..255 NCHW -> P(snow leopard in the frame), optionally with the features."""

    def __init__(
        self,
        features: PixelFeatures,
        head: LinearHead,
        emit_features: bool = False,
        prior: ImageNetPrior | None = None,
    ):
        super().__init__()
        if head.linear.in_features != features.feature_dim:
            raise ValueError(
                f"head expects {head.linear.in_features} features, backbone gives "
                f"{features.feature_dim}"
            )
        self.features = features
        self.head = head
        self.emit_features = emit_features
        self.prior = prior

    @property
    def input_size(self) -> int:
        return self.features.input_size

    @property
    def normalisation(self) -> Normalisation:
        """The backbone's normalisation, marked as applied inside this model."""
        return self.features.extractor.normalisation.in_graph(True)

    @property
    def backbone_name(self) -> str:
        return self.features.extractor.spec.name

    @property
    def output_names(self) -> list[str]:
        return [PROBABILITY_OUTPUT, FEATURES_OUTPUT] if self.emit_features else [PROBABILITY_OUTPUT]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.features(pixels)
        logit = self.head(features)
        if self.prior is not None:
            logit = logit + self.prior(features)
        probability = torch.sigmoid(logit)
        if self.emit_features:
            return probability, features
        return probability


def build_leopard_classifier(
    coef: np.ndarray,
    intercept: np.ndarray | float,
    *,
    backbone: str = "efficientnet_lite0",
    weights_path: Path | None = None,
    feature_mean: np.ndarray | None = None,
    feature_scale: np.ndarray | None = None,
    emit_features: bool = False,
    prior_weight: float = 0.0,
) -> LeopardClassifier:
    """Pretrained backbone (local weights) + a head from a fitted logistic regression, eval mode.

    `prior_weight` > 0 adds that multiple of the ImageNet snow-leopard log-odds to the logit.
    """
    extractor = build_feature_extractor(backbone, weights_path)
    head = LinearHead.from_logistic_regression(coef, intercept, feature_mean, feature_scale)
    prior = ImageNetPrior(extractor.imagenet_fc, prior_weight) if prior_weight else None
    return LeopardClassifier(PixelFeatures(extractor), head, emit_features, prior).eval()
