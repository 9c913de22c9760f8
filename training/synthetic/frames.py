"""One trap frame: a camera's scene, 0-3 animals placed on the ground, light, day or IR night.

`render_trap_frame(spec)` is a pure function of a `FrameSpec`: the same spec gives the same
pixels. Animals are drawn far to near, so nearer ones (and foreground rocks) occlude farther
ones; each animal's ground truth is its *visible* mask and the tight box around it, the
MegaDetector convention for partly hidden animals.

Frames of one burst (`frame_num` 0, 1, 2 of a sequence) show the same animals a little
further along their walk, as a real trap's 3-shot burst does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from snowtrap.training.synthetic.bodies import (
    LEOPARD,
    Build,
    Pose,
    body_parts,
    distractor_build,
    ground_level,
    leopard_build,
    random_pose,
)
from snowtrap.training.synthetic.coats import body_to_coat, distractor_coat, leopard_coat
from snowtrap.training.synthetic.noise import fbm, jitter_colour, rng_for
from snowtrap.training.synthetic.scenes import camera_scene, infrared, light_frame, real_scene

__all__ = ["AnimalSpec", "FrameSpec", "RenderedAnimal", "TrapFrame", "render_trap_frame"]


@dataclass(frozen=True)
class AnimalSpec:
    """Who is in the frame: a leopard individual, or a distractor with an appearance seed."""

    species: str
    individual_id: str | None = None  # leopards only: fixes coat and build
    appearance_seed: int = 0  # distractors: fixes build and coat


@dataclass(frozen=True)
class FrameSpec:
    camera_id: str
    sequence_seed: int
    frame_num: int = 0
    night: bool = False
    width: int = 640
    height: int = 480
    animals: tuple[AnimalSpec, ...] = ()
    occlusion: bool = False  # a foreground rock or tuft may hide part of an animal
    shadows: bool = True  # contact shadows (tests turn them off to compare pixels)
    background: str | None = None  # a real photograph to use as the scene instead of terrain


@dataclass
class RenderedAnimal:
    species: str
    individual_id: str | None
    box: tuple[int, int, int, int]  # x, y, w, h in pixels: tight around the visible mask
    mask: np.ndarray = field(repr=False)  # HxW bool, visible pixels
    visible_fraction: float = 1.0  # visible pixels / drawn pixels (occlusion, frame edges)
    flipped: bool = False


@dataclass
class TrapFrame:
    spec: FrameSpec
    rgb: np.ndarray = field(repr=False)  # HxWx3 uint8
    animals: list[RenderedAnimal]


# --- placement and drawing ------------------------------------------------------------------


def _build_and_coat(animal: AnimalSpec) -> tuple[Build, np.ndarray]:
    if animal.species == LEOPARD:
        if animal.individual_id is None:
            raise ValueError("a snow leopard needs an individual_id (it fixes the coat)")
        return leopard_build(animal.individual_id), leopard_coat(animal.individual_id)
    return (
        distractor_build(animal.species, animal.appearance_seed),
        distractor_coat(animal.species, animal.appearance_seed),
    )


def _body_to_pixels(pose: Pose, scale: float, foot: tuple[float, float], ground: float):
    """3x3 affine body units -> pixels; body point (0, ground) lands on `foot`."""
    stretch = np.diag([pose.stretch_x, pose.stretch_y, 1.0])
    flip = np.diag([-1.0 if pose.flip else 1.0, 1.0, 1.0])
    angle = math.radians(pose.rotation_deg) * (1.0 if pose.flip else -1.0)
    c, s = math.cos(angle), math.sin(angle)
    rotate = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    linear = np.diag([scale, scale, 1.0]) @ rotate @ flip @ stretch
    anchor = linear @ np.array([0.0, ground, 1.0])
    linear[0, 2] = foot[0] - anchor[0]
    linear[1, 2] = foot[1] - anchor[1]
    return linear


def _draw_animal(
    canvas: np.ndarray, build: Build, coat: np.ndarray, pose: Pose, to_pixels: np.ndarray
) -> np.ndarray:
    """Composite the animal into `canvas` (in place); returns its drawn mask (HxW bool)."""
    height, width = canvas.shape[:2]
    parts, _ = body_parts(build, pose)
    projected = [
        [p @ to_pixels[:2, :2].T + to_pixels[:2, 2] for p in part.polygons] for part in parts
    ]
    points = np.concatenate([np.concatenate(polys) for polys in projected])
    x0 = max(0, int(np.floor(points[:, 0].min())) - 2)
    y0 = max(0, int(np.floor(points[:, 1].min())) - 2)
    x1 = min(width, int(np.ceil(points[:, 0].max())) + 3)
    y1 = min(height, int(np.ceil(points[:, 1].max())) + 3)
    drawn = np.zeros((height, width), bool)
    if x1 <= x0 or y1 <= y0:
        return drawn
    local_w, local_h = x1 - x0, y1 - y0
    offset = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
    pixels_to_body = np.linalg.inv(to_pixels)
    region = canvas[y0:y1, x0:x1]
    vertical = np.linspace(-1.0, 1.0, local_h, dtype=np.float32)[:, None, None]
    for part, polys in zip(parts, projected, strict=True):
        mask = np.zeros((local_h, local_w), np.uint8)
        for polygon in polys:  # one by one: fillPoly's even-odd rule would punch holes
            cv2.fillConvexPoly(mask, np.round(polygon - [x0, y0]).astype(np.int32), 1)
        inside = mask.astype(bool)
        if not inside.any():
            continue
        if part.colour is not None:
            paint = np.broadcast_to(np.array(part.colour, np.float32), (local_h, local_w, 3))
        else:
            to_coat = body_to_coat() @ np.linalg.inv(part.texture_transform) @ pixels_to_body
            to_coat = to_coat @ offset
            paint = cv2.warpAffine(
                coat,
                to_coat[:2],
                (local_w, local_h),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REFLECT,
            )
        paint = paint * (part.shade * (1.04 - 0.08 * vertical))  # light from above
        region[inside] = paint[inside]
        drawn[y0:y1, x0:x1] |= inside
    return drawn


def _shadow(canvas: np.ndarray, foot: tuple[float, float], scale: float, rng) -> None:
    """A soft contact shadow on the ground under the animal."""
    height, width = canvas.shape[:2]
    shadow = np.zeros((height, width), np.float32)
    axes = (max(2, int(scale * 0.75)), max(1, int(scale * 0.08)))
    cv2.ellipse(shadow, (int(foot[0]), int(foot[1])), axes, 0, 0, 360, 1.0, -1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(1.0, scale * 0.05))
    canvas *= (1.0 - rng.uniform(0.25, 0.45) * shadow)[..., None]


def _occluder(canvas: np.ndarray, rng, box: tuple[int, int, int, int]) -> np.ndarray:
    """A foreground rock over the lower or side part of an animal's box; returns its mask."""
    height, width = canvas.shape[:2]
    x, y, w, h = box
    mask = np.zeros((height, width), np.uint8)
    side = rng.random()
    if side < 0.6:  # from below: a rock in front of the legs
        centre = (int(x + w * rng.uniform(0.2, 0.8)), int(y + h * rng.uniform(1.0, 1.25)))
        axes = (int(w * rng.uniform(0.3, 0.55)), int(h * rng.uniform(0.45, 0.7)))
    else:  # from one side
        cx = x + (-w * 0.1 if side < 0.8 else w * 1.1)
        centre = (int(cx), int(y + h * rng.uniform(0.4, 0.9)))
        axes = (int(w * rng.uniform(0.25, 0.4)), int(h * rng.uniform(0.5, 0.9)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(-20, 20)), 0, 360, 1, -1)
    inside = mask.astype(bool)
    colour = jitter_colour(rng, (112, 106, 96), 0.22)
    texture = 1.0 + 0.12 * fbm(rng, height, width, cell=max(4.0, w / 10), octaves=3)
    rows = np.linspace(1.1, 0.8, height, dtype=np.float32)[:, None]
    rock = colour[None, None, :] * (texture * rows)[..., None]
    canvas[inside] = rock[inside]
    return inside


