"""The leopard detector: torchvision Faster R-CNN on the pretrained EfficientNet-Lite0 with an FPN.

As in the original snow-leopard work the detector is a Faster R-CNN, but on the same light
ImageNet backbone as the classifier (loaded from local weights), so it trains on 2 CPU cores in
minutes and runs in tens of milliseconds per frame.

Graph contract (torch and ONNX alike), the `input_rank` 3 form of `models.manifest.DetectorIO`:
input `image`, float32 (3, H, W) RGB pixel values 0..255 of any size (the graph resizes to
`min_size`/`max_size` itself and normalises with the backbone's constants); outputs `boxes`
(K, 4) xyxy in pixels of the input tensor, `scores` (K,), `labels` (K,) int64 with 1 = the
first class name (0 is torchvision's background). NMS is applied inside the graph.

EfficientNet-Lite's convolutions use static 'same' padding computed for 224 x 224. For inputs
whose sides are multiples of 32 every strided convolution sees an even size, exactly as at 224,
so the padding is the one 'same' padding would compute; Faster R-CNN's transform pads each
batch to a multiple of 32 (`size_divisible`), so the trunk is reused unchanged.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from snowtrap.models.backbone import load_efficientnet_lite0
from snowtrap.models.manifest import DetectorIO, ModelEntry, NormalisationSpec, TensorSpec
from snowtrap.models.normalisation import EFFICIENTNET_LITE_NORMALISATION, Normalisation

__all__ = [
    "DETECTOR_BOXES_OUTPUT",
    "DETECTOR_IMAGE_INPUT",
    "DETECTOR_LABELS_OUTPUT",
    "DETECTOR_SCORES_OUTPUT",
    "DetectorArchitecture",
    "DetectorExportCheck",
    "EfficientNetLiteFPN",
    "build_leopard_detector",
    "check_detector_onnx",
    "detector_model_entry",
    "detector_normalisation",
    "export_detector_onnx",
    "load_detector_checkpoint",
    "save_detector_checkpoint",
    "use_test_proposals",
]

DETECTOR_IMAGE_INPUT = "image"
DETECTOR_BOXES_OUTPUT = "boxes"
DETECTOR_SCORES_OUTPUT = "scores"
DETECTOR_LABELS_OUTPUT = "labels"

# Lite0 block indices whose outputs feed the FPN: stride 8 (40 ch), 16 (112 ch), 32 (320 ch).
_LITE0_TAPS: dict[int, tuple[str, int]] = {4: ("s8", 40), 10: ("s16", 112), 15: ("s32", 320)}


@dataclass(frozen=True)
class DetectorArchitecture:
    """Every knob that changes the graph; stored with checkpoints so a model rebuilds exactly.

    The defaults are sized for CPU training on small camera-trap frames: a short side of 384,
    a narrow FPN, and fewer proposals than torchvision's defaults (which suit COCO on GPUs).
    """

    class_names: tuple[str, ...] = ("snow_leopard",)
    min_size: int = 384
    max_size: int = 576
    fpn_channels: int = 64
    representation_size: int = 256
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    trainable_from_block: int = 3  # stem and blocks before this stay frozen
    rpn_pre_nms_top_n_train: int = 600
    rpn_post_nms_top_n_train: int = 300
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 100
    rpn_batch_size_per_image: int = 128
    box_batch_size_per_image: int = 128
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 20

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorArchitecture:
        data = dict(data)
        for key in ("class_names", "anchor_sizes", "aspect_ratios"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def detector_normalisation() -> Normalisation:
    """What the detector graph does to its 0..255 input: Lite's (x - 127) / 128, in the graph."""
    return EFFICIENTNET_LITE_NORMALISATION.in_graph(True)


def detector_model_entry(
    architecture: DetectorArchitecture,
    file_name: str,
    notes: str = "",
    nested_share: float | None = None,
) -> ModelEntry:
    """The bundle manifest entry for an exported detector: the `input_rank` 3 contract.

    Frames are fed at their own size, first shrunk so the longer side is at most
    `max_size` (the graph would shrink them to that anyway; doing it before saves copying
    a 12-megapixel frame into the graph). `nested_share`: see `DetectorIO`.
    """
    return ModelEntry(
        file=file_name,
        inputs=[TensorSpec(name=DETECTOR_IMAGE_INPUT, shape=[3, "height", "width"])],
        outputs=[
            TensorSpec(name=DETECTOR_BOXES_OUTPUT, shape=["detections", 4]),
            TensorSpec(name=DETECTOR_LABELS_OUTPUT, shape=["detections"], dtype="int64"),
            TensorSpec(name=DETECTOR_SCORES_OUTPUT, shape=["detections"]),
        ],
        input_size=None,
        resize="none",
        normalisation=NormalisationSpec.of(detector_normalisation()),
        backbone="efficientnet_lite0",
        io=DetectorIO(
            input_rank=3,
            input_size=None,
            max_side=architecture.max_size,
            boxes_output=DETECTOR_BOXES_OUTPUT,
            scores_output=DETECTOR_SCORES_OUTPUT,
            labels_output=DETECTOR_LABELS_OUTPUT,
            box_format="xyxy",
            box_units="pixels",
            label_offset=1,
            nms_applied=True,
            nms_iou=architecture.box_nms_thresh,
            nested_share=nested_share,
        ),
        notes=notes
        or (
            f"torchvision Faster R-CNN, EfficientNet-Lite0 + FPN({architecture.fpn_channels}), "
            f"min_size {architecture.min_size}, max_size {architecture.max_size}"
        ),
    )


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for a FrozenBatchNorm2d with the same statistics.

    Detection batches are 2-4 images: BatchNorm statistics from them would be noise, so the
    ImageNet statistics stay fixed (what torchvision does for its own detection backbones).
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)
    return module


