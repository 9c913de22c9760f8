"""Uploader speed: images/s from a local card into `trap.images`, and where the time goes.

One card of N trap-like JPEGs (1280 x 960, EXIF capture time and GPS, every file distinct;
cached under .cache/bench-uploader) is sent, in one run, three ways, each to fresh topics:

1. `snowtrap upload` as shipped (Uploader: read, sniff, capture time, GPS stripped, sha256,
   pending rows and acknowledgements in batched ledger transactions, sends pipelined);
2. the same with pending rows written one transaction per image (`ledger_batch_size=1`);
3. peer: a bare kafka-python producer with the uploader's producer settings sending the
   same files' bytes (read from disk, no hashing, no ledger, no stripping): the transport's
   own ceiling on this machine, the figure the uploader is compared with.

Prints the machine (with its load: these machines are shared), the inputs, images/s and
MiB/s per way, the ratio to the peer, and the uploader's per-phase breakdown (ms per image
on the uploading thread; what is left is kafka-python's sender thread and waiting).

Usage: python bench/uploader_throughput.py [--images 1000] [--bootstrap HOST:PORT]
Without --bootstrap (or KAFKA_BOOTSTRAP_SERVERS) it starts the project's local broker.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT)]

from bench.machine import describe_machine  # noqa: E402
from bench.stream_kafka import bench_broker  # noqa: E402
from snowtrap.stream.topics import TopicNames, ensure_topics  # noqa: E402
from snowtrap.stream.uploader import Uploader, UploaderSettings  # noqa: E402
from snowtrap.stream.uploader.prepare import PHASES  # noqa: E402

CACHE = REPO_ROOT / ".cache" / "bench-uploader"
BASES = 16
"""Distinct encoded frames; the card's files are these with a unique JPEG comment each."""