def _footprint(scale: float, foot: tuple[float, float]) -> tuple[float, float, float, float]:
    """Rough xyxy extent of a standing animal (torso, head and tail) around its foot point."""
    return (foot[0] - 1.25 * scale, foot[1] - 0.9 * scale, foot[0] + 1.25 * scale, foot[1])


def _crowded(box: tuple[float, float, float, float], others: list) -> bool:
    """More than a fifth of the smaller footprint already taken by another animal."""
    for other in others:
        w = min(box[2], other[2]) - max(box[0], other[0])
        h = min(box[3], other[3]) - max(box[1], other[1])
        if w > 0 and h > 0:
            smaller = min(
                (box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1])
            )
            if w * h > 0.2 * smaller:
                return True
    return False


def _placement(
    spec: FrameSpec, index: int, build: Build, horizon: int, taken: list
) -> tuple[Pose, float, tuple[float, float]]:
    """Pose, scale (pixels per body unit) and foot point of animal `index` in this frame.

    Animals of one frame mostly stand apart (a few tries to avoid `taken` footprints), as
    two leopards walking through a trap's field of view usually do; a burst keeps the
    placement and moves the animal along.
    """
    width, height = spec.width, spec.height
    ground_top = max(horizon, 0) + (height - horizon) * 0.3
    for attempt in range(12):
        base = rng_for("place", spec.sequence_seed, index, attempt)
        depth = base.uniform(0.0, 1.0)  # 0: far, 1: near
        scale = width * (0.11 + 0.2 * depth**1.3) * base.uniform(0.9, 1.1)
        foot_y = min(ground_top + (height * 0.97 - ground_top) * (0.25 + 0.75 * depth), height - 2)
        flip = bool(base.random() < 0.5)
        extent = scale * 1.3
        foot_x = base.uniform(extent * 0.8, width - extent * 0.8)
        speed = scale * base.uniform(0.05, 0.2) * (-1.0 if flip else 1.0)
        if not _crowded(_footprint(scale, (foot_x, foot_y)), taken):
            break
    taken.append(_footprint(scale, (foot_x, foot_y)))
    pose = random_pose(rng_for("pose", spec.sequence_seed, index, spec.frame_num), build, flip)
    foot = (float(foot_x + speed * spec.frame_num), float(foot_y))
    return pose, float(scale), foot


