"""What the zero-shot bundle (`snowtrap bundle zero-shot`) does: the figures in its manifest.

Runs the bundle as the stream worker does (reduced decode to the manifest's analysis side,
ONNX Runtime, the manifest's thresholds) on

- the real negative frames of `data/realdata` (no snow leopard: empties, other animals with
  an ocelot and a leopard, a person, a vehicle): classifier scores, frames through the gate,
  and detector boxes at the crop and detection thresholds with the detector run on every
  frame (as `detect_all` would);
- a synthetic survey (`training.synthetic.write_dataset`, default 60 frames, seed 0): gate
  recall on leopard frames and false alarms on the others; the detector's top box against
  the true leopard box it overlaps most (IoU), on every leopard frame whatever its score and
  on the gated ones; the share of top boxes whose centre lies in a true box;

and times the classifier and the detector per image (batches of 8, after a warm-up).
Also prints a sweep of the CAM fraction and input size on the synthetic leopard frames
(torch, top box IoU), which is how the defaults were looked at; the thresholds come from
the real negatives only.

Usage: python bench/zero_shot.py [--bundle DIR] [--images 60] [--seed 0] [--threads 2]
       [--sweep]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine_line
from snowtrap.models.boxes import box_iou, xywh_to_xyxy
from snowtrap.models.bundle import ModelBundle, load_bundle
from snowtrap.models.decode import decode_trap_image

REPO = Path(__file__).resolve().parents[1]
REAL_LABELS = REPO / "data" / "realdata" / "labels.json"


def analysis_side(bundle: ModelBundle) -> int:
    """The worker's decode size: the largest model input of the bundle."""
    sides = [max(bundle.manifest.models["classifier"].input_size or (224, 224))]
    detector = bundle.manifest.models.get("detector")
    if detector is not None and detector.io is not None and detector.io.input_size:
        sides.append(max(detector.io.input_size))
    return max(sides)


def decode_all(paths: list[Path], side: int) -> list[np.ndarray]:
    return [decode_trap_image(path.read_bytes(), max_side=side).rgb for path in paths]


def real_negatives(bundle: ModelBundle) -> dict[str, object]:
    document = json.loads(REAL_LABELS.read_text())
    paths = [REAL_LABELS.parent / image["file_name"] for image in document["images"]]
    rgbs = decode_all(paths, analysis_side(bundle))
    thresholds = bundle.manifest.thresholds
    scores = bundle.classify(rgbs)
    found = bundle.detect(rgbs, min_score=0.0)
    box_scores = [[d.score for d in boxes] for boxes in found]
    worst = int(np.argmax(scores))
    top = [(b[0], s) for b, s in zip(box_scores, scores, strict=True) if b]
    return {
        "frames": len(rgbs),
        "max_score": float(scores.max()),
        "max_score_file": paths[worst].name,
        "pass_gate": int(np.sum(scores >= thresholds.classifier_gate)),
        "boxes_at_crop": sum(sum(s >= thresholds.crop for s in b) for b in box_scores),
        "boxes_at_detection": sum(
            sum(s >= thresholds.detection_confidence for s in b) for b in box_scores
        ),
        "max_box_score": max((max(b) for b in box_scores if b), default=0.0),
        "top_box_vs_classifier_max_relative_diff": max(
            (float(abs(b - s) / s) for b, s in top if s > 0), default=None
        ),
    }


