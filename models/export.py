"""ONNX export that proves itself: every export is re-run in ONNX Runtime and compared.

`export_onnx` uses the TorchScript-based exporter (`dynamo=False`) by default: it needs no
network, writes a single self-contained file and handles the EfficientNet static-padding
modules without graph breaks. `exporter="dynamo"` is available for models that need it.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from snowtrap.models.classifier import PIXELS_INPUT, LeopardClassifier
from snowtrap.models.manifest import DetectorIO, ModelEntry, NormalisationSpec, TensorSpec

__all__ = [
    "ExportMismatchError",
    "ExportReport",
    "classifier_model_entry",
    "export_classifier_onnx",
    "export_onnx",
]

DEFAULT_PROBABILITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely ONNX Runtime reproduces torch on it."""

    path: Path
    exporter: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_abs_diff: dict[str, float]
    tolerances: dict[str, float]
    checked_batch_sizes: tuple[int, ...]
    sha256: str
    size_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)


class ExportMismatchError(RuntimeError):
    """ONNX Runtime output differs from torch by more than the tolerance."""

    def __init__(self, report: ExportReport, failures: dict[str, float]) -> None:
        details = ", ".join(
            f"{name}: {diff:.3g} > {report.tolerances[name]:.3g}" for name, diff in failures.items()
        )
        super().__init__(f"ONNX export {report.path} does not match torch ({details})")
        self.report = report
        self.failures = failures


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _as_outputs(result: torch.Tensor | Sequence[torch.Tensor]) -> list[np.ndarray]:
    tensors = [result] if isinstance(result, torch.Tensor) else list(result)
    return [t.detach().cpu().numpy() for t in tensors]


