"""`snowtrap bundle verify|show|zero-shot`: the bundle commands (`models.bundle` is the format,
`models.zero_shot` the day-one builder; this module only wires them to the command line)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from snowtrap.models.bundle import BundleError, ModelBundle, load_bundle, read_manifest
from snowtrap.models.manifest import BundleManifest

__all__ = ["configure_cli"]


def _dry_run(bundle: ModelBundle) -> list[str]:
    """Run each model on small synthetic frames: catches graphs that load but cannot run."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8) for _ in range(2)]
    probabilities = bundle.classify(frames)
    if probabilities.shape != (2,) or not np.all(np.isfinite(probabilities)):
        raise BundleError(bundle.directory, f"classifier returned {probabilities!r}")
    lines = [f"classifier dry run: {probabilities.round(4).tolist()}"]
    if bundle.has_detector:
        detections = bundle.detect(frames, min_score=0.0)
        lines.append(f"detector dry run: {[len(d) for d in detections]} boxes")
    return lines


def _summary(directory: Path, manifest: BundleManifest) -> str:
    lines = [
        f"bundle      {directory}",
        f"name        {manifest.name}  version {manifest.version}",
        f"created     {manifest.created_at.isoformat()}",
        f"classes     {', '.join(manifest.class_names)}",
        f"thresholds  gate {manifest.thresholds.classifier_gate}  "
        f"detection {manifest.thresholds.detection_confidence}  crop {manifest.thresholds.crop}",
    ]
    for role, entry in manifest.models.items():
        norm = entry.normalisation
        lines.append(
            f"{role:<11} {entry.file}  input {[(s.name, s.shape) for s in entry.inputs]}  "
            f"outputs {[s.name for s in entry.outputs]}"
        )
        lines.append(
            f"{'':<11} resize {entry.resize} to {entry.input_size}  mean {list(norm.mean)} "
            f"std {list(norm.std)} on {norm.scale} {norm.channel_order}"
            f"{' (in graph)' if norm.applied_in_graph else ''}"
            + (f"  backbone {entry.backbone}" if entry.backbone else "")
        )
    if manifest.metrics:
        lines.append(f"metrics     {json.dumps(manifest.metrics, sort_keys=True)}")
    provenance = manifest.provenance
    lines.append(f"git commit  {provenance.git_commit or '-'}")
    lines.extend(f"note        {note}" for note in provenance.notes)
    for name, record in sorted(manifest.files.items()):
        lines.append(f"file        {name}  {record.size_bytes} bytes  sha256 {record.sha256}")
    return "\n".join(lines)


def _run_show(args: argparse.Namespace) -> int:
    try:
        manifest = read_manifest(args.directory)
    except BundleError as exc:
        print(f"snowtrap bundle show: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(manifest.model_dump_json(indent=2))
    else:
        print(_summary(args.directory, manifest))
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.directory, intra_op_threads=args.threads)
        lines = _dry_run(bundle)
    except BundleError as exc:
        print(f"snowtrap bundle verify: FAILED {exc}", file=sys.stderr)
        return 1
    manifest = bundle.manifest
    print(f"{args.directory}: OK  {manifest.name} {manifest.version}")
    print(f"files: {len(manifest.files)} verified by sha256; providers: {bundle.providers}")
    print("\n".join(lines))
    return 0


def _run_zero_shot(args: argparse.Namespace) -> int:
    from snowtrap.models.zero_shot import run_zero_shot_cli  # torch only for this command

    return run_zero_shot_cli(args)


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`snowtrap bundle verify DIR`, `snowtrap bundle show DIR [--json]` and
    `snowtrap bundle zero-shot OUT [--name N] [--weights PATH] [--force]`."""
    commands = parser.add_subparsers(dest="bundle_command", metavar="{verify,show,zero-shot}")
    verify = commands.add_parser(
        "verify", help="check format version and hashes, open the models and run them once"
    )
    verify.add_argument("directory", type=Path, metavar="DIR")
    verify.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    verify.set_defaults(run=_run_verify)
    show = commands.add_parser("show", help="print a summary of the manifest")
    show.add_argument("directory", type=Path, metavar="DIR")
    show.add_argument("--json", action="store_true", help="print the manifest as JSON")
    show.set_defaults(run=_run_show)
    zero_shot = commands.add_parser(
        "zero-shot", help="write the day-one bundle: the pretrained backbone alone, no training"
    )
    zero_shot.add_argument("out", type=Path, metavar="OUT", help="bundle directory to write")
    zero_shot.add_argument("--name", default=None, help="bundle name (snowtrap-zero-shot)")
    zero_shot.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="PATH",
        help="EfficientNet-Lite0 weights (default: the package's)",
    )
    zero_shot.add_argument("--force", action="store_true", help="replace OUT if it exists")
    zero_shot.set_defaults(run=_run_zero_shot)
