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

Box quality, at the stored size: each method's top box (the detector's best-scoring one,
LIME's single box) against the true box it overlaps most, IoU averaged over the frames.

Columns: the frames at their stored size and, as in `bench/lime_vs_reference.py`, the same
frames upscaled to 8 megapixels (3264 x 2448), the size of real trap cameras' photos
(`--skip-8mp` leaves them out). The detector and this project's LIME shrink a frame first, so
their cost barely grows with it; the reference package works on the frame as given.

Usage: python bench/detector_vs_lime.py [--run runs/synthetic] [--images 6] [--skip-8mp]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lime_vs_reference import CAMERA_TRAP_SIZE, reference_box
from bench.machine import machine_line
from bench.run_inputs import missing_run_inputs, run_explain_config
from snowtrap.models.boxes import box_iou, xywh_to_xyxy
from snowtrap.models.bundle import load_bundle
from snowtrap.models.inference import resize_rgb
from snowtrap.training.classify import read_coco_camera_traps
from snowtrap.training.config import ExplainConfig
from snowtrap.training.image_files import read_rgb
from snowtrap.training.lime import LimeSettings, explain_image, onnx_score_fn

DETECTOR_LABEL = "detector (Faster R-CNN, ONNX)"


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
    parser.add_argument("--skip-8mp", action="store_true", help="leave out the 8 MP columns")
    args = parser.parse_args()

    bundle_dir = args.bundle
    if bundle_dir is None:
        candidates = sorted((args.run / "bundle").glob("*/manifest.json"))
        bundle_dir = candidates[0].parent if candidates else None
    coco = args.coco or args.run / "synthesise" / "heldout" / "annotations.json"
    if missing_run_inputs({"a bundle": bundle_dir, "held-out frames": coco}, "--bundle and --coco"):
        return 2
    run_settings = (run_explain_config(args.run) or ExplainConfig()).lime_settings()
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
    stored = [read_rgb(f.path) for f in frames]
    score = onnx_score_fn(bundle.sessions["classifier"])
    bundle.detect(stored[:1])  # warm-up
    explain_image(stored[0], score, LimeSettings(num_samples=64))

    methods = [DETECTOR_LABEL, *variants] + ([reference_label] if reference_label else [])
    sizes = ["stored"] + ([] if args.skip_8mp else ["8 MP"])
    seconds = {size: {label: [] for label in methods} for size in sizes}
    truth_ious: dict[str, list[float]] = {label: [] for label in methods}
    for frame, rgb in zip(tqdm(frames, desc="frames"), stored, strict=True):
        truth = np.asarray(frame.boxes, dtype=np.float64).reshape(-1, 4)
        for size in sizes:
            image = rgb if size == "stored" else resize_rgb(rgb, *CAMERA_TRAP_SIZE)
            timings = []
            for _ in range(args.detector_repeats):
                started = time.perf_counter()
                detections = bundle.detect([image])[0]
                timings.append(time.perf_counter() - started)
            seconds[size][DETECTOR_LABEL].append(float(np.median(timings)))
            top_boxes = {
                DETECTOR_LABEL: xywh_to_xyxy(np.array(detections[0].box_xywh_normalised))[0]
                if detections
                else None
            }
            for label, settings in variants.items():
                explanation = explain_image(image, score, settings)
                seconds[size][label].append(explanation.seconds)
                top_boxes[label] = explanation.boxes.single_box
            if reference_label:
                top_boxes[reference_label], reference_seconds, _ = reference_box(
                    image,
                    bundle.sessions["classifier"],
                    replace(one_pass, num_samples=args.reference_samples),
                    seed=0,
                )
                seconds[size][reference_label].append(reference_seconds)
            if size == "stored":
                for label, box in top_boxes.items():
                    best = box_iou(box, truth).max() if box is not None and truth.size else 0.0
                    truth_ious[label].append(float(best))

    print("## Detector vs LIME, seconds per frame\n")
    print(f"machine: {machine_line()}")
    stored_sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in stored})
    print(
        f"bundle: {bundle_dir} ({bundle.manifest.version}); frames: {len(stored)} held-out "
        f"leopard frames ({', '.join(stored_sizes)}) from {coco}"
        + ("" if args.skip_8mp else ", and the same frames upscaled to 8 MP (3264x2448)")
        + f"; ONNX Runtime CPU, threads {args.threads or 'all usable'}; detector time = median "
        f"of {args.detector_repeats} calls per frame, through ModelBundle.detect (which shrinks "
        "the frame to the detector's input first)\n"
    )
    header = " | ".join(f"{size}: s / frame | {size}: time / detector time" for size in sizes)
    print(f"| method | {header} | stored: IoU(top box, truth) |")
    print("| --- |" + " ---: | ---: |" * len(sizes) + " ---: |")
    detector = {size: float(np.mean(seconds[size][DETECTOR_LABEL])) for size in sizes}
    for label in methods:
        cells = []
        for size in sizes:
            mean = float(np.mean(seconds[size][label]))
            cells += [f"{mean:.4f}" if label == DETECTOR_LABEL else f"{mean:.2f}"]
            cells += [f"{mean / detector[size]:.0f}x"]
        cells += [f"{np.mean(truth_ious[label]):.2f}"]
        print(f"| {label} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
