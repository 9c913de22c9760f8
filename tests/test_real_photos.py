"""Real photographs in the loop: the ImageNet prior, the head fitted on top of it, synthetic
frames rendered on real backgrounds, and the real held-out set the training run evaluates on.

The real frames are `data/realdata` (CDLA-Permissive-1.0, see its README): all negatives.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from snowtrap.models.backbone import build_feature_extractor, load_efficientnet_lite0
from snowtrap.models.classifier import (
    SNOW_LEOPARD_IMAGENET_CLASS,
    ImageNetPrior,
    build_leopard_classifier,
    imagenet_prior_logit,
)
from snowtrap.models.inference import resize_rgb
from snowtrap.models.normalisation import EFFICIENTNET_LITE_NORMALISATION
from snowtrap.training.classify import fit_leopard_head, score_features
from snowtrap.training.data_stages import append_coco_frames
from snowtrap.training.evaluate import roc_auc
from snowtrap.training.image_files import read_rgb
from snowtrap.training.synthetic import plan_survey, write_dataset
from snowtrap.training.synthetic.dataset import background_photos

REALDATA = Path(__file__).resolve().parents[1] / "data" / "realdata"


def _pixels(paths: list[Path]) -> torch.Tensor:
    batch = np.stack([resize_rgb(read_rgb(p), 224, 224) for p in paths]).transpose(0, 3, 1, 2)
    return torch.tensor(batch, dtype=torch.float32)


@pytest.fixture(scope="module")
def real_paths() -> list[Path]:
    document = json.loads((REALDATA / "labels.json").read_text())
    return [REALDATA / image["file_name"] for image in document["images"]]


def test_the_split_covers_every_real_frame_once_and_keeps_licences() -> None:
    every = json.loads((REALDATA / "labels.json").read_text())
    train = json.loads((REALDATA / "train.json").read_text())
    heldout = json.loads((REALDATA / "heldout.json").read_text())
    train_ids = {i["id"] for i in train["images"]}
    heldout_ids = {i["id"] for i in heldout["images"]}
    assert not train_ids & heldout_ids
    assert train_ids | heldout_ids == {i["id"] for i in every["images"]}
    for image in train["images"] + heldout["images"]:
        assert image["licence"] and image["source"]
        assert (REALDATA / image["file_name"]).is_file()


def test_prior_is_the_pretrained_softmax_of_snow_leopard(real_paths: list[Path]) -> None:
    """Zero head + prior weight 1 is the untouched ImageNet network's P(snow leopard)."""
    pixels = _pixels(real_paths[:4])
    dim = 1280
    classifier = build_leopard_classifier(np.zeros(dim), 0.0, prior_weight=1.0)
    mean, std = EFFICIENTNET_LITE_NORMALISATION.on_0_255()
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = load_efficientnet_lite0()(normalised).softmax(1)[:, SNOW_LEOPARD_IMAGENET_CLASS]
        got = classifier(pixels)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


def test_numpy_prior_matches_the_graph_module(real_paths: list[Path]) -> None:
    extractor = build_feature_extractor()
    pixels = _pixels(real_paths[4:7])
    classifier = build_leopard_classifier(np.zeros(1280), 0.0, emit_features=True)
    with torch.no_grad():
        _, features = classifier(pixels)
        in_graph = ImageNetPrior(extractor.imagenet_fc, weight=2.0)(features).numpy()
    fc = extractor.imagenet_fc
    in_numpy = imagenet_prior_logit(
        features.numpy(), fc.weight.detach().numpy(), fc.bias.detach().numpy()
    )
    np.testing.assert_allclose(in_graph, 2.0 * in_numpy, rtol=1e-4, atol=1e-4)
    assert np.all(in_numpy < 0)  # no real frame here looks like a snow leopard to ImageNet


def _separable_rows(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], 40)
    features = rng.normal(size=(80, 6)) + labels[:, None] * np.array([1.5, 0, 0, 0, 0, 0])
    prior = rng.normal(size=80) + 3.0 * labels  # the prior also tells them apart
    return features, labels, prior