class EfficientNetLiteFPN(nn.Module):
    """Lite0 trunk (stem + MBConv blocks) -> FPN over strides 8/16/32 (+ a max-pooled 64)."""

    def __init__(self, net: nn.Module, fpn_channels: int, trainable_from_block: int) -> None:
        super().__init__()
        net = _freeze_batchnorm(net)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.taps = {index: name for index, (name, _) in _LITE0_TAPS.items()}
        self.last_tap = max(_LITE0_TAPS)
        self.fpn = FeaturePyramidNetwork(
            [channels for _, channels in _LITE0_TAPS.values()],
            fpn_channels,
            extra_blocks=LastLevelMaxPool(),
        )
        self.out_channels = fpn_channels
        for parameter in self.stem.parameters():
            parameter.requires_grad_(False)
        for index, block in enumerate(self.blocks):
            for parameter in block.parameters():
                parameter.requires_grad_(index >= trainable_from_block)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            if index > self.last_tap:
                break
            x = block(x)  # no drop-connect: fine-tuning a small detector, not regularising
            if index in self.taps:
                features[self.taps[index]] = x
        return self.fpn(features)


def build_leopard_detector(
    architecture: DetectorArchitecture | None = None,
    weights_path: Path | None = None,
    pretrained_backbone: bool = True,
) -> FasterRCNN:
    """Faster R-CNN with the ImageNet Lite0 trunk (from local weights) and a fresh FPN/heads."""
    arch = architecture or DetectorArchitecture()
    if pretrained_backbone:
        net = load_efficientnet_lite0(weights_path)
    else:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
    backbone = EfficientNetLiteFPN(net, arch.fpn_channels, arch.trainable_from_block)
    levels = ["s8", "s16", "s32"]
    num_maps = len(levels) + 1  # + the max-pooled level
    sizes = tuple(arch.anchor_sizes)
    if len(sizes) != num_maps:
        raise ValueError(f"need {num_maps} anchor sizes (one per FPN level), got {sizes}")
    anchors = AnchorGenerator(
        sizes=tuple((size,) for size in sizes),
        aspect_ratios=(tuple(arch.aspect_ratios),) * num_maps,
    )
    roi_pool = MultiScaleRoIAlign(featmap_names=levels, output_size=7, sampling_ratio=2)
    mean, std = detector_normalisation().on_0_255()
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    box_head = TwoMLPHead(arch.fpn_channels * 7 * 7, arch.representation_size)
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    predictor = FastRCNNPredictor(arch.representation_size, len(arch.class_names) + 1)
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=arch.min_size,
        max_size=arch.max_size,
        image_mean=list(mean),
        image_std=list(std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=arch.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=arch.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=arch.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=arch.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=arch.rpn_batch_size_per_image,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=predictor,
        box_score_thresh=arch.box_score_thresh,
        box_nms_thresh=arch.box_nms_thresh,
        box_detections_per_img=arch.box_detections_per_img,
        box_batch_size_per_image=arch.box_batch_size_per_image,
    )


def use_test_proposals(
    model: FasterRCNN, architecture: DetectorArchitecture, pre_nms_top_n: int, post_nms_top_n: int
) -> DetectorArchitecture:
    """Set how many RPN proposals the model keeps in eval mode; returns the matching architecture.

    Training's relabelling passes want many proposals (recall for the pseudo-labels); the
    exported detector wants few (RoIAlign, the box head and NMS scale with them, the backbone
    does not). On the synthetic held-out frames 100/30 instead of 300/100 gave the same mAP@0.5
    (0.668 vs 0.662) at 0.72x the ONNX time.
    """
    if pre_nms_top_n < post_nms_top_n or post_nms_top_n < 1:
        raise ValueError("need pre_nms_top_n >= post_nms_top_n >= 1")
    model.rpn._pre_nms_top_n["testing"] = pre_nms_top_n
    model.rpn._post_nms_top_n["testing"] = post_nms_top_n
    return replace(
        architecture, rpn_pre_nms_top_n_test=pre_nms_top_n, rpn_post_nms_top_n_test=post_nms_top_n
    )


