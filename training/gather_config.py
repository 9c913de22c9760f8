"""What a gather run asks for: the labels, the queries, download limits, dedupe settings.

The `gather` section of a training config, or a YAML file of its own (`GatherConfig`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from snowtrap.training.sources.config import ProviderConfig
from snowtrap.training.sources.http import DEFAULT_USER_AGENT

__all__ = [
    "RANDOM_WORDS",
    "DedupeSettings",
    "DownloadLimits",
    "GatherConfig",
    "LabelNames",
    "QueryPlan",
    "random_word_queries",
]


MiB = 1024 * 1024

MiB = 1024 * 1024

RANDOM_WORDS: tuple[str, ...] = (
    "accordion", "airport", "anchor", "apron", "armchair", "avenue", "backpack", "bakery",
    "balcony", "bandage", "barrel", "basket", "bathtub", "battery", "beach", "bench",
    "bicycle", "billboard", "blanket", "blender", "bookshelf", "bottle", "bouquet", "bowl",
    "bracelet", "bread", "brick", "bridge", "broom", "bucket", "bus", "cabinet", "cactus",
    "cake", "calculator", "calendar", "camera", "candle", "canoe", "carpet", "castle",
    "cathedral", "ceiling", "chair", "chandelier", "cheese", "chess", "chimney", "church",
    "clock", "cloud", "coffee", "coin", "compass", "concert", "cookie", "corridor", "cottage",
    "crane", "crayon", "cupcake", "curtain", "cushion", "desk", "diamond", "dinner", "doorway",
    "drum", "dumbbell", "elevator", "envelope", "escalator", "factory", "fence", "ferry",
    "fireworks", "flag", "flute", "fountain", "garage", "garden", "guitar", "hammer", "harbour",
    "helmet", "highway", "hospital", "kettle", "keyboard", "kitchen", "ladder", "lamp",
    "lantern", "laptop", "lawnmower", "library", "lighthouse", "locomotive", "mailbox",
    "marathon", "market", "microphone", "microscope", "mirror", "motorcycle", "mug", "museum",
    "necklace", "newspaper", "notebook", "office", "orchestra", "painting", "pancake",
    "parachute", "parking lot", "pasta", "piano", "pillow", "pizza", "playground", "pottery",
    "printer", "pyramid", "quilt", "radio", "railway", "raincoat", "refrigerator", "restaurant",
    "robot", "rocket", "sailboat", "sandwich", "saxophone", "scissors", "screwdriver",
    "sculpture", "skateboard", "skyscraper", "sneaker", "sofa", "spoon", "stadium", "staircase",
    "stapler", "suitcase", "sunglasses", "supermarket", "surfboard", "swimming pool", "table",
    "teapot", "telephone", "television", "tennis", "tent", "toaster", "toothbrush", "tractor",
    "traffic", "train station", "trampoline", "trumpet", "umbrella", "vase", "violin",
    "volcano", "waterfall", "wheelbarrow", "window", "windmill", "wristwatch", "yacht",
)  # fmt: skip
"""Everyday things, no animals: random-word queries return images that are almost surely
not snow leopards (noise-contrastive negatives)."""


def random_word_queries(count: int, seed: int) -> list[str]:
    """`count` distinct words from `RANDOM_WORDS`, the same for the same seed."""
    if count <= 0:
        return []
    return random.Random(seed).sample(RANDOM_WORDS, min(count, len(RANDOM_WORDS)))


class LabelNames(BaseModel):
    """Folder and manifest names of the two classes."""

    model_config = ConfigDict(extra="forbid")

    positive: str = Field("snow_leopard", pattern=r"^[A-Za-z0-9_\-]+$")
    negative: str = Field("background", pattern=r"^[A-Za-z0-9_\-]+$")


class QueryPlan(BaseModel):
    """Search queries for the web providers (bing, openverse); others have their own defaults."""

    model_config = ConfigDict(extra="forbid")

    positive: list[str] = Field(
        default_factory=lambda: [
            "snow leopard",
            "snow leopard camera trap",
            "snow leopard in the wild",
            "Panthera uncia",
        ]
    )
    habitat: list[str] = Field(
        default_factory=lambda: [
            "himalayan mountain landscape",
            "rocky scree slope",
            "snow covered rocks",
            "alpine meadow",
            "mountain cliff",
            "tibetan plateau",
        ]
    )
    random_words: int = Field(20, ge=0, description="how many random-word negative queries")
    seed: int = 0

    def negative_queries(self) -> list[str]:
        return [*self.habitat, *random_word_queries(self.random_words, self.seed)]


class DownloadLimits(BaseModel):
    """How images are fetched and what is accepted."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(8, ge=1, le=64)
    timeout_s: float = Field(20.0, gt=0, description="socket timeout per blocking read")
    deadline_s: float = Field(120.0, gt=0, description="wall-clock limit per attempt")
    max_attempts: int = Field(3, ge=1)
    backoff_base_s: float = Field(0.5, ge=0)
    max_bytes: int = Field(20 * MiB, ge=1)
    max_pixels: int = Field(64_000_000, ge=1)
    min_side: int = Field(32, ge=1, description="smaller images (icons, spacers) are refused")
    allowed_content_types: list[str] = Field(
        default_factory=lambda: ["image/", "application/octet-stream", "binary/octet-stream"],
        description="Content-Type prefixes; the bytes are sniffed regardless",
    )
    allowed_formats: list[str] = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "TIFF"])


