"""This project's LIME vs the reference `lime` package, same classifier, frames and samples.

Both explain the same frames with the same ONNX classifier (ONNX Runtime, same thread count),
the same number of perturbed samples, SLIC superpixels with the same parameters, the same
'off' colour (the frame's mean colour), kernel width 0.25 and ridge fit; both boxes come from
the same selection rule (top superpixels holding `--share` of the positive importance, 80% by
default as in the original method) and the same single pass over the whole frame (the
reference has no coarse-to-fine mode, so the comparison is of one LIME fit each). What
differs is the implementation, and where it works:

- `snowtrap`: squashes the frame to the classifier's 224 x 224 input once, segments there,
  builds each batch of perturbed inputs with one numpy gather, scores batches of 64;
- `lime`: `LimeImageExplainer.explain_instance` on the frame as given (the package's usual
  use), perturbing full-size copies one sample at a time (batch size 10, its default), with
  a classifier function that squashes each perturbed frame to 224 x 224.

Both sides pay for the same classifier forward passes (one per sample); the table shows that
floor (snowtrap's scoring time) and the ratio a LIME with no other cost at all would reach
against the reference (`ceiling`): where the frames are small, the classifier bounds the
ratio, whatever the implementation.

Rows: frames at their stored size and, to show what the reference costs on real trap
cameras, the same frames upscaled to 8 megapixels (3264 x 2448). The `lime @224` row gives
the reference the already-reduced 224 x 224 frame: the implementation difference alone.

Usage: python bench/lime_vs_reference.py [--run runs/synthetic] [--images 4] [--samples 500]
(a finished `snowtrap train` run supplies the classifier and held-out frames with truth).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine_line
from bench.run_inputs import missing_run_inputs
from snowtrap.models.boxes import box_iou
from snowtrap.models.inference import create_session, resize_rgb
from snowtrap.training.classify import read_coco_camera_traps
from snowtrap.training.evaluate import enclosing_box
from snowtrap.training.image_files import read_rgb
from snowtrap.training.lime import LimeSettings, explain_image, onnx_score_fn
from snowtrap.training.lime_maths import segment_box, segment_superpixels, select_by_positive_share

CAMERA_TRAP_SIZE = (2448, 3264)  # 8 MP, (height, width)


def reference_box(
    rgb: np.ndarray, session, settings: LimeSettings, seed: int
) -> tuple[np.ndarray | None, float, float]:
    """The reference package on `rgb` as given; returns (normalised box, seconds, seconds
    spent in the ONNX classifier itself)."""
    from lime import lime_image

    score = onnx_score_fn(session)
    scoring = [0.0]

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        batch = np.stack([resize_rgb(np.asarray(im, dtype=np.uint8), 224, 224) for im in images])
        started = time.perf_counter()
        p = score(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32))
        scoring[0] += time.perf_counter() - started
        return np.stack([1 - p, p], axis=1)

    def segmentation_fn(image: np.ndarray) -> np.ndarray:
        return segment_superpixels(
            image, settings.n_segments, settings.compactness, settings.slic_sigma
        )

    started = time.perf_counter()
    explainer = lime_image.LimeImageExplainer(kernel_width=settings.kernel_width, random_state=seed)
    explanation = explainer.explain_instance(
        rgb,
        classifier_fn,
        labels=(1,),
        top_labels=None,
        hide_color=rgb.reshape(-1, 3).mean(axis=0),
        num_samples=settings.num_samples,
        segmentation_fn=segmentation_fn,
        random_seed=seed,
    )
    segments = explanation.segments
    weights = np.zeros(int(segments.max()) + 1)
    for segment, weight in explanation.local_exp[1]:
        weights[segment] = weight
    selected = select_by_positive_share(weights, settings.positive_share)
    seconds = time.perf_counter() - started
    box = segment_box(segments, selected) if selected.size else None
    return box, seconds, scoring[0]


def iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return 0.0
    return float(box_iou(a, b)[0, 0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/synthetic"))
    parser.add_argument("--classifier", type=Path, default=None)
    parser.add_argument("--coco", type=Path, default=None, help="frames with truth (COCO CT)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--segments", type=int, default=60)
    parser.add_argument("--share", type=float, default=0.8, help="positive-importance share")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-8mp", action="store_true", help="leave out the 8 MP rows")
    args = parser.parse_args()

    classifier = args.classifier or args.run / "classify" / "classifier.onnx"
    coco = args.coco or args.run / "synthesise" / "heldout" / "annotations.json"
    needed = {str(classifier): classifier, str(coco): coco}
    if missing_run_inputs(needed, "--classifier and --coco"):
        return 2
    frames = [f for f in read_coco_camera_traps(coco) if f.label == 1][: args.images]
    session = create_session(classifier, ["CPUExecutionProvider"], args.threads)
    settings = LimeSettings(
        num_samples=args.samples, n_segments=args.segments, positive_share=args.share
    )
    score = onnx_score_fn(session)
    explain_image(read_rgb(frames[0].path), score, settings)  # warm-up

    variants = ["stored size", "lime @224"] + ([] if args.skip_8mp else ["8 MP"])
    rows: dict[str, list[tuple[float, ...]]] = {v: [] for v in variants}
    sizes = set()
    for frame in frames:
        rgb = read_rgb(frame.path)
        sizes.add(f"{rgb.shape[1]}x{rgb.shape[0]}")
        truth = enclosing_box(frame.boxes)[None] if frame.boxes is not None else None
        for variant in variants:
            if variant == "8 MP":
                image = resize_rgb(rgb, *CAMERA_TRAP_SIZE)
            elif variant == "lime @224":
                image = resize_rgb(rgb, 224, 224)
            else:
                image = rgb
            ours = explain_image(image, score, settings)
            ours_box = ours.boxes.single_box
            ref_box, ref_seconds, ref_scoring = reference_box(image, session, settings, seed=0)
            rows[variant].append(
                (
                    ours.seconds,
                    ours.timings["score"],
                    ref_seconds,
                    ref_scoring,
                    iou(ours_box, ref_box),
                    iou(ours_box, truth),
                    iou(ref_box, truth),
                )
            )

    print("## LIME: snowtrap vs reference `lime` package\n")
    print(f"machine: {machine_line()}")
    print(
        f"classifier: {classifier} (ONNX Runtime, CPU, intra-op threads "
        f"{args.threads or 'all usable'})"
    )
    print(
        f"frames: {len(frames)} held-out leopard frames from {coco} (stored sizes "
        f"{', '.join(sorted(sizes))}); samples per frame {args.samples}; SLIC n_segments "
        f"{args.segments}; selection: top superpixels with {args.share:.0%} of positive "
        "importance\n"
    )
    print(
        "| frames at | snowtrap s/image (classifier) | lime s/image (classifier) | "
        "lime / snowtrap | ceiling | IoU(snowtrap box, lime box) | IoU vs truth: snowtrap | "
        "IoU vs truth: lime |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for variant in variants:
        ours_s, ours_score, ref_s, ref_score, pair_iou, ours_iou, ref_iou = np.array(
            rows[variant]
        ).mean(axis=0)
        print(
            f"| {variant} | {ours_s:.2f} ({ours_score:.2f}) | {ref_s:.2f} ({ref_score:.2f}) | "
            f"{ref_s / ours_s:.1f}x | {ref_s / ours_score:.1f}x | {pair_iou:.2f} | "
            f"{ours_iou:.2f} | {ref_iou:.2f} |"
        )
    print(
        "\nceiling: lime's time over snowtrap's classifier time alone, the ratio of a LIME "
        "whose only cost is the classifier's forward passes."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
