"""Animal body plans: silhouettes built from ellipses and tapered limbs, in body units.

Body units: the torso is 1 unit long, centred on the origin, x points to the head, y points
down. An animal is a list of `Part`s (far legs, tail, torso, near legs, head), each a set of
convex polygons, so they rasterise exactly and fast. A `Build` holds the proportions of one
animal (fixed per snow-leopard individual, so its silhouette is as stable as its coat); a
`Pose` holds what changes from frame to frame (gait, tail, head, flip, rotation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from snowtrap.training.synthetic.noise import rng_for

__all__ = [
    "DISTRACTOR_SPECIES",
    "LEOPARD",
    "SPECIES",
    "SPOTTED_CAT",
    "Build",
    "Part",
    "Pose",
    "body_parts",
    "distractor_build",
    "leopard_build",
    "random_pose",
]

LEOPARD = "snow_leopard"
DISTRACTOR_SPECIES: tuple[str, ...] = ("ibex", "blue_sheep", "fox", "marmot")
# A golden spotted cat (leopard, ocelot, cheetah-like): not a snow leopard, but spotted. Drawn
# only where a survey asks for it (`spotted_cat_share`), so older surveys keep their frames.
SPOTTED_CAT = "spotted_cat"
SPECIES: tuple[str, ...] = (LEOPARD, *DISTRACTOR_SPECIES, SPOTTED_CAT)

Polygon = np.ndarray  # (N, 2) float64, convex, body units


@dataclass(frozen=True)
class Build:
    """Proportions of one animal, in body units (torso length = 1)."""

    species: str
    body_ry: float  # torso half-height
    leg_len: float  # hip line to ground
    leg_w: float  # lower-leg thickness
    thigh_w: float  # upper-leg thickness at the hip
    hoof: bool  # hooves (ungulates) or paws
    neck_rise: float  # how far up the head sits above the back line
    neck_reach: float  # how far forward the head sits
    neck_w: float
    head_rx: float
    head_ry: float
    snout_len: float
    snout_w: float
    ear: str  # 'round' | 'pointed' | 'small'
    ear_size: float
    tail_len: float
    tail_w: float
    tail_droop: tuple[float, float]  # degrees below horizontal at the root (range)
    tail_curl: tuple[float, float]  # degrees turned over the tail's length (range)
    horns: str  # 'none' | 'ibex' | 'bharal'
    horn_len: float = 0.0
    horn_w: float = 0.0
    horn_colour: tuple[float, float, float] = (70.0, 62.0, 52.0)
    tail_tip_colour: tuple[float, float, float] | None = None
    hoof_colour: tuple[float, float, float] = (40.0, 36.0, 32.0)


@dataclass(frozen=True)
class Pose:
    """What changes between frames: gait, tail and head carriage, view."""

    flip: bool = False  # True: the animal faces left in the frame
    rotation_deg: float = 0.0  # slope the animal stands on (positive: nose up)
    stretch_x: float = 1.0
    stretch_y: float = 1.0
    gait_phase: float = 0.0  # radians
    stride: float = 0.3  # leg swing amplitude, radians
    tail_droop_deg: float = 40.0
    tail_curl_deg: float = -90.0
    head_tilt_deg: float = 0.0  # positive: head lowered
    crouch: float = 0.0  # 0..0.35, legs shortened (stalking)


@dataclass
class Part:
    """Convex polygons drawn with one texture mapping and one shade.

    `texture_transform` (3x3, body units -> body units) moves the coat with the part: the
    head turns with its spots instead of sliding under them.
    """

    name: str
    polygons: list[Polygon]
    shade: float = 1.0
    colour: tuple[float, float, float] | None = None  # flat colour instead of the coat
    texture_transform: np.ndarray = field(default_factory=lambda: np.eye(3))


# --- geometry helpers -----------------------------------------------------------------------


def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 28) -> Polygon:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def limb(points: np.ndarray, widths: np.ndarray, caps: bool = True) -> list[Polygon]:
    """A tapered chain (leg, tail, horn) as convex trapezoids plus round joints."""
    points = np.asarray(points, dtype=np.float64)
    widths = np.asarray(widths, dtype=np.float64)
    polygons: list[Polygon] = []
    for i in range(len(points) - 1):
        a, b = points[i], points[i + 1]
        direction = b - a
        length = float(np.hypot(*direction))
        if length < 1e-9:
            continue
        normal = np.array([-direction[1], direction[0]]) / length
        wa, wb = widths[i] / 2.0, widths[i + 1] / 2.0
        polygons.append(
            np.array([a + normal * wa, b + normal * wb, b - normal * wb, a - normal * wa])
        )
    joints = range(len(points)) if caps else range(1, len(points) - 1)
    for i in joints:
        polygons.append(ellipse(points[i][0], points[i][1], widths[i] / 2.0, widths[i] / 2.0, n=16))
    return polygons


def rotation_about(pivot: tuple[float, float], angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    px, py = pivot
    return np.array([[c, -s, px - c * px + s * py], [s, c, py - s * px - c * py], [0.0, 0.0, 1.0]])


def apply(transform: np.ndarray, polygon: Polygon) -> Polygon:
    return polygon @ transform[:2, :2].T + transform[:2, 2]


def _curve(start: np.ndarray, length: float, angles_deg: np.ndarray) -> np.ndarray:
    """Centre line from `start`, one segment per angle (0 = straight back, +90 = down)."""
    step = length / len(angles_deg)
    points = [np.asarray(start, dtype=np.float64)]
    for angle in np.radians(angles_deg):
        points.append(points[-1] + step * np.array([-math.cos(angle), math.sin(angle)]))
    return np.array(points)


# --- builds ---------------------------------------------------------------------------------


def leopard_build(individual_id: str) -> Build:
    """A snow leopard's proportions, fixed by its id: low, thick-legged, very long thick tail."""
    rng = rng_for("build", LEOPARD, individual_id)
    u = rng.uniform
    return Build(
        species=LEOPARD,
        body_ry=u(0.17, 0.2),
        leg_len=u(0.3, 0.36),
        leg_w=u(0.085, 0.1),
        thigh_w=u(0.2, 0.24),
        hoof=False,
        neck_rise=u(0.05, 0.1),
        neck_reach=u(0.6, 0.66),
        neck_w=u(0.2, 0.24),
        head_rx=u(0.125, 0.14),
        head_ry=u(0.105, 0.12),
        snout_len=u(0.06, 0.08),
        snout_w=u(0.1, 0.12),
        ear="round",
        ear_size=u(0.03, 0.04),
        tail_len=u(1.0, 1.2),
        tail_w=u(0.1, 0.125),
        tail_droop=(15.0, 75.0),
        tail_curl=(-170.0, -40.0),
        horns="none",
    )