def _spec(name: str, shape: Sequence[int], dtype: np.dtype, dynamic_batch: bool) -> TensorSpec:
    dims: list[int | str] = list(shape)
    if dynamic_batch and dims:
        dims[0] = "batch"
    return TensorSpec(name=name, shape=dims, dtype=str(np.dtype(dtype)))


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: Path,
    *,
    dynamic_batch: bool = True,
    opset: int = 17,
    input_name: str = PIXELS_INPUT,
    output_names: Sequence[str] | None = None,
    tolerances: Mapping[str, float] | None = None,
    exporter: Literal["torchscript", "dynamo"] = "torchscript",
) -> ExportReport:
    """Export `model` (eval mode, CPU) to `path`, then check it in ONNX Runtime.

    The check runs the example batch and, with `dynamic_batch`, a batch one larger, through
    both torch and ONNX Runtime (CPU). `tolerances` maps output names to the largest allowed
    absolute difference; by default the first output must agree within 1e-4, the others
    are only reported. Raises `ExportMismatchError` when a tolerance is exceeded.
    """
    import onnx
    import onnxruntime as ort

    started = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example_input = example_input.detach().cpu()
    with torch.no_grad():
        reference = _as_outputs(model(example_input))
    if output_names is not None:
        names = list(output_names)
    elif len(reference) == 1:
        names = ["output"]
    else:
        names = [f"output_{i}" for i in range(len(reference))]
    if len(names) != len(reference):
        raise ValueError(f"model returns {len(reference)} outputs, {len(names)} names given")
    limits = dict(tolerances or {names[0]: DEFAULT_PROBABILITY_TOLERANCE})
    unknown = set(limits) - set(names)
    if unknown:
        raise ValueError(f"tolerances for unknown outputs: {sorted(unknown)}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        if exporter == "torchscript":
            dynamic_axes = (
                {name: {0: "batch"} for name in [input_name, *names]} if dynamic_batch else None
            )
            torch.onnx.export(
                model,
                (example_input,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        else:
            dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            program = torch.onnx.export(
                model,
                (example_input,),
                dynamo=True,
                opset_version=opset,
                input_names=[input_name],
                output_names=names,
                dynamic_shapes=dynamic_shapes,
                optimize=True,
            )
            program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)

    batches = [example_input]
    if dynamic_batch:
        batches.append(torch.cat([example_input, example_input[:1].flip(-1)]))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = _max_abs_diffs(model, session, batches, input_name, names)
    report = ExportReport(
        path=path,
        exporter=exporter,
        opset=opset,
        inputs=[_spec(input_name, example_input.shape, np.float32, dynamic_batch)],
        outputs=[
            _spec(name, out.shape, out.dtype, dynamic_batch)
            for name, out in zip(names, reference, strict=True)
        ],
        max_abs_diff=diffs,
        tolerances=limits,
        checked_batch_sizes=tuple(int(b.shape[0]) for b in batches),
        sha256=_sha256(path),
        size_bytes=path.stat().st_size,
        seconds=time.perf_counter() - started,
    )
    failures = {n: d for n, d in diffs.items() if n in limits and not d <= limits[n]}
    if failures:
        raise ExportMismatchError(report, failures)
    return report


def _max_abs_diffs(
    model: nn.Module,
    session: object,
    batches: Sequence[torch.Tensor],
    input_name: str,
    names: Sequence[str],
) -> dict[str, float]:
    """Largest |torch - ORT| per output over the batches; inf where the shapes differ."""
    diffs = dict.fromkeys(names, 0.0)
    for batch in batches:
        with torch.no_grad():
            expected = _as_outputs(model(batch))
        actual = session.run(list(names), {input_name: batch.numpy()})  # type: ignore[attr-defined]
        for name, want, got in zip(names, expected, actual, strict=True):
            if want.shape != np.shape(got):
                diffs[name] = float("inf")
                continue
            diffs[name] = max(diffs[name], float(np.max(np.abs(want - got), initial=0.0)))
    return diffs


def export_classifier_onnx(
    classifier: LeopardClassifier,
    path: Path,
    *,
    example_input: torch.Tensor | None = None,
    opset: int = 17,
    tolerance: float = DEFAULT_PROBABILITY_TOLERANCE,
) -> ExportReport:
    """Export a `LeopardClassifier` with its standard tensor names, dynamic batch, checked.

    Without `example_input` a fixed-seed batch of two random frames on 0..255 is used.
    """
    size = classifier.input_size
    if example_input is None:
        generator = torch.Generator().manual_seed(0)
        example_input = torch.rand((2, 3, size, size), generator=generator) * 255.0
    return export_onnx(
        classifier,
        example_input,
        path,
        dynamic_batch=True,
        opset=opset,
        input_name=PIXELS_INPUT,
        output_names=classifier.output_names,
        tolerances={classifier.output_names[0]: tolerance},
    )


def classifier_model_entry(
    classifier: LeopardClassifier, report: ExportReport, file_name: str | None = None
) -> ModelEntry:
    """The manifest entry describing an exported classifier (sha256 filled by write_bundle)."""
    return ModelEntry(
        file=file_name or report.path.name,
        inputs=report.inputs,
        outputs=report.outputs,
        input_size=(classifier.input_size, classifier.input_size),
        resize="squash",
        normalisation=NormalisationSpec.of(classifier.normalisation),
        backbone=classifier.backbone_name,
        notes=(
            f"{report.exporter} exporter, opset {report.opset}; max |ORT - torch| "
            + ", ".join(f"{k}={v:.2e}" for k, v in report.max_abs_diff.items())
        ),
    )


def export_square_detector_onnx(
    detector: nn.Module,
    path: Path,
    *,
    input_size: int,
    normalisation: NormalisationSpec,
    backbone: str,
    box_units: Literal["pixels", "normalised"],
    notes: str,
) -> tuple[ModelEntry, ExportReport]:
    """Export a detector taking RGB 0..255 NCHW squares of `input_size` (squashed) and giving
    `boxes` (xyxy), `scores` and `labels` after its own NMS; checked in ONNX Runtime on a
    seeded batch of two. Returns its manifest entry (sha256 filled by write_bundle) and the
    export report; `notes` lead the entry's notes, the exporter and the ORT gap follow."""
    generator = torch.Generator().manual_seed(0)
    example = torch.rand((2, 3, input_size, input_size), generator=generator) * 255.0
    report = export_onnx(
        detector,
        example,
        path,
        input_name=PIXELS_INPUT,
        output_names=["boxes", "scores", "labels"],
        tolerances={"scores": 1e-4},
    )
    entry = ModelEntry(
        file=path.name,
        inputs=report.inputs,
        outputs=report.outputs,
        input_size=(input_size, input_size),
        resize="squash",
        normalisation=normalisation,
        backbone=backbone,
        io=DetectorIO(
            input_rank=4,
            input_size=(input_size, input_size),
            resize="squash",
            box_format="xyxy",
            box_units=box_units,
            label_offset=1,
            nms_applied=True,
        ),
        notes=(
            f"{notes}; {report.exporter} exporter, opset {report.opset}; max |ORT - torch| "
            + ", ".join(f"{k}={v:.2e}" for k, v in report.max_abs_diff.items())
        ),
    )
    return entry, report
