"""`snowtrap train` configuration: one YAML file, one section per stage.

`TrainConfig.load("configs/synthetic.yaml")` reads it (environment variables `SNOWTRAP_...`
override, see `snowtrap.core.settings`). Paths inside the file are relative to the working
directory; in the `gather` section the text `{run_dir}` stands for the run directory, so a
config can point gather at the frames the `synthesise` stage writes there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from snowtrap.core.settings import SnowtrapSettings
from snowtrap.models.detector import DetectorArchitecture
from snowtrap.training.detect import AugmentSettings, DetectorTrainSettings
from snowtrap.training.gather_config import GatherConfig
from snowtrap.training.lime import LimeSettings

__all__ = [
    "BundleConfig",
    "ClassifyConfig",
    "DetectConfig",
    "ExplainConfig",
    "HeldoutConfig",
    "ReportConfig",
    "SyntheticConfig",
    "SyntheticSetConfig",
    "TrainConfig",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticSetConfig(_Section):
    n_images: int = Field(ge=1)
    seed: int
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="extra keyword arguments of write_dataset (backgrounds: a COCO Camera "
        "Traps file of real photographs to render on)",
    )
    add_frames: Path | None = Field(
        None, description="a COCO Camera Traps file of real frames appended to this set"
    )


class SyntheticConfig(_Section):
    """Frames from `training.synthetic`: a training set, a held-out set (other seed), and a
    held-out set on real photographs (leopards composited on real backgrounds never trained
    on, plus the real frames themselves): the set the classifier must not do worse on than
    the pretrained network it starts from."""

    train: SyntheticSetConfig
    heldout: SyntheticSetConfig | None = None
    real_heldout: SyntheticSetConfig | None = None


class HeldoutConfig(_Section):
    """Frames with ground truth, never trained on; default: the synthetic held-out set."""

    annotations: Path
    image_root: Path | None = None


class ClassifyConfig(_Section):
    backbone: str = "efficientnet_lite0"
    weights_path: Path | None = None
    validation_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    target_recall: float = Field(0.98, gt=0.0, le=1.0)
    c_grid: list[float] = Field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    folds: int = Field(5, ge=2)
    prior_weight: float = Field(
        1.0, ge=0, description="the head is a correction on this x the ImageNet prior (0: none)"
    )
    augment_flip: bool = True
    batch_size: int = Field(32, ge=1)
    seed: int = 0


class ExplainConfig(_Section):
    num_samples: int = Field(500, ge=8)
    n_segments: int = Field(60, ge=4)
    compactness: float = 10.0
    slic_sigma: float = 1.0
    kernel_width: float = 0.25
    ridge_alpha: float = 1.0
    positive_share: float = Field(0.4, gt=0.0, le=1.0)
    connectivity: Literal[4, 8] = 8
    min_group_share: float = Field(0.1, ge=0.0, le=1.0)
    batch_size: int = Field(16, ge=1, description="perturbed inputs per classifier call")
    seed: int = 0
    refine_samples: int = Field(
        0, ge=0, description="samples per crop of the fine pass; 0: one whole-frame pass"
    )
    refine_segments: int = Field(50, ge=4)
    locate_z: float = Field(3.0, gt=0, description="coarse pass: robust z to locate animals")
    refine_context: float = Field(0.5, ge=0)
    refine_min_side: float = Field(0.2, gt=0, le=1)
    max_regions: int = Field(3, ge=1)
    min_region_score: float = Field(
        0.5, ge=0, le=1, description="crops the classifier scores lower give no box"
    )
    region_nms_iou: float = Field(0.3, gt=0, le=1)
    outline: Literal["superpixels", "grabcut"] = Field(
        "superpixels", description="box the selected superpixels, or their colour outline"
    )
    outline_iterations: int = Field(3, ge=1, description="GrabCut iterations per crop")
    outline_close: float = Field(
        0.02, ge=0, lt=1, description="outline: close gaps this share of the crop's side"
    )
    outline_grow_margin: float | None = Field(
        2.0,
        ge=0,
        description="outline: grow boxes by thin parts the colour models call animal by this "
        "log-likelihood ratio (null: off)",
    )
    outline_dark_patch: float | None = Field(
        0.03,
        ge=0,
        lt=1,
        description="outline: cut out dark patches (rock, shadow) wider than this share of "
        "the crop's side (null: off)",
    )
    search_rounds: int = Field(
        0, ge=0, description="grey out what was found and look again while a leopard is left"
    )
    erase_margin: float = Field(0.1, ge=0)
    workers: int = Field(2, ge=1)
    max_train_images: int | None = Field(None, ge=1, description="cap on frames explained")
    heldout_images: int = Field(60, ge=0, description="held-out leopard frames explained")
    detector_boxes: Literal["group", "single"] = "group"
    min_classifier_score: Literal["gate"] | float | None = Field(
        "gate", description="skip training frames the classifier does not call a leopard"
    )
    found_iou: float = Field(0.5, gt=0.0, le=1.0, description="IoU for 'found this animal'")

    def method_summary(self) -> str:
        """One paragraph on how the boxes were drawn (for the report and the model card)."""
        selection = f"top superpixels holding {self.positive_share:.0%} of the positive importance"
        if not self.refine_samples:
            return (
                f"LIME, one whole-frame pass: {self.num_samples} samples over "
                f"~{self.n_segments} SLIC superpixels; boxes around the {selection} "
                f"({self.detector_boxes} mode for the detector)."
            )
        return (
            f"LIME, coarse to fine: a whole-frame pass ({self.num_samples} samples, "
            f"~{self.n_segments} SLIC superpixels) locates the animals (superpixels "
            f"{self.locate_z} robust deviations above the median importance); each located "
            f"region (up to {self.max_regions}) is explained again on its crop of the "
            f"full-resolution frame ({self.refine_samples} samples, ~{self.refine_segments} "
            f"superpixels) and gives boxes when the classifier scores the crop at least "
            f"{self.min_region_score}: boxes around the crop's {selection} "
            f"({self.detector_boxes} mode for the detector)."
            + self._outline_summary()
            + (
                f" Then up to {self.search_rounds} more search round(s): the boxes found are "
                f"greyed out and, while the classifier still scores a quarter-frame window of "
                f"the rest (3 x 3, corner to corner) at least {self.min_region_score}, the "
                f"whole-frame pass looks again."
                if self.search_rounds
                else ""
            )
        )

    def _outline_summary(self) -> str:
        """The sentence on the GrabCut outline for `method_summary`; empty when it is off."""
        if self.outline != "grabcut":
            return ""
        text = (
            f" Each box is then drawn around the colour outline (GrabCut, "
            f"{self.outline_iterations} iterations, seeded by the selection) of each part "
            f"of the crop the selection lies on, gaps under {self.outline_close:.0%} of "
            f"the crop's side closed"
        )
        if self.outline_grow_margin is not None:
            text += (
                f", and grown by the thin parts (tail, legs) the cut left out that its "
                f"colour models call animal (log-likelihood ratio over "
                f"{self.outline_grow_margin:g})"
            )
        if self.outline_dark_patch is None:
            return text + "."
        return text + (
            f"; dark patches wider than {self.outline_dark_patch:.0%} of the side "
            f"(rock, shadow: a coat's rosettes are smaller) are cut out of the outline."
        )

    def lime_settings(self) -> LimeSettings:
        """The LIME knobs of this section (every LimeSettings field has one here)."""
        names = {f.name for f in dataclasses.fields(LimeSettings)}
        return LimeSettings(**{k: v for k, v in self.model_dump().items() if k in names})


class AugmentConfig(_Section):
    flip_probability: float = 0.5
    crop_probability: float = 0.5
    min_crop_side: float = 0.6
    min_box_visible: float = 0.5
    colour_jitter: float = 0.25
    greyscale_probability: float = 0.2

    def settings(self) -> AugmentSettings:
        return AugmentSettings(**self.model_dump())


class DetectConfig(_Section):
    min_size: int = Field(384, ge=64)
    max_size: int = Field(576, ge=64)
    fpn_channels: int = Field(64, ge=8)
    representation_size: int = Field(256, ge=16)
    anchor_sizes: list[int] = Field(default_factory=lambda: [32, 64, 128, 256])
    trainable_from_block: int = Field(3, ge=0, le=16)
    rpn_post_nms_top_n_test: int = 100
    # The exported detector keeps fewer proposals than training's relabelling passes use.
    export_rpn_pre_nms_top_n: int = Field(100, ge=1)
    export_rpn_post_nms_top_n: int = Field(30, ge=1)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(0.01, gt=0)
    warmup_iterations: int = Field(30, ge=1)
    negatives_per_positive: float = Field(0.5, ge=0)
    self_training_rounds: int = Field(0, ge=0)
    self_training_score: float = Field(0.5, ge=0, le=1)
    self_training_epochs: int = Field(2, ge=1)
    self_training_unexplained: bool = Field(
        True,
        description="self-training also labels the leopard frames LIME did not explain",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    seed: int = 0
    export_opset: int = 17
    check_images: int = Field(6, ge=1, description="frames compared torch vs ONNX Runtime")
    check_score_floor: float = 0.3
    check_iou_tolerance: float = 0.99
    check_score_tolerance: float = 1e-3
    detection_confidence: float = Field(0.5, ge=0, le=1)
    nested_share: float | None = Field(
        0.9,
        gt=0,
        le=1,
        description="served boxes: of two nested boxes (the smaller this share inside the "
        "other) keep the higher-scoring; the detector also boxes parts of an animal and "
        "oversized boxes around one (null: IoU NMS only)",
    )
    crop_threshold: float = Field(0.7, ge=0, le=1)

    def architecture(self) -> DetectorArchitecture:
        return DetectorArchitecture(
            min_size=self.min_size,
            max_size=self.max_size,
            fpn_channels=self.fpn_channels,
            representation_size=self.representation_size,
            anchor_sizes=tuple(self.anchor_sizes),
            trainable_from_block=self.trainable_from_block,
            rpn_post_nms_top_n_test=self.rpn_post_nms_top_n_test,
        )

    def method_summary(self) -> str:
        """How the detector was trained, in a sentence for the report and the model card."""
        text = f"The detector trained {self.epochs} epochs on the LIME boxes"
        if self.self_training_rounds:
            joined = (
                "; leopard frames LIME did not explain join when the detector finds one"
                if self.self_training_unexplained
                else ""
            )
            text += (
                f", then {self.self_training_rounds} self-training round(s) of "
                f"{self.self_training_epochs} epoch(s): each leopard frame relabelled with the "
                f"detector's own boxes scoring at least {self.self_training_score} (LIME's boxes "
                f"where none does{joined})"
            )
        return text + "."

    def train_settings(self) -> DetectorTrainSettings:
        return DetectorTrainSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            warmup_iterations=self.warmup_iterations,
            negatives_per_positive=self.negatives_per_positive,
            self_training_rounds=self.self_training_rounds,
            self_training_score=self.self_training_score,
            self_training_epochs=self.self_training_epochs,
            seed=self.seed,
        )


class BundleConfig(_Section):
    name: str = "snowtrap-leopard"
    version: str | None = Field(None, description="default: date + config hash")
    out: Path | None = Field(None, description="default: <run_dir>/bundle")


class ReportConfig(_Section):
    lime_samples: int = Field(12, ge=0, description="LIME overlays shown in the report")
    detector_samples: int = Field(12, ge=0)


class TrainConfig(SnowtrapSettings):
    """Everything `snowtrap train` needs; each stage reads its own section."""

    run_dir: Path = Path("runs/train")
    synthetic: SyntheticConfig | None = None
    gather: GatherConfig
    heldout: HeldoutConfig | None = None
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    bundle: BundleConfig = Field(default_factory=BundleConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    evaluate: list[Path] = Field(
        default_factory=list,
        description="COCO Camera Traps sets the final bundle is evaluated on (`snowtrap "
        "evaluate`; `{run_dir}` allowed), e.g. real frames: figures go to report and model card",
    )