def distractor_build(species: str, seed: int) -> Build:
    """Proportions of a non-leopard animal (one animal, drawn fresh per appearance seed)."""
    if species == SPOTTED_CAT:  # a cat's build with a thinner, shorter tail
        cat = leopard_build(f"{SPOTTED_CAT}-{seed}")
        return replace(
            cat, species=SPOTTED_CAT, tail_w=cat.tail_w * 0.55, tail_len=cat.tail_len * 0.8
        )
    rng = rng_for("build", species, seed)
    u = rng.uniform
    if species == "ibex":
        return Build(
            species=species, body_ry=u(0.19, 0.22), leg_len=u(0.5, 0.58), leg_w=u(0.05, 0.06),
            thigh_w=u(0.16, 0.19), hoof=True, neck_rise=u(0.3, 0.38), neck_reach=u(0.62, 0.7),
            neck_w=u(0.16, 0.19), head_rx=u(0.1, 0.12), head_ry=u(0.07, 0.08),
            snout_len=u(0.1, 0.13), snout_w=u(0.07, 0.08), ear="pointed", ear_size=u(0.04, 0.05),
            tail_len=u(0.1, 0.14), tail_w=u(0.05, 0.06), tail_droop=(-40.0, -10.0),
            tail_curl=(-10.0, 10.0), horns="ibex", horn_len=u(0.6, 0.85), horn_w=u(0.065, 0.08),
            horn_colour=(u(60, 90), u(55, 75), u(45, 60)),
        )  # fmt: skip
    if species == "blue_sheep":
        return Build(
            species=species, body_ry=u(0.21, 0.24), leg_len=u(0.44, 0.5), leg_w=u(0.055, 0.065),
            thigh_w=u(0.17, 0.2), hoof=True, neck_rise=u(0.22, 0.3), neck_reach=u(0.62, 0.68),
            neck_w=u(0.18, 0.21), head_rx=u(0.1, 0.12), head_ry=u(0.075, 0.085),
            snout_len=u(0.09, 0.11), snout_w=u(0.07, 0.08), ear="pointed", ear_size=u(0.04, 0.05),
            tail_len=u(0.1, 0.13), tail_w=u(0.05, 0.06), tail_droop=(-20.0, 20.0),
            tail_curl=(-10.0, 10.0), horns="bharal", horn_len=u(0.35, 0.5), horn_w=u(0.07, 0.09),
            horn_colour=(u(95, 125), u(85, 110), u(65, 85)),
        )  # fmt: skip
    if species == "fox":
        return Build(
            species=species, body_ry=u(0.14, 0.16), leg_len=u(0.36, 0.42), leg_w=u(0.045, 0.055),
            thigh_w=u(0.13, 0.15), hoof=False, neck_rise=u(0.1, 0.16), neck_reach=u(0.62, 0.68),
            neck_w=u(0.14, 0.17), head_rx=u(0.1, 0.11), head_ry=u(0.08, 0.09),
            snout_len=u(0.13, 0.16), snout_w=u(0.06, 0.07), ear="pointed", ear_size=u(0.065, 0.08),
            tail_len=u(0.75, 0.9), tail_w=u(0.15, 0.19), tail_droop=(20.0, 50.0),
            tail_curl=(-30.0, 10.0), horns="none", tail_tip_colour=(232.0, 228.0, 220.0),
            hoof_colour=(35.0, 28.0, 24.0),
        )  # fmt: skip
    if species == "marmot":
        return Build(
            species=species, body_ry=u(0.28, 0.32), leg_len=u(0.12, 0.16), leg_w=u(0.1, 0.12),
            thigh_w=u(0.18, 0.22), hoof=False, neck_rise=u(0.02, 0.08), neck_reach=u(0.5, 0.56),
            neck_w=u(0.3, 0.36), head_rx=u(0.16, 0.18), head_ry=u(0.13, 0.15),
            snout_len=u(0.05, 0.07), snout_w=u(0.1, 0.12), ear="small", ear_size=u(0.03, 0.04),
            tail_len=u(0.3, 0.4), tail_w=u(0.09, 0.11), tail_droop=(0.0, 40.0),
            tail_curl=(-40.0, 0.0), horns="none", tail_tip_colour=(60.0, 45.0, 35.0),
        )  # fmt: skip
    raise ValueError(f"unknown species {species!r}; known: {', '.join(SPECIES)}")