def base_frames(width: int, height: int) -> list[bytes]:
    """Trap-like JPEGs: smooth scene plus sensor noise, EXIF make, capture time and GPS."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(24)
    frames = []
    y, x = np.mgrid[0:height, 0:width]
    for index in range(BASES):
        scene = (np.sin(x / (40 + index)) + np.cos(y / (55 + 3 * index))) * 60 + 128
        pixels = scene[..., None] + rng.normal(0, 12, (height, width, 3))
        exif = Image.Exif()
        exif[0x010F] = "snowtrap bench"
        exif.get_ifd(0x8769)[0x9003] = f"2024:02:01 04:{index:02d}:07"
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2], gps[3], gps[4] = "N", (35.0, 52.0, 12.5), "E", (76.0, 30.0, 1.25)
        out = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            out, format="JPEG", quality=88, exif=exif
        )
        frames.append(out.getvalue())
    return frames


def write_card(n: int, width: int, height: int) -> Path:
    """N distinct files (a COM segment with the file's number after SOI), cached."""
    card = CACHE / f"card-{n}-{width}x{height}"
    if card.is_dir() and len(list(card.iterdir())) == n:
        return card
    card.mkdir(parents=True, exist_ok=True)
    frames = base_frames(width, height)
    for number in range(n):
        frame = frames[number % len(frames)]
        comment = f"bench card file {number:06d}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        (card / f"IMG_{number:06d}.JPG").write_bytes(frame[:2] + segment + frame[2:])
    return card


def run_uploader(bootstrap: str, card: Path, workdir: Path, **extra: object) -> dict[str, object]:
    topics = TopicNames().with_suffix(f".bench-{uuid.uuid4().hex[:8]}")
    ensure_topics(bootstrap, topics)
    settings = UploaderSettings(
        bootstrap_servers=bootstrap,
        topics=topics,
        camera_id="bench-cam",
        station_id="bench-station",
        ledger_path=workdir / f"ledger-{uuid.uuid4().hex[:8]}.sqlite3",
        progress=False,
        create_topics=False,
        **extra,  # type: ignore[arg-type]
    )
    started = time.perf_counter()
    summary = Uploader(settings).run([card])
    wall = time.perf_counter() - started
    assert summary.exit_code == 0 and not summary.failed, summary.failed[:3]
    return {
        "wall": wall,
        "images": len(summary.sent),
        "bytes": sum(o.size_bytes for o in summary.sent),
        "phases": summary.phases,
    }


def run_bare_producer(bootstrap: str, card: Path) -> dict[str, object]:
    """The peer: the uploader's producer settings, the files' bytes, nothing else."""
    from kafka import KafkaProducer

    topics = TopicNames().with_suffix(f".bench-{uuid.uuid4().hex[:8]}")
    ensure_topics(bootstrap, topics)
    config = UploaderSettings(bootstrap_servers=bootstrap, camera_id="c", station_id="s")
    producer = KafkaProducer(**config.producer_config())
    files = sorted(card.iterdir())
    started = time.perf_counter()
    futures = []
    sent_bytes = 0
    for path in files:
        data = path.read_bytes()
        sent_bytes += len(data)
        futures.append(producer.send(topics.images, key=b"bench-cam", value=data))
        if len(futures) >= config.max_in_flight:
            futures.pop(0).get(timeout=120)
    for future in futures:
        future.get(timeout=120)
    wall = time.perf_counter() - started
    producer.close()
    return {"wall": wall, "images": len(files), "bytes": sent_bytes, "phases": {}}


def print_report(
    rows: dict[str, dict[str, object]], inputs: dict[str, str], source: str, machine: dict
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    about = Table(title="machine and inputs", show_header=False)
    for name, value in {**machine, "broker": source, **inputs}.items():
        about.add_row(name, str(value))
    console.print(about)

    peer = rows["peer: bare kafka-python producer"]
    peer_rate = float(peer["images"]) / float(peer["wall"])  # type: ignore[arg-type]
    speed = Table(title="uploader throughput (local card -> trap.images, acks=all)")
    for column in ("way", "images", "seconds", "images/s", "MiB/s", "ratio to peer"):
        speed.add_column(column, justify="left" if column == "way" else "right")
    for way, row in rows.items():
        rate = float(row["images"]) / float(row["wall"])  # type: ignore[arg-type]
        mib = float(row["bytes"]) / float(row["wall"]) / 2**20  # type: ignore[arg-type]
        speed.add_row(
            way, str(row["images"]), f"{row['wall']:.2f}", f"{rate:.0f}", f"{mib:.1f}",
            f"{rate / peer_rate:.2f}",
        )  # fmt: skip
    console.print(speed)

    shipped = rows["uploader (as shipped)"]
    phases: dict[str, float] = shipped["phases"]  # type: ignore[assignment]
    images, wall = int(shipped["images"]), float(shipped["wall"])  # type: ignore[arg-type]
    breakdown = Table(title="uploader (as shipped): where the time goes, uploading thread")
    for column in ("phase", "ms per image", "% of wall"):
        breakdown.add_column(column, justify="left" if column == "phase" else "right")
    accounted = 0.0
    for phase in PHASES:
        seconds = phases.get(phase, 0.0)
        accounted += seconds
        breakdown.add_row(phase, f"{1000 * seconds / images:.3f}", f"{100 * seconds / wall:.1f}")
    other = wall - accounted
    breakdown.add_row(
        "other (walk, outcomes, start-up, recovery check, producer close)",
        f"{1000 * other / images:.3f}",
        f"{100 * other / wall:.1f}",
    )
    console.print(breakdown)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (else a local broker)")
    args = parser.parse_args()

    card = write_card(args.images, args.width, args.height)
    sizes = [path.stat().st_size for path in card.iterdir()]
    inputs = {
        "card": f"{len(sizes)} JPEGs {args.width}x{args.height} with EXIF GPS, "
        f"mean {sum(sizes) / len(sizes) / 1024:.0f} KiB ({card})",
        "settings": "UploaderSettings defaults (max_in_flight 32, ledger_batch_size 64, "
        "strip_gps on, ledger synchronous=FULL)",
    }
    with tempfile.TemporaryDirectory(prefix="snowtrap-bench-upload-") as tmp:
        workdir = Path(tmp)
        with bench_broker(args.bootstrap, workdir) as (bootstrap, source):
            run_bare_producer(bootstrap, card)  # warm-up: page cache, broker JIT, topics
            rows = {
                "uploader (as shipped)": run_uploader(bootstrap, card, workdir),
                "uploader, ledger_batch_size=1 (pending rows per image)": run_uploader(
                    bootstrap, card, workdir, ledger_batch_size=1
                ),
                "peer: bare kafka-python producer": run_bare_producer(bootstrap, card),
            }
            machine = describe_machine()
    print_report(rows, inputs, source, machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
