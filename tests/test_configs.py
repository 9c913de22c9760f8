"""Every training config in configs/ validates, and its providers can be built (no network,
no files read: the placeholder paths of the real-photo configs need not exist)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from snowtrap.training.config import TrainConfig
from snowtrap.training.gather_config import GatherConfig
from snowtrap.training.sources.config import QueryDefaults

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))


def _defaults(gather: GatherConfig) -> QueryDefaults:
    return QueryDefaults(
        positive_label=gather.labels.positive,
        negative_label=gather.labels.negative,
        positive_search=tuple(gather.queries.positive),
        negative_search=tuple(gather.queries.negative_queries()),
    )


def _kinds(config: TrainConfig) -> list[str]:
    return [provider.kind for provider in config.gather.providers]


def test_the_configs_folder_holds_the_documented_configs() -> None:
    names = {path.stem for path in ALL_CONFIGS}
    assert {"synthetic", "synthetic-ci", "demo", "own-photos", "open-providers"} <= names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda path: path.stem)
def test_config_validates_and_its_providers_build(path: Path) -> None:
    config = TrainConfig.load(path)

    assert config.gather.providers, "a training config gathers from at least one provider"
    defaults = _defaults(config.gather)
    for provider in config.gather.providers:
        source = provider.build(defaults)
        positive, negative = provider.queries(defaults)
        assert source.name == provider.instance_name
        assert positive and negative, f"{provider.instance_name}: a class without queries"
    config.explain.lime_settings()
    config.detect.train_settings()


def test_own_photos_trains_on_labelled_files_only() -> None:
    config = TrainConfig.load(CONFIGS / "own-photos.yaml")

    assert config.synthetic is None
    assert set(_kinds(config)) == {"coco_camera_traps", "local_folder"}
    assert config.heldout is not None
    places = [getattr(p, "annotations", None) or p.root for p in config.gather.providers]
    assert all(Path(place).parts[0] == "surveys" for place in places)  # placeholders to fill


def test_open_providers_uses_the_open_sources_and_keeps_secrets_out() -> None:
    config = TrainConfig.load(CONFIGS / "open-providers.yaml")

    assert config.synthetic is None
    assert set(_kinds(config)) == {"inaturalist", "openverse", "coco_camera_traps"}
    inaturalist = next(p for p in config.gather.providers if p.kind == "inaturalist")
    assert inaturalist.positive_queries == ["Panthera uncia"]
    text = (CONFIGS / "open-providers.yaml").read_text()
    assert "api_key:" not in text and "token:" not in text


def test_the_commented_bing_entry_validates_once_uncommented() -> None:
    lines = (CONFIGS / "open-providers.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# - kind: bing")
    block = []
    for line in lines[start:]:
        if not line.strip().startswith("#"):
            break
        block.append(line.replace("# ", "", 1))
    entry = yaml.safe_load("\n".join(block))[0]

    gather = GatherConfig.model_validate({"providers": [entry]})

    assert gather.providers[0].kind == "bing"
    assert gather.providers[0].api_key is None  # read from api_key_env at build time
