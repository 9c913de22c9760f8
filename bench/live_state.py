"""How fast the live page folds records into its state, and what a snapshot costs.

On start (and after every restart) `snowtrap live` re-reads the last 24 h of four topics, so
its catch-up time is this rate times a day's records. The peer, measured in the same run on the
same records, is parsing alone with the contracts (what any reader of the topics pays, e.g.
`snowtrap export`): the ratio is the page's own overhead (windows, joins, repeats). Also: one
`snapshot()` (what each open page gets per change) with the newest crops and every camera.

    .venv/bin/python -m bench.live_state [--images 20000] [--cameras 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from typing import Any

from PIL import Image

from bench.machine import machine_line
from snowtrap.devtools.sample_records import (
    sample_crop,
    sample_dead_letter,
    sample_detection,
    sample_identity,
)
from snowtrap.stream.contracts import (
    build_crop_message,
    build_deadletter_message,
    build_detection_message,
    parse_crop_message,
    parse_deadletter_message,
    parse_detection_message,
)
from snowtrap.stream.contracts.identities import build_identity_message, parse_identity_message
from snowtrap.stream.contracts.wire import IdentityRecordBody
from snowtrap.stream.live import LiveState

LEOPARD_EVERY = 20
"""One frame in 20 shows a leopard (camera traps: a few percent)."""
DEAD_EVERY = 100


def crop_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((160, 120), 60).convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def records(images: int, cameras: int) -> list[tuple[str, Any, Any, Any, int]]:
    """A day's records in publishing order: (role, key, value, headers, timestamp ms)."""
    now_ms = int(time.time() * 1000)
    jpeg = crop_jpeg()
    out: list[tuple[str, Any, Any, Any, int]] = []
    for i in range(images):
        at = now_ms - (images - i) * 1000
        name, camera = f"frame-{i}", f"cam-{i % cameras:03d}"
        if i % DEAD_EVERY == 1:
            letter = sample_dead_letter(name, "truncated", "decode", camera, offset=i)
            out.append(("deadletter", *build_deadletter_message(letter), at))
            continue
        leopard = i % LEOPARD_EVERY == 0
        record = sample_detection(name, camera, leopard=leopard, at=at / 1000, offset=i)
        out.append(("detections", *build_detection_message(record), at))
        if leopard:
            crop = sample_crop(name, camera, jpeg=jpeg)
            out.append(("crops", *build_crop_message(crop), at))
            identity = sample_identity(crop, "F-01")
            out.append(("identities", *build_identity_message(identity), at + 500))
    return out


def parse_only(batch: list[tuple[str, Any, Any, Any, int]]) -> None:
    """The peer: each record through its topic's contract, nothing kept."""
    for role, key, value, headers, _ in batch:
        if role == "detections":
            parse_detection_message(value)
        elif role == "crops":
            parse_crop_message(value, headers)
        elif role == "identities":
            IdentityRecordBody.model_validate(parse_identity_message(value))
        else:
            parse_deadletter_message(key, value, headers)


def fold(batch: list[tuple[str, Any, Any, Any, int]]) -> LiveState:
    state = LiveState(sightings=24, window_hours=24)
    for role, key, value, headers, at in batch:
        state.apply_record(role, key, value, headers, at)  # type: ignore[arg-type]
    return state


def best_of(repeats: int, run: Any) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--cameras", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    batch = records(args.images, args.cameras)
    parse_s, _ = best_of(args.repeats, lambda: parse_only(batch))
    fold_s, state = best_of(args.repeats, lambda: fold(batch))
    snapshots = [best_of(1, state.snapshot)[0] for _ in range(20)]
    snapshot = state.snapshot("/live")
    assert not snapshot["bad_records"], snapshot["bad_records"]
    size = len(json.dumps(snapshot, separators=(",", ":")))

    print(f"machine: {machine_line()}")
    print(f"inputs: {args.images} images on {args.cameras} cameras, a leopard every "
          f"{LEOPARD_EVERY} (crop + identity), a dead letter every {DEAD_EVERY}: "
          f"{len(batch)} records; best of {args.repeats}")  # fmt: skip
    print()
    rows = [
        ("parse with the contracts only (peer)", parse_s),
        ("LiveState.apply_record (the page)", fold_s),
    ]
    print(f"| {'reading all records':<40} | {'time':>9} | {'records/s':>10} |")
    print(f"| {'-' * 40} | {'-' * 9}: | {'-' * 10}: |")
    for name, seconds in rows:
        print(f"| {name:<40} | {seconds:>7.3f} s | {len(batch) / seconds:>10,.0f} |")
    print()
    print(f"page overhead over parsing alone: {fold_s / parse_s:.2f}x")
    shown = f"{len(snapshot['sightings'])} crops, {len(snapshot['cameras'])} cameras"
    median_ms = statistics.median(snapshots) * 1000
    print(f"snapshot ({shown}): median {median_ms:.2f} ms, {size / 1024:.1f} KiB of JSON")


if __name__ == "__main__":
    main()