class DedupeSettings(BaseModel):
    """Perceptual-hash comparison across classes."""

    model_config = ConfigDict(extra="forbid")

    phash_threshold: int = Field(4, ge=0, le=64, description="max Hamming distance (64-bit)")
    trust_curated_labels: bool = True


class GatherConfig(BaseModel):
    """The `gather` section of a training config."""

    model_config = ConfigDict(extra="forbid")

    out_dir: Path = Path("runs/gather")
    labels: LabelNames = Field(default_factory=LabelNames)
    queries: QueryPlan = Field(default_factory=QueryPlan)
    per_query_limit: int = Field(100, ge=1)
    providers: list[ProviderConfig] = Field(default_factory=list)
    download: DownloadLimits = Field(default_factory=DownloadLimits)
    dedupe: DedupeSettings = Field(default_factory=DedupeSettings)
    user_agent: str = DEFAULT_USER_AGENT
    reuse_searches: bool = True
    progress: bool = True

    @classmethod
    def from_yaml(cls, path: Path | str, section: str | None = None) -> GatherConfig:
        """Load from a YAML file; `section` picks a key (e.g. 'gather' in a train config).

        Relative paths stay relative to the working directory, as in `TrainConfig.load`;
        `relative_to_dir(path.parent)` anchors them at the file instead.
        """
        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if section is not None:
            data = data.get(section) if isinstance(data, dict) else None
        if not isinstance(data, dict):
            where = f"section {section!r} of " if section else ""
            raise ValueError(f"{where}{path}: expected a mapping")
        return cls.model_validate(data)

    def relative_to_dir(self, base: Path) -> GatherConfig:
        """A copy whose relative paths are anchored at `base`."""

        def anchored(value: Path) -> Path:
            return value if value.is_absolute() else base / value

        providers = []
        for provider in self.providers:
            updates: dict[str, Any] = {}
            for attr in ("root", "annotations"):
                if isinstance(getattr(provider, attr, None), Path):
                    updates[attr] = anchored(getattr(provider, attr))
            image_base = getattr(provider, "image_base", None)
            if image_base and not image_base.lower().startswith(("http://", "https://")):
                updates["image_base"] = str(anchored(Path(image_base)))
            providers.append(provider.model_copy(update=updates))
        return self.model_copy(update={"out_dir": anchored(self.out_dir), "providers": providers})
