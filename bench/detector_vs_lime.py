"""Per-frame time of the trained detector vs LIME boxes, on the same held-out frames.

The detector replaces LIME at serving time: it should do LIME's job (a box around the
leopard) at least 1000x faster. Both run on ONNX Runtime on CPU with the same thread count:
the detector through `ModelBundle.detect` (decode-free RGB frame in, boxes out, as the stream
worker calls it), LIME through `training.lime.explain_image` with the classifier of the same
bundle: with the run's own explain settings (what made the detector's training boxes: coarse to
fine when the run refines) and as one whole-frame pass at the `lime` package's default of 1000
samples; and the reference `lime` package itself on the same classifier and frames, one pass of
1000 samples (`--reference-samples`; 0 leaves it out): the method of the original work, whose
LIME the detector was meant to replace.

Usage: python bench/detector_vs_lime.py [--run runs/synthetic] [--images 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lime_vs_reference import reference_box
from bench.machine import machine_line
from models.boxes import box_iou, xywh_to_xyxy
from models.bundle import load_bundle
from training.classify import read_coco_camera_traps
from training.config import ExplainConfig
from training.lime import LimeSettings, explain_image, onnx_score_fn, read_rgb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/synthetic"))
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--coco", type=Path, default=None)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--detector-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--reference-samples", type=int, default=1000, help="the `lime` package's row; 0: none"
    )
    args = parser.parse_args()

    bundle_dir = args.bundle
    if bundle_dir is None:
        candidates = sorted((args.run / "bundle").glob("*/manifest.json"))
        bundle_dir = candidates[0].parent if candidates else None
    coco = args.coco or args.run / "synthesise" / "heldout" / "annotations.json"
    if bundle_dir is None or not coco.is_file():
        print(
            "need a bundle and held-out frames: run `snowtrap train configs/synthetic.yaml` "
            "first, or pass --bundle and --coco",
            file=sys.stderr,
        )
        return 2
    config_path = args.run / "config.json"
    explain = ExplainConfig()
    if config_path.is_file():
        explain = ExplainConfig(**json.loads(config_path.read_text())["explain"])
    run_settings = explain.lime_settings()
    run_label = f"LIME as the run explained ({run_settings.num_samples} samples" + (
        f" + {run_settings.refine_samples} per refined region)"
        if run_settings.refine_samples
        else ", one pass)"
    )
    one_pass = LimeSettings(1000)
    variants = {run_label: run_settings, "LIME, one pass, 1000 samples": one_pass}
    reference_label = (
        f"reference `lime` package, one pass, {args.reference_samples} samples"
        if args.reference_samples
        else None
    )
    bundle = load_bundle(bundle_dir, intra_op_threads=args.threads)
    frames = [f for f in read_coco_camera_traps(coco) if f.label == 1][: args.images]
    images = [read_rgb(f.path) for f in frames]
    score = onnx_score_fn(bundle.sessions["classifier"])
    bundle.detect(images[:1])  # warm-up
    explain_image(images[0], score, LimeSettings(num_samples=64))

    detector_seconds, overlaps = [], []
    lime_seconds: dict[str, list[float]] = {label: [] for label in variants}
    if reference_label:
        lime_seconds[reference_label] = []
    for rgb in images:
        timings = []
        for _ in range(args.detector_repeats):
            started = time.perf_counter()
            detections = bundle.detect([rgb])[0]
            timings.append(time.perf_counter() - started)
        detector_seconds.append(float(np.median(timings)))
        for label, settings in variants.items():
            explanation = explain_image(rgb, score, settings)
            lime_seconds[label].append(explanation.seconds)
        if reference_label:
            _, seconds = reference_box(
                rgb,
                bundle.sessions["classifier"],
                replace(one_pass, num_samples=args.reference_samples),
                seed=0,
            )
            lime_seconds[reference_label].append(seconds)
        if detections and explanation.boxes.single_box is not None:
            top = xywh_to_xyxy(np.array(detections[0].box_xywh_normalised))
            overlaps.append(float(box_iou(top, explanation.boxes.single_box)[0, 0]))

    detector = float(np.mean(detector_seconds))
    print("## Detector vs LIME, seconds per frame\n")
    print(f"machine: {machine_line()}")
    sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    print(
        f"bundle: {bundle_dir} ({bundle.manifest.version}); frames: {len(images)} held-out "
        f"leopard frames ({', '.join(sizes)}) from {coco}; ONNX Runtime CPU, threads "
        f"{args.threads or 'all usable'}; detector time = median of {args.detector_repeats} "
        "calls per frame, through ModelBundle.detect\n"
    )
    print("| method | s / frame | frames per second | time / detector time |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| detector (Faster R-CNN, ONNX) | {detector:.4f} | {1 / detector:.1f} | 1x |")
    for label, values in lime_seconds.items():
        mean = float(np.mean(values))
        print(f"| {label} | {mean:.2f} | {1 / mean:.3f} | {mean / detector:.0f}x |")
    if overlaps:
        print(
            f"\nIoU(detector's top box, LIME single box at 1000 samples): mean "
            f"{np.mean(overlaps):.2f} over {len(overlaps)} frames"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
