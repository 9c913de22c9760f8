"""The pretrained EfficientNet-Lite0 loads from the installed file, offline, and is real."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from snowtrap.models.backbone import (
    BACKBONES,
    BackboneSpec,
    BackboneWeightsError,
    build_feature_extractor,
    default_efficientnet_lite0_weights,
    load_efficientnet_lite0,
    register_backbone,
)
from snowtrap.models.normalisation import (
    CLASSIFIER_INPUT_SIZE,
    EFFICIENTNET_LITE_NORMALISATION,
    IMAGENET_NORMALISATION,
    Normalisation,
)

SNOW_LEOPARD = 289
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def imagenet_model() -> nn.Module:
    torch.set_num_threads(2)
    return load_efficientnet_lite0()


def normalised(rgb: np.ndarray, normalisation: Normalisation) -> torch.Tensor:
    resized = Image.fromarray(rgb).resize((224, 224), Image.Resampling.BILINEAR)
    mean, std = normalisation.on_0_255()
    x = (np.asarray(resized, dtype=np.float32) - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


def skimage_photo(name: str) -> np.ndarray:
    """A real photograph shipped inside scikit-image (no download)."""
    skimage_data = pytest.importorskip("skimage.data")
    path = Path(skimage_data.__file__).parent / name
    if not path.is_file():
        pytest.skip(f"{name} is not bundled with this scikit-image")
    return np.asarray(Image.open(path).convert("RGB"))


def test_weights_load_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    assert default_efficientnet_lite0_weights().is_file()
    model = load_efficientnet_lite0()
    assert not model.training
    # Lite keeps ReLU6: nothing may have swapped in (memory-efficient) Swish.
    activations = {type(m).__name__ for m in model.modules()}
    assert "ReLU6" in activations and not {"Swish", "MemoryEfficientSwish"} & activations


def test_imagenet_logits_are_finite_and_include_snow_leopard(imagenet_model: nn.Module) -> None:
    with torch.no_grad():
        logits = imagenet_model(torch.zeros(2, 3, 224, 224))
    assert logits.shape == (2, 1000)
    assert torch.isfinite(logits).all()
    assert torch.isfinite(logits[:, SNOW_LEOPARD]).all()


def test_imagenet_head_recognises_a_real_photo(imagenet_model: nn.Module) -> None:
    cat = skimage_photo("chelsea.png")
    with torch.no_grad():
        probabilities = imagenet_model(normalised(cat, EFFICIENTNET_LITE_NORMALISATION)).softmax(1)
    assert int(probabilities.argmax()) in CAT_CLASSES
    assert float(probabilities[0, list(CAT_CLASSES)].sum()) > 0.5


def test_lite_normalisation_matches_the_trained_input_statistics(
    imagenet_model: nn.Module,
) -> None:
    """The stem BatchNorm remembers the input scale it was trained on: (x - 127) / 128 fits."""
    photos = [skimage_photo(n) for n in ("chelsea.png", "coffee.png", "astronaut.png")]
    stem, bn = imagenet_model._conv_stem, imagenet_model._bn0
    live = bn.running_var > 1e-4

    def misfit(normalisation: Normalisation) -> float:
        batch = torch.cat([normalised(p, normalisation) for p in photos])
        with torch.no_grad():
            variance = stem(batch).var(dim=(0, 2, 3))
        return float((variance[live] / bn.running_var[live]).log().abs().mean())

    assert misfit(EFFICIENTNET_LITE_NORMALISATION) < 0.6 < misfit(IMAGENET_NORMALISATION)


def test_feature_extractor_gives_distinct_pooled_features() -> None:
    extractor = build_feature_extractor("efficientnet_lite0")
    assert extractor.feature_dim == 1280 and extractor.input_size == CLASSIFIER_INPUT_SIZE
    extractor.train()
    assert not extractor.training  # pretrained BatchNorm statistics stay frozen
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand((2, 3, 224, 224), generator=generator) * 2 - 1
    with torch.no_grad():
        features = extractor(batch)
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
    assert float((features[0] - features[1]).abs().max()) > 1e-3


def test_missing_or_wrong_weights_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(BackboneWeightsError, match="not found"):
        load_efficientnet_lite0(tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"not": torch.zeros(1)}, wrong)
    with pytest.raises(BackboneWeightsError, match="does not fit"):
        load_efficientnet_lite0(wrong)
    with pytest.raises(BackboneWeightsError, match="state_dict"):
        build_feature_extractor("resnet50")  # no bundled weights: must be given a local file
    with pytest.raises(KeyError, match="unknown backbone"):
        build_feature_extractor("vgg-from-the-internet")


def test_backbone_registry_takes_local_architectures() -> None:
    spec = BackboneSpec(
        name="tiny_test_backbone",
        feature_dim=3,
        input_size=32,
        normalisation=IMAGENET_NORMALISATION,
        build=lambda _weights: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    )
    register_backbone(spec)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_backbone(spec)
        extractor = build_feature_extractor("tiny_test_backbone")
        assert extractor(torch.ones(1, 3, 32, 32)).shape == (1, 3)
    finally:
        BACKBONES.pop("tiny_test_backbone")
