"""The model-bundle manifest (`manifest.json`), format version 1.

A bundle is a directory: `manifest.json` plus the files it lists (ONNX models, optional
extras). The manifest says everything a serving process needs to run the models without
torch or training code: tensor names and shapes, how to resize and normalise pixels, the
detector's output contract, the operating thresholds, and where the models came from.
This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from snowtrap.models.normalisation import Normalisation

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "BundleManifest",
    "DetectorIO",
    "FileRecord",
    "ModelEntry",
    "NormalisationSpec",
    "Provenance",
    "TensorSpec",
    "Thresholds",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One graph input or output: symbolic dimensions are strings ("batch")."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"


class NormalisationSpec(_Strict):
    """JSON form of `models.normalisation.Normalisation`: `(x - mean) / std` on `scale`."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: Literal["0-255", "0-1"] = "0-255"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    applied_in_graph: bool = False

    @classmethod
    def of(cls, normalisation: Normalisation) -> NormalisationSpec:
        return cls(
            mean=normalisation.mean,
            std=normalisation.std,
            scale=normalisation.scale,
            channel_order=normalisation.channel_order,
            applied_in_graph=normalisation.applied_in_graph,
        )

    def to_normalisation(self) -> Normalisation:
        return Normalisation(
            self.mean, self.std, self.scale, self.channel_order, self.applied_in_graph
        )


class DetectorIO(_Strict):
    """How to call a detector graph and read its answer; any ONNX detector fitting this runs.

    Input: float32 pixels prepared per the entry's `normalisation`, NCHW. With
    `input_rank` 4 the graph takes a batch (N, 3, H, W) of `input_size` images and every
    output has a leading batch axis (rows past `num_detections_output`, or with a score of
    0, are padding). With `input_rank` 3 it takes one image (3, H, W) of any size (e.g. a
    torchvision Faster R-CNN, which resizes internally) and outputs have no batch axis.
    Outputs: boxes (K, 4) in `box_format`, in `box_units` of the graph's input tensor;
    scores (K,); labels (K,) integers, class name = class_names[label - label_offset].
    NMS (`nms_iou`, and `nested_share` when set) runs after decoding unless the graph did it
    (`nms_applied`); a `nested_share` always runs here, no graph applies it.
    """

    input_rank: Literal[3, 4] = 4
    input_size: tuple[int, int] | None = None  # (height, width) the graph needs
    resize: Literal["letterbox", "squash"] = "letterbox"
    max_side: int | None = Field(default=None, ge=32)  # downscale bound for any-size graphs
    pad_value: float = 0.0  # letterbox fill, on the input `scale`, before normalisation
    boxes_output: str = "boxes"
    scores_output: str = "scores"
    labels_output: str | None = "labels"
    num_detections_output: str | None = None
    box_format: Literal["xyxy", "xywh", "cxcywh"] = "xyxy"
    box_units: Literal["pixels", "normalised"] = "pixels"
    label_offset: int = 1  # torchvision detectors reserve label 0 for the background
    nms_applied: bool = True
    nms_iou: float = Field(default=0.5, gt=0.0, le=1.0)
    # Also suppress a lower-scoring box when the smaller of the two lies at least this share
    # inside the other (a part, or an oversized box around an animal); None: off.
    nested_share: float | None = Field(default=None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _batch_needs_fixed_size(self) -> DetectorIO:
        if self.input_rank == 4 and self.input_size is None:
            raise ValueError("a batched detector (input_rank 4) needs a fixed input_size")
        return self


class ModelEntry(_Strict):
    """One ONNX model of the bundle."""

    file: str
    sha256: str | None = None  # filled in by write_bundle
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    input_size: tuple[int, int] | None = None  # (height, width); None for any-size graphs
    resize: Literal["squash", "letterbox", "none"] = "squash"
    normalisation: NormalisationSpec
    backbone: str | None = None
    io: DetectorIO | None = None  # required for the detector
    notes: str = ""


class Thresholds(_Strict):
    """Operating points, chosen for recall (a missed leopard costs more than a false alarm)."""

    classifier_gate: float = Field(ge=0.0, le=1.0)  # P(leopard) >= this goes to the detector
    detection_confidence: float = Field(ge=0.0, le=1.0)  # boxes reported in trap.detections
    crop: float = Field(ge=0.0, le=1.0)  # boxes cut out and sent to trap.crops


class Provenance(_Strict):
    data_sources: list[str | dict[str, Any]] = Field(default_factory=list)
    training_config: dict[str, Any] = Field(default_factory=dict)
    git_commit: str | None = None
    notes: list[str] = Field(default_factory=list)


class FileRecord(_Strict):
    sha256: str
    size_bytes: int


class BundleManifest(_Strict):
    format_version: int = FORMAT_VERSION
    name: str
    version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    class_names: list[str] = Field(min_length=1)
    models: dict[Literal["classifier", "detector"], ModelEntry]
    thresholds: Thresholds
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: Provenance = Field(default_factory=Provenance)
    files: dict[str, FileRecord] = Field(default_factory=dict)  # every file but the manifest

    @model_validator(mode="after")
    def _consistent(self) -> BundleManifest:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} is not {FORMAT_VERSION}")
        if "classifier" not in self.models:
            raise ValueError("a bundle needs a 'classifier' model")
        classifier = self.models["classifier"]
        if classifier.input_size is None:
            raise ValueError("the classifier needs an input_size")
        detector = self.models.get("detector")
        if detector is not None and detector.io is None:
            raise ValueError("the detector entry needs its 'io' contract")
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must carry a timezone")
        return self