def synthetic(bundle: ModelBundle, images: int, seed: int) -> dict[str, object]:
    from snowtrap.training.labelled_frames import read_labels
    from snowtrap.training.synthetic.dataset import write_dataset

    with tempfile.TemporaryDirectory(prefix="zs-synth-") as folder:
        write_dataset(folder, images, seed)
        frames = read_labels(Path(folder) / "annotations.json")
        rgbs = decode_all([frame.path for frame in frames], analysis_side(bundle))
    thresholds = bundle.manifest.thresholds
    scores = bundle.classify(rgbs)
    found = bundle.detect(rgbs, min_score=0.0)
    leopard = np.array([frame.label == 1 for frame in frames])
    ious, gated_ious, centres = [], [], 0
    for frame, rgb, score, boxes in zip(frames, rgbs, scores, found, strict=True):
        if frame.label != 1 or frame.boxes_xywh.shape[0] == 0:
            continue
        truth = frame.truth_xyxy(rgb.shape[1], rgb.shape[0])
        if not boxes:
            ious.append(0.0)
            continue
        top = xywh_to_xyxy(np.array(boxes[0].box_xywh_normalised))[0]
        best = float(box_iou(top, truth).max())
        ious.append(best)
        if score >= thresholds.classifier_gate:
            gated_ious.append(best)
        cx, cy = (top[0] + top[2]) / 2, (top[1] + top[3]) / 2
        centres += any(t[0] <= cx <= t[2] and t[1] <= cy <= t[3] for t in truth)
    passes = scores >= thresholds.classifier_gate
    return {
        "frames": len(frames),
        "leopard_frames": int(leopard.sum()),
        "gate_recall": float(passes[leopard].mean()) if leopard.any() else None,
        "gate_passed_leopard": int(passes[leopard].sum()),
        "gate_false_alarms": int(passes[~leopard].sum()),
        "others": int((~leopard).sum()),
        "mean_top_box_iou": float(np.mean(ious)) if ious else None,
        "top_box_iou_ge_0_5": int(sum(i >= 0.5 for i in ious)),
        "top_box_centre_in_truth": centres,
        "mean_top_box_iou_gated": float(np.mean(gated_ious)) if gated_ious else None,
        "max_leopard_score": float(scores[leopard].max()) if leopard.any() else None,
        "gated_top_box_scores": [
            round(boxes[0].score, 4)
            for boxes, score in zip(found, scores, strict=True)
            if boxes and score >= thresholds.classifier_gate
        ],
    }


def timings(bundle: ModelBundle, repeats: int = 3) -> dict[str, float]:
    """ms per image, batches of 8 frames of 384 x 288 (a 4:3 frame as the worker decodes it)."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (288, 384, 3), dtype=np.uint8) for _ in range(8)]
    bundle.classify(frames)
    bundle.detect(frames, min_score=0.0)
    result = {}
    for name, call in (
        ("classifier_ms_per_image", lambda: bundle.classify(frames)),
        ("detector_ms_per_image", lambda: bundle.detect(frames, min_score=0.0)),
    ):
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - started)
        result[name] = round(best * 1000.0 / len(frames), 1)
    return result


def sweep(images: int, seed: int) -> None:
    """Top-box IoU on synthetic leopard frames for CAM fractions and input sizes (torch)."""
    import torch

    from snowtrap.models.backbone import load_efficientnet_lite0
    from snowtrap.models.inference import resize_rgb
    from snowtrap.models.zero_shot import CamBoxDetector
    from snowtrap.training.labelled_frames import read_labels
    from snowtrap.training.synthetic.dataset import write_dataset

    net = load_efficientnet_lite0()
    with tempfile.TemporaryDirectory(prefix="zs-synth-") as folder:
        write_dataset(folder, images, seed)
        frames = [f for f in read_labels(Path(folder) / "annotations.json") if f.label == 1]
        print(f"sweep on {len(frames)} synthetic leopard frames: mean top-box IoU")
        for size in (224, 320, 384):
            rgbs = decode_all([f.path for f in frames], size)
            pixels = np.stack([resize_rgb(rgb, size, size) for rgb in rgbs]).astype(np.float32)
            tensor = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
            row = []
            for fraction in (0.2, 0.3, 0.4, 0.5, 0.6):
                detector = CamBoxDetector(net, size, cam_fraction=fraction).eval()
                with torch.no_grad():
                    boxes = detector(tensor)[0][:, 0].numpy() / size
                ious = [
                    float(box_iou(box, f.truth_xyxy(rgb.shape[1], rgb.shape[0])).max())
                    for f, rgb, box in zip(frames, rgbs, boxes, strict=True)
                ]
                row.append(f"{fraction}: {np.mean(ious):.3f}")
            print(f"  input {size}: " + "  ".join(row))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="default: build one")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="zs-bundle-") as folder:
        directory = args.bundle
        if directory is None:
            import torch

            from snowtrap.models.zero_shot import build_zero_shot_bundle

            torch.set_num_threads(args.threads)
            directory = build_zero_shot_bundle(Path(folder) / "zero-shot")
        bundle = load_bundle(directory, intra_op_threads=args.threads)
        thresholds = bundle.manifest.thresholds
        print(f"bundle {bundle.manifest.name} {bundle.version}: {thresholds}")
        result = {
            "real_negatives": real_negatives(bundle),
            "synthetic": synthetic(bundle, args.images, args.seed),
            "timing": timings(bundle),
        }
    print(json.dumps(result, indent=2))
    if args.sweep:
        sweep(args.images, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