def render_trap_frame(spec: FrameSpec) -> TrapFrame:
    """Render one frame with exact ground truth (boxes and visible masks)."""
    if spec.background is not None:
        scene, horizon = real_scene(spec.background, spec.width, spec.height, spec.sequence_seed)
    else:
        scene, horizon = camera_scene(spec.camera_id, spec.width, spec.height)
    canvas = scene.copy()
    light = rng_for("light", spec.sequence_seed, spec.frame_num)
    placed = []
    taken: list[tuple[float, float, float, float]] = []
    for index, animal in enumerate(spec.animals):
        build, coat = _build_and_coat(animal)
        pose, scale, foot = _placement(spec, index, build, horizon, taken)
        placed.append((foot[1], index, animal, build, coat, pose, scale, foot))
    placed.sort(key=lambda item: (item[0], item[1]))  # far (higher up) first

    drawn_masks: list[np.ndarray] = []
    full_area: list[float] = []
    for _, _, _, build, coat, pose, scale, foot in placed:
        if spec.shadows:
            _shadow(canvas, foot, scale, rng_for("shadow", spec.sequence_seed, len(drawn_masks)))
        to_pixels = _body_to_pixels(pose, scale, foot, ground_level(build, pose))
        drawn = _draw_animal(canvas, build, coat, pose, to_pixels)
        for earlier in drawn_masks:
            earlier &= ~drawn
        drawn_masks.append(drawn)
        full_area.append(float(drawn.sum()))

    if spec.occlusion and placed:
        occlusion_rng = rng_for("occlude", spec.sequence_seed, spec.frame_num)
        target = int(occlusion_rng.integers(len(placed)))
        ys, xs = np.nonzero(drawn_masks[target])
        if xs.size:
            box = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            hidden = _occluder(canvas, occlusion_rng, box)
            for mask in drawn_masks:
                mask &= ~hidden

    canvas = light_frame(light, canvas)
    if spec.night:
        near = np.zeros(canvas.shape[:2], np.float32)
        for mask in drawn_masks:
            near[mask] = 1.0
        near = np.maximum(near, np.linspace(0.0, 0.6, spec.height, dtype=np.float32)[:, None])
        canvas = infrared(light, canvas, near)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.6)
    rgb = np.clip(canvas + light.normal(0.0, 2.0, canvas.shape), 0, 255).astype(np.uint8)

    animals: list[RenderedAnimal] = []
    for (_, _, animal, _, _, pose, _, _), mask, area in zip(
        placed, drawn_masks, full_area, strict=True
    ):
        ys, xs = np.nonzero(mask)
        if xs.size < 20:  # hidden or outside the frame: not an annotation
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        box = (x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1)
        animals.append(
            RenderedAnimal(
                species=animal.species,
                individual_id=animal.individual_id,
                box=box,
                mask=mask,
                visible_fraction=float(xs.size / max(area, 1.0)),
                flipped=pose.flip,
            )
        )
    return TrapFrame(spec=spec, rgb=rgb, animals=animals)