def random_pose(rng: np.random.Generator, build: Build, flip: bool | None = None) -> Pose:
    """A plausible standing/walking pose for this build."""
    return Pose(
        flip=bool(rng.random() < 0.5) if flip is None else flip,
        rotation_deg=float(np.clip(rng.normal(0.0, 6.0), -22.0, 22.0)),
        stretch_x=float(rng.uniform(0.92, 1.08)),
        stretch_y=float(rng.uniform(0.93, 1.07)),
        gait_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        stride=float(rng.uniform(0.12, 0.4)),
        tail_droop_deg=float(rng.uniform(*build.tail_droop)),
        tail_curl_deg=float(rng.uniform(*build.tail_curl)),
        head_tilt_deg=float(rng.uniform(-12.0, 22.0)),
        crouch=float(rng.uniform(0.0, 0.3)) if build.species == LEOPARD else 0.0,
    )


# --- the body -------------------------------------------------------------------------------


def ground_level(build: Build, pose: Pose) -> float:
    """y of the soles in body units."""
    return build.body_ry * 0.35 + build.leg_len * (1.0 - pose.crouch)


def _leg(build: Build, pose: Pose, hip_x: float, front: bool, phase_offset: float) -> list[Polygon]:
    hip = np.array([hip_x, build.body_ry * 0.35])
    ground = ground_level(build, pose)
    phase = pose.gait_phase + phase_offset
    swing = pose.stride * math.sin(phase)
    lift = max(0.0, math.cos(phase)) * 0.25 * build.leg_len * (pose.stride / 0.4)
    paw_h = build.leg_w * (0.35 if build.hoof else 0.45)
    length = ground - hip[1] - paw_h - lift
    paw = hip + np.array([length * math.sin(swing), length * math.cos(swing)])
    bend = (-0.05 if front else -0.09) * build.leg_len / 0.35
    knee = (hip + paw) / 2.0 + np.array([bend if not front else -bend * 0.4, 0.0])
    thigh = build.thigh_w * (1.0 if not front else 0.85)
    polygons = limb(np.array([hip, knee, paw]), np.array([thigh, build.leg_w, build.leg_w * 0.9]))
    if build.hoof:
        polygons.append(
            np.array(
                [
                    paw + np.array([-build.leg_w * 0.5, 0.0]),
                    paw + np.array([build.leg_w * 0.6, 0.0]),
                    paw + np.array([build.leg_w * 0.75, paw_h * 2.0]),
                    paw + np.array([-build.leg_w * 0.5, paw_h * 2.0]),
                ]
            )
        )
    else:
        polygons.append(
            ellipse(paw[0] + build.leg_w * 0.3, paw[1] + paw_h * 0.6, build.leg_w * 0.75, paw_h)
        )
    return polygons