def test_a_heavily_regularised_head_keeps_the_prior() -> None:
    features, labels, prior = _separable_rows(0)
    fit = fit_leopard_head(features, labels, c_grid=[1e-6], folds=3, prior=prior, prior_weight=1.0)
    assert np.abs(fit.coef).max() < 1e-3
    scores = score_features(features, fit, prior)
    assert np.corrcoef(scores, 1 / (1 + np.exp(-prior)))[0, 1] > 0.99
    with pytest.raises(ValueError, match="prior logits"):
        score_features(features, fit)


def test_head_without_prior_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    features, labels, _ = _separable_rows(1)
    fit = fit_leopard_head(features, labels, c_grid=[0.3], folds=3)
    x = StandardScaler().fit_transform(features)
    reference = LogisticRegression(C=0.3, class_weight="balanced", max_iter=5000).fit(x, labels)
    np.testing.assert_allclose(fit.coef, reference.coef_[0], atol=1e-3)
    assert abs(fit.intercept - reference.intercept_[0]) < 1e-3


def test_the_head_learns_what_the_prior_does_not_know() -> None:
    """A prior that says nothing about these rows: the fitted head separates them by their
    features (as it does for synthetic leopards ImageNet barely recognises)."""
    features, labels, _ = _separable_rows(2)
    blind_prior = np.random.default_rng(7).normal(-6.0, 0.3, size=labels.size)
    fit = fit_leopard_head(
        features, labels, c_grid=[1.0], folds=3, prior=blind_prior, prior_weight=1.0
    )
    corrected = roc_auc(labels, score_features(features, fit, blind_prior))
    assert corrected > 0.8 and corrected > roc_auc(labels, blind_prior) + 0.15


def test_surveys_render_on_real_backgrounds_when_asked(tmp_path: Path) -> None:
    photos = background_photos(REALDATA / "train.json")
    assert len(photos) == 12
    plain = plan_survey(12, seed=5)
    real = plan_survey(12, seed=5, backgrounds=REALDATA / "train.json")
    half = plan_survey(40, seed=5, backgrounds=REALDATA / "train.json", background_share=0.5)
    assert all(f.spec.background is None for f in plain)
    assert all(f.spec.background in photos for f in real)
    used = sum(f.spec.background is not None for f in half)
    assert 0 < used < 40
    # Same animals and times: the background is drawn from its own random stream.
    assert [f.spec.animals for f in plain] == [f.spec.animals for f in real]
    survey = write_dataset(tmp_path / "s", 3, seed=5, backgrounds=REALDATA / "train.json")
    document = json.loads(survey.annotations_path.read_text())
    assert all(image["background"].endswith(".jpg") for image in document["images"])


def test_spotted_cats_replace_some_distractors_only_when_asked() -> None:
    plain = plan_survey(80, seed=9)
    spotted = plan_survey(80, seed=9, spotted_cat_share=1.0)
    species = [a.species for f in spotted for a in f.spec.animals]
    assert "spotted_cat" in species and "spotted_cat" not in {
        a.species for f in plain for a in f.spec.animals
    }
    for before, after in zip(plain, spotted, strict=True):
        assert [a.species == "snow_leopard" for a in before.spec.animals] == [
            a.species == "snow_leopard" for a in after.spec.animals
        ]


def test_background_photos_names_a_bad_source(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match=r"bad\.json"):
        background_photos(bad)


def test_real_frames_appended_to_a_survey_keep_their_paths_and_licences(tmp_path: Path) -> None:
    survey = write_dataset(tmp_path / "s", 4, seed=3)
    append_coco_frames(survey.annotations_path, REALDATA / "heldout.json")
    document = json.loads(survey.annotations_path.read_text())
    real = [i for i in document["images"] if str(i["id"]).startswith("real-")]
    assert len(real) == 12 and len(document["images"]) == 16
    assert all(Path(i["file_name"]).is_absolute() and Path(i["file_name"]).is_file() for i in real)
    assert all(i["licence"] for i in real)
    names = {c["id"]: c["name"] for c in document["categories"]}
    real_ids = {i["id"] for i in real}
    real_categories = {
        names[a["category_id"]] for a in document["annotations"] if a["image_id"] in real_ids
    }
    assert "snow_leopard" not in real_categories and "empty" in real_categories