def save_detector_checkpoint(
    model: FasterRCNN, architecture: DetectorArchitecture, path: Path
) -> None:
    """State dict + architecture in one file, so `load_detector_checkpoint` needs nothing else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"architecture": architecture.to_dict(), "state_dict": model.state_dict()}, path)


def load_detector_checkpoint(path: Path) -> tuple[FasterRCNN, DetectorArchitecture]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    architecture = DetectorArchitecture.from_dict(checkpoint["architecture"])
    model = build_leopard_detector(architecture, pretrained_backbone=False)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), architecture


def export_detector_onnx(
    model: FasterRCNN, path: Path, sample_image: np.ndarray, opset: int = 17
) -> Path:
    """Export with any input size (dynamic H, W) via the TorchScript-based exporter.

    `sample_image` is an (H, W, 3) uint8/float RGB frame; a real frame with an animal in it
    traces every branch the same way as an empty one, but it keeps the trace representative.
    torchvision's detection models export with the legacy exporter (`dynamo=False`).
    """
    import warnings

    model = model.eval()
    image = torch.from_numpy(np.ascontiguousarray(sample_image, dtype=np.float32)).permute(2, 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints in torchvision
        torch.onnx.export(
            model,
            ([image],),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[DETECTOR_IMAGE_INPUT],
            output_names=[DETECTOR_BOXES_OUTPUT, DETECTOR_LABELS_OUTPUT, DETECTOR_SCORES_OUTPUT],
            dynamic_axes={
                DETECTOR_IMAGE_INPUT: {1: "height", 2: "width"},
                DETECTOR_BOXES_OUTPUT: {0: "detections"},
                DETECTOR_LABELS_OUTPUT: {0: "detections"},
                DETECTOR_SCORES_OUTPUT: {0: "detections"},
            },
        )
    path.write_bytes(buffer.getvalue())
    return path


@dataclass(frozen=True)
class DetectorExportCheck:
    """How far ONNX Runtime's boxes are from torch's on the same frames.

    Boxes are matched by rank after sorting by score; `min_box_iou` is the worst IoU of a
    matched pair and `max_score_diff` the largest score difference. Only boxes scoring at
    least `score_floor` in either runtime are compared: near the floor, float noise can move a
    box across `box_score_thresh` in one runtime and not in the other.
    """

    images: int
    boxes_compared: int
    count_mismatches: int
    min_box_iou: float
    max_score_diff: float
    score_floor: float

    def passed(self, iou_tolerance: float = 0.99, score_tolerance: float = 1e-3) -> bool:
        return (
            self.count_mismatches == 0
            and self.min_box_iou >= iou_tolerance
            and self.max_score_diff <= score_tolerance
        )


def check_detector_onnx(
    model: FasterRCNN, onnx_path: Path, images: list[np.ndarray], score_floor: float = 0.3
) -> DetectorExportCheck:
    """Run the same (H, W, 3) frames through torch and ORT and compare boxes and scores."""
    import onnxruntime as ort

    from snowtrap.models.boxes import box_iou

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = model.eval()
    compared = mismatches = 0
    worst_iou, worst_score = 1.0, 0.0
    for rgb in images:
        pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1))
        with torch.no_grad():
            out = model([torch.from_numpy(pixels)])[0]
        torch_boxes, torch_scores = out["boxes"].numpy(), out["scores"].numpy()
        ort_boxes, _, ort_scores = session.run(
            [DETECTOR_BOXES_OUTPUT, DETECTOR_LABELS_OUTPUT, DETECTOR_SCORES_OUTPUT],
            {DETECTOR_IMAGE_INPUT: pixels},
        )
        keep_torch = torch_scores >= score_floor
        keep_ort = ort_scores >= score_floor
        if keep_torch.sum() != keep_ort.sum():
            mismatches += 1
            continue
        tb, ts = torch_boxes[keep_torch], torch_scores[keep_torch]
        ob, os_ = ort_boxes[keep_ort], ort_scores[keep_ort]
        order_t, order_o = np.argsort(-ts, kind="stable"), np.argsort(-os_, kind="stable")
        for i, j in zip(order_t, order_o, strict=True):
            worst_iou = min(worst_iou, float(box_iou(tb[i], ob[j])[0, 0]))
            worst_score = max(worst_score, abs(float(ts[i]) - float(os_[j])))
            compared += 1
    return DetectorExportCheck(
        images=len(images),
        boxes_compared=compared,
        count_mismatches=mismatches,
        min_box_iou=worst_iou,
        max_score_diff=worst_score,
        score_floor=score_floor,
    )