def body_parts(build: Build, pose: Pose) -> tuple[list[Part], dict[str, np.ndarray]]:
    """The animal's parts in drawing order, and named feature points (eyes, nose)."""
    ry = build.body_ry
    ground = ground_level(build, pose)
    parts: list[Part] = []

    # Walk: hind legs lead their front legs by a quarter cycle; far side half a cycle later.
    front_x, hind_x = 0.3, -0.3
    far_front = _leg(build, pose, front_x + 0.04, True, 1.5 * math.pi)
    far_hind = _leg(build, pose, hind_x + 0.04, False, math.pi)
    near_front = _leg(build, pose, front_x, True, 0.5 * math.pi)
    near_hind = _leg(build, pose, hind_x, False, 0.0)
    hoof_colour = build.hoof_colour
    far_legs = Part("far_legs", far_front[:-1] + far_hind[:-1], shade=0.68)
    parts.append(far_legs)
    parts.append(Part("far_feet", [far_front[-1], far_hind[-1]], shade=0.68,
                      colour=hoof_colour if build.hoof else None))  # fmt: skip

    # Tail: droops from the root, then curls (a snow leopard's tip turns up).
    root = np.array([-0.47, -ry * 0.45])
    n_segments = 18
    t = (np.arange(n_segments) + 0.5) / n_segments
    angles = pose.tail_droop_deg + pose.tail_curl_deg * t**1.6
    centre = _curve(root, build.tail_len, angles)
    floor = ground - build.tail_w * 0.6
    centre[:, 1] = np.minimum(centre[:, 1], floor)
    widths = build.tail_w * (0.85 + 0.3 * np.linspace(0.0, 1.0, len(centre)))
    if build.species == "fox":
        widths = build.tail_w * (0.5 + 0.7 * np.sin(np.linspace(0.4, 2.6, len(centre))))
    parts.append(Part("tail", limb(centre, widths), shade=0.97))
    if build.tail_tip_colour is not None:
        tip = centre[-4:]
        parts.append(Part("tail_tip", limb(tip, widths[-4:]), colour=build.tail_tip_colour))

    # Torso: a long ellipse with chest and haunch bulges.
    torso = [
        ellipse(0.0, 0.0, 0.5, ry, n=40),
        ellipse(0.3, 0.02, 0.22, ry * 1.05),
        ellipse(-0.3, -0.01, 0.23, ry * 1.04),
        ellipse(0.0, ry * 0.2, 0.4, ry * 0.88),
    ]
    parts.append(Part("torso", torso))
    parts.append(Part("near_legs", near_front[:-1] + near_hind[:-1]))
    parts.append(Part("near_feet", [near_front[-1], near_hind[-1]],
                      colour=hoof_colour if build.hoof else None))  # fmt: skip

    # Neck and head, turned as one rigid piece about the withers.
    pivot = (0.36, -ry * 0.2)
    head_turn = rotation_about(pivot, math.radians(pose.head_tilt_deg))
    head_centre = np.array([build.neck_reach, -ry * 0.45 - build.neck_rise])
    neck = limb(
        np.array([[0.3, -ry * 0.05], [0.42, -ry * 0.25 - build.neck_rise * 0.5], head_centre]),
        np.array([build.neck_w * 1.25, build.neck_w, build.neck_w * 0.8]),
    )
    hx, hy = head_centre
    head = [ellipse(hx, hy, build.head_rx, build.head_ry, n=32)]
    snout_x = hx + build.head_rx * 0.55 + build.snout_len * 0.5
    snout_y = hy + build.head_ry * 0.3
    head.append(ellipse(snout_x, snout_y, build.snout_len * 0.5 + build.head_rx * 0.35,
                        build.snout_w * 0.5, angle=0.15))  # fmt: skip
    ear_r = build.ear_size
    ear_xs = (hx - build.head_rx * 0.35, hx + build.head_rx * 0.05)
    for ex in ear_xs:
        base_y = hy - build.head_ry * 0.8
        if build.ear == "pointed":
            head.append(np.array([[ex - ear_r * 0.6, base_y + ear_r * 0.3],
                                  [ex + ear_r * 0.6, base_y + ear_r * 0.3],
                                  [ex - ear_r * 0.25, base_y - ear_r * 1.5]]))  # fmt: skip
        else:
            scale = 1.0 if build.ear == "round" else 0.7
            head.append(ellipse(ex, base_y, ear_r * scale, ear_r * 0.85 * scale, n=16))
    parts.append(Part("head", [apply(head_turn, p) for p in neck + head],
                      texture_transform=head_turn))  # fmt: skip

    if build.horns != "none":
        base = np.array([hx - build.head_rx * 0.2, hy - build.head_ry * 0.75])
        n_h = 10
        s = np.linspace(0.0, 1.0, n_h)
        # ibex: a long scimitar sweep back over the body; bharal: thick, out and down
        angles = -75.0 + 80.0 * s if build.horns == "ibex" else -60.0 + 170.0 * s
        horn = _curve(base, build.horn_len, angles[:-1])
        widths = build.horn_w * (1.0 - 0.7 * np.linspace(0.0, 1.0, len(horn)))
        parts.append(Part("horns", [apply(head_turn, p) for p in limb(horn, widths)],
                          colour=build.horn_colour, texture_transform=head_turn))  # fmt: skip

    eye = np.array([hx + build.head_rx * 0.45, hy - build.head_ry * 0.2])
    nose = np.array([snout_x + build.snout_len * 0.5 + build.head_rx * 0.3, snout_y - 0.005])
    features = {
        "eye": apply(head_turn, eye[None, :])[0],
        "nose": apply(head_turn, nose[None, :])[0],
        "ground": np.array([0.0, ground]),
    }
    return parts, features
