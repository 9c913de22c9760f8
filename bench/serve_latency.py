"""Latency and throughput of `snowtrap serve` on 127.0.0.1: fixed request rates and saturation,
dynamic batching on vs off in the same run.

Starts `snowtrap serve` as a subprocess (as deployed) three times: batching on (max batch 8,
max wait 5 ms), batching without waiting (max batch 8, max wait 0: a batch is whatever queued
while the previous one ran) and off (max batch 1). Against each it sends 1280x960 JPEGs, one
image per request: an empty trap frame (the classifier runs, the gate stops it) and a leopard
frame (the detector and its box follow) at fixed open-loop rates; the worker bench's survey
(bench/stream_frames.py: training.synthetic, 10% leopards; with `crops=true`, so the API
does the worker's work) and the real photographs of
data/realdata (scaled to 1280x960) at 20/s; each input then at saturation (a fixed number of
requests always in flight). Open loop: requests leave on schedule whether or not earlier ones
have answered, and latency counts from the scheduled send, so queueing shows. The load
generator is httpx async in this process, on the same cores as the server; where `vegeta`
(a Go open-loop load generator: `make bench-tools` builds it into build/bin) is found, the
fixed rates of the empty and leopard frames run again from it, same servers, same run: a
Python client's own CPU on the same two cores added 1-4 ms to the p50s it measured. vegeta
counts latency from when it sent each request (it keeps the schedule with as many workers as
it needs, so at these rates that is the scheduled time).

Reported: the machine, the inputs, per run p50/p95/p99 latency, achieved throughput, answers
that were not 200 (503: queue full), the mean model batch (the server's /metrics), the server's
CPU time per image (from /proc: a figure that holds on a shared machine) and the stage times
the answers carry; then the batching's gain (on / off, same run) and, given the Kafka worker's
images/s on the same survey from bench/stream_throughput.py (--worker-images-per-s), the ratio.

Usage: python bench/serve_latency.py [--bundle DIR] [--rates 10,20,40,80] [--duration 8]
       [--concurrency 16] [--worker-images-per-s 12.3] [--no-vegeta]
Without --bundle the cached test bundle of the tests is used (CAM stand-in detector).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

import httpx  # noqa: E402
from helpers.frames import make_frame  # noqa: E402
from helpers.live_processes import SNOWTRAP, metric_sum  # noqa: E402
from helpers.serve import wait_ready  # noqa: E402

from bench.machine import describe_machine  # noqa: E402
from bench.stream_frames import bench_frames  # noqa: E402
from bench.stream_runs import process_cpu_seconds  # noqa: E402
from snowtrap.stream.serve.cli import ADDRESS_LINE  # noqa: E402

VEGETA_LOCAL = REPO_ROOT / "build" / "bin" / "vegeta"
SIZE = (1280, 960)
REAL_DIR = REPO_ROOT / "data" / "realdata" / "images"
TARGETS = "targets (issue #25): empty p50 <= 15 ms and p99 <= 40 ms at 20/s; leopard p50 <= 60 ms"


@dataclass(frozen=True)
class ServerConfig:
    name: str
    max_batch: int
    max_wait_ms: float


CONFIGS = (
    ServerConfig("batching on", 8, 5.0),
    ServerConfig("batch, no wait", 8, 0.0),
    ServerConfig("batching off", 1, 0.0),
)
DEFAULT_CONFIG = CONFIGS[1]
"""What `snowtrap serve` runs unless told otherwise (max batch 8, no wait)."""
SURVEY = (48, 1280, 960, 0.1, 0.25, 1)
"""bench/stream_throughput.py's default survey (training.synthetic, 10% leopards), cached."""


@dataclass
class RunResult:
    config: str
    images: str
    load: str
    offered: float | None
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0
    mean_batch: float = float("nan")
    cpu_s: float = 0.0
    """The server's CPU time (all threads) during the run."""
    stage_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.statuses[200]

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_image(self) -> float:
        return self.cpu_s * 1000 / self.ok if self.ok else float("nan")

    def ms(self, q: float) -> float:
        ok = self.latencies_s
        return float(np.percentile(ok, q)) * 1000 if ok else float("nan")

    def stage(self, name: str) -> float:
        values = self.stage_ms.get(name, [])
        return float(np.mean(values)) if values else float("nan")


def jpeg(rgb: np.ndarray, quality: int = 88) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def inputs() -> dict[str, list[bytes]]:
    """The request bodies: an empty and a leopard trap frame (the tests' generator, whose
    leopards the stand-in detector boxes), the worker bench's survey, the real photos."""
    real = []
    for path in sorted(REAL_DIR.glob("*.jp*g")):
        with Image.open(path) as image:
            real.append(jpeg(np.asarray(image.convert("RGB").resize(SIZE, Image.BILINEAR))))
    survey = bench_frames(*SURVEY).frames
    return {
        "empty": [make_frame(seed, leopard=False, night=False, size=SIZE).jpeg for seed in (1, 2)],
        "leopard": [make_frame(seed, leopard=True, night=False, size=SIZE).jpeg for seed in (1, 3)],
        f"survey x{len(survey)}": [frame.jpeg for frame in survey],
        f"real photos x{len(real)}": real,
    }


class Server:
    """`snowtrap serve` as a subprocess on a free port."""

    def __init__(self, bundle: Path, config: ServerConfig, threads: int | None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWTRAP_")}
        env.update(SNOWTRAP_SERVE_PORT="0", SNOWTRAP_SERVE_QUEUE_SIZE="256", PYTHONUNBUFFERED="1")
        if threads:
            env["SNOWTRAP_SERVE_INFERENCE_THREADS"] = str(threads)
        command = [
            str(SNOWTRAP),
            "serve",
            "--bundle",
            str(bundle),
            "--max-batch",
            str(config.max_batch),
            "--max-wait-ms",
            str(config.max_wait_ms),
        ]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith(ADDRESS_LINE):
            raise SystemExit(f"snowtrap serve did not start: {line}{self.process.stdout.read()}")
        self.url = line.removeprefix(ADDRESS_LINE).strip()
        wait_ready(self.url)

    def batches(self) -> tuple[float, float]:
        text = httpx.get(f"{self.url}/metrics").text
        return (
            metric_sum(text, "snowtrap_serve_batch_size_sum"),
            metric_sum(text, "snowtrap_serve_batch_size_count"),
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def detect_path(kind: str) -> str:
    """The survey asks for crops: the same work as the worker, which always cuts them."""
    return "/v1/detect?crops=true" if kind.startswith("survey") else "/v1/detect"


async def _one(client: httpx.AsyncClient, body: bytes, since: float, result: RunResult) -> None:
    try:
        response = await client.post(detect_path(result.images), content=body)
    except httpx.HTTPError:
        result.statuses[-1] += 1
        return
    result.statuses[response.status_code] += 1
    if response.status_code == 200:
        result.latencies_s.append(time.perf_counter() - since)
        for stage, ms in response.json()["images"][0].get("timings_ms", {}).items():
            result.stage_ms.setdefault(stage, []).append(ms)


def find_vegeta() -> str | None:
    """`make bench-tools`'s build, else one on PATH."""
    return str(VEGETA_LOCAL) if VEGETA_LOCAL.exists() else shutil.which("vegeta")


def vegeta_open_loop(
    vegeta: str, url: str, bodies: list[bytes], rate: float, seconds: float, result: RunResult
) -> None:
    """The same open-loop schedule from vegeta: the bodies in turn, `rate` a second; each
    answer's latency, status and stage times read back from vegeta's own result file."""
    path = detect_path(result.images)
    with tempfile.TemporaryDirectory(prefix="snowtrap-vegeta-") as tmp:
        targets, results = Path(tmp) / "targets.jsonl", Path(tmp) / "results.bin"
        targets.write_text(
            "".join(
                json.dumps(
                    {
                        "method": "POST",
                        "url": url + path,
                        "body": base64.b64encode(body).decode("ascii"),
                        "header": {"Content-Type": ["image/jpeg"]},
                    }
                )
                + "\n"
                for body in bodies
            )
        )
        started = time.perf_counter()
        subprocess.run(
            [vegeta, "attack", "-format=json", f"-targets={targets}", f"-rate={rate:g}/1s",
             f"-duration={seconds:g}s", "-timeout=60s", f"-output={results}"],
            check=True,
        )  # fmt: skip
        result.seconds = time.perf_counter() - started
        encoded = subprocess.run(
            [vegeta, "encode", "-to=json", str(results)], check=True, capture_output=True
        ).stdout
    for line in encoded.splitlines():
        answer = json.loads(line)
        code = answer["code"] or -1
        result.statuses[code] += 1
        if code != 200:
            continue
        result.latencies_s.append(answer["latency"] / 1e9)
        document = json.loads(base64.b64decode(answer["body"]))
        for stage, ms in document["images"][0].get("timings_ms", {}).items():
            result.stage_ms.setdefault(stage, []).append(ms)


async def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float, result: RunResult):
    """Requests leave every 1/rate s on schedule; latency counts from the scheduled time."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        tasks = []
        started = time.perf_counter()
        for i in range(int(rate * seconds)):
            at = started + i / rate
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            body = bodies[i % len(bodies)]
            tasks.append(asyncio.create_task(_one(client, body, at, result)))
        await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - started


async def closed_loop(
    url: str, bodies: list[bytes], concurrency: int, seconds: float, result: RunResult
):
    """`concurrency` requests always in flight for `seconds`: the server's saturation rate."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        end = started + seconds

        async def user(offset: int) -> None:
            i = offset
            while time.perf_counter() < end:
                await _one(client, bodies[i % len(bodies)], time.perf_counter(), result)
                i += concurrency

        await asyncio.gather(*(user(k) for k in range(concurrency)))
        result.seconds = time.perf_counter() - started


def run(server: Server, result: RunResult, traffic) -> RunResult:
    """`traffic` (a coroutine, or a call for an outside load generator) against the server,
    with the server's batches and CPU time over it."""
    before, cpu_before = server.batches(), process_cpu_seconds(server.process.pid)
    if asyncio.iscoroutine(traffic):
        asyncio.run(traffic)
    else:
        traffic()
    after, result.cpu_s = server.batches(), process_cpu_seconds(server.process.pid) - cpu_before
    count = after[1] - before[1]
    result.mean_batch = (after[0] - before[0]) / count if count else float("nan")
    line = (
        f"  {result.config:13} {result.images:18} {result.load:16} p50 {result.ms(50):6.1f} "
        f"p99 {result.ms(99):6.1f} ms  {result.throughput:5.1f}/s  batch {result.mean_batch:.1f}"
        f"  cpu {result.cpu_ms_per_image:.0f} ms/image"
    )
    print(line, flush=True)
    return result


def print_report(
    results: list[RunResult],
    args: argparse.Namespace,
    bundle: Path,
    images: dict[str, list[bytes]],
    seconds: float,
    vegeta: str | None,
) -> None:
    print("\nsnowtrap serve: latency and throughput on 127.0.0.1")
    for name, value in describe_machine(httpx=httpx.__version__).items():
        print(f"  {name:26} {value}")
    generators = "httpx async (this process)" + (f"; vegeta {vegeta} (Go)" if vegeta else "")
    if not vegeta:
        generators += "; vegeta " + ("not found: make bench-tools" if args.vegeta else "off")
    print(f"  {'load generators':26} {generators}")
    print(f"  {'bundle':26} {bundle}")
    for name, bodies in images.items():
        sizes = [len(b) // 1024 for b in bodies]
        print(f"  {'input ' + name:26} {len(bodies)} JPEGs, {min(sizes)}-{max(sizes)} KiB")
    print(
        f"  {'per run':26} {args.duration:g} s open loop per rate, {args.concurrency} in flight "
        f"for saturation; server: one model thread, ONNX threads "
        f"{args.inference_threads or 'all CPUs'}"
    )
    print(f"  {TARGETS}\n")
    header = (
        f"{'server':13} {'images':18} {'load':16} {'sent':>5} {'200':>5} {'503':>4} {'other':>5}"
        f" {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'done/s':>7} {'batch':>5}"
        f" {'cpu ms':>6} {'decode':>6} {'classif':>7} {'detect':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        other = sum(n for status, n in r.statuses.items() if status not in (200, 503))
        print(
            f"{r.config:13} {r.images:18} {r.load:16} {sum(r.statuses.values()):5d} {r.ok:5d} "
            f"{r.statuses[503]:4d} {other:5d} {r.ms(50):7.1f} {r.ms(95):7.1f} {r.ms(99):7.1f} "
            f"{r.throughput:7.1f} {r.mean_batch:5.1f} {r.cpu_ms_per_image:6.1f} "
            f"{r.stage('decode'):6.1f} {r.stage('classify'):7.1f} {r.stage('detect'):6.1f}"
        )
    print(
        "(cpu ms: the server's CPU time per answered image, all threads, from /proc: it holds on"
        " a shared machine; decode / classif / detect: mean wall ms per image the answers report,"
        " a batch's model time shared by its images)\n"
    )
    default = DEFAULT_CONFIG.name
    for r in results:
        if r.config == default and r.offered == 20 and r.images in ("empty", "leopard"):
            p50_target = 15 if r.images == "empty" else 60
            generator = r.load.removeprefix("20/s").strip() or "httpx"
            p99_target = " (target <= 40)" if r.images == "empty" else ""
            print(
                f"issue #25 at 20/s, {r.images}, {default} ({generator}): p50 {r.ms(50):.1f} ms"
                f" (target <= {p50_target}), p99 {r.ms(99):.1f} ms{p99_target}"
            )
    saturated = {(r.config, r.images): r for r in results if r.offered is None}
    for kind in images:
        on, off = saturated.get(("batching on", kind)), saturated.get(("batching off", kind))
        if on and off and off.throughput:
            print(
                f"batching gain at saturation, {kind}: {on.throughput:.1f} / {off.throughput:.1f}"
                f" images/s = {on.throughput / off.throughput:.2f}x; CPU per image "
                f"{on.cpu_ms_per_image:.0f} vs {off.cpu_ms_per_image:.0f} ms "
                f"(ceiling on 2 free cores {2000 / on.cpu_ms_per_image:.0f} vs "
                f"{2000 / off.cpu_ms_per_image:.0f} images/s)"
            )
    survey = [r for r in saturated.values() if r.images.startswith("survey")]
    best = max((r.throughput for r in survey), default=0.0)
    if args.worker_images_per_s:
        worker = args.worker_images_per_s
        print(
            f"serve at saturation on the survey vs the Kafka worker on it (bench/stream_throughput"
            f".py, {worker:g} images/s): {best:.1f} / {worker:g} = {best / worker:.2f}"
            " (target >= 0.80)"
        )
    else:
        print(
            f"serve at saturation on the survey: {best:.1f} images/s (pass --worker-images-per-s "
            f"with the "
            f"worker's figure from bench/stream_throughput.py for the ratio)"
        )
    survey_cpu = min((r.cpu_ms_per_image for r in survey), default=float("nan"))
    if args.worker_cpu_ms:
        print(
            f"CPU per image on the survey, serve vs the Kafka worker: {survey_cpu:.1f} vs "
            f"{args.worker_cpu_ms:g} ms: serve's ceiling on free cores = "
            f"{args.worker_cpu_ms / survey_cpu:.2f} x the worker's"
        )
    print(f"bench took {seconds:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle directory")
    parser.add_argument("--rates", default="10,20,40,80", help="requests/s, comma-separated")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per rate")
    parser.add_argument("--concurrency", type=int, default=16, help="in flight at saturation")
    parser.add_argument("--inference-threads", type=int, default=None)
    parser.add_argument(
        "--worker-images-per-s",
        type=float,
        default=None,
        help="the worker's saturation on the survey (bench/stream_throughput.py)",
    )
    parser.add_argument(
        "--worker-cpu-ms",
        type=float,
        default=None,
        help="the worker's CPU ms per image on the survey (same bench)",
    )
    parser.add_argument("--only", default="", help="input names containing this (e.g. empty)")
    parser.add_argument(
        "--no-vegeta",
        dest="vegeta",
        action="store_false",
        help="fixed rates from httpx only, even where vegeta is found",
    )
    args = parser.parse_args()
    began = time.perf_counter()
    if args.bundle is None:
        from helpers.bundle import test_bundle

        args.bundle = test_bundle("detector")
    images = {k: v for k, v in inputs().items() if args.only in k}
    rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
    vegeta = find_vegeta() if args.vegeta else None
    results: list[RunResult] = []
    servers: dict[ServerConfig, Server] = {}
    try:
        for config in CONFIGS:  # all up at once: idle ones cost nothing, runs interleave
            servers[config] = Server(args.bundle, config, args.inference_threads)
            print(f"{config.name}: max batch {config.max_batch}, wait {config.max_wait_ms} ms")
        for kind, bodies in images.items():
            for server in servers.values():  # warm up: sessions, allocator, connections
                asyncio.run(open_loop(server.url, bodies, 5, 1, RunResult("", "", "", 5)))
            loads: list[float | None] = [*(rates if kind in ("empty", "leopard") else [20.0]), None]
            for rate in loads:
                for config, server in servers.items():
                    load = f"{rate:g}/s" if rate else f"saturation x{args.concurrency}"
                    result = RunResult(config.name, kind, load, rate)
                    if rate:
                        traffic = open_loop(server.url, bodies, rate, args.duration, result)
                    else:
                        traffic = closed_loop(
                            server.url, bodies, args.concurrency, args.duration, result
                        )
                    results.append(run(server, result, traffic))
                    if rate and vegeta and kind in ("empty", "leopard"):
                        result = RunResult(config.name, kind, f"{rate:g}/s vegeta", rate)
                        traffic = functools.partial(
                            vegeta_open_loop, vegeta, server.url, bodies, rate, args.duration,
                            result,
                        )  # fmt: skip
                        results.append(run(server, result, traffic))
    finally:
        for server in servers.values():
            server.stop()
    print_report(results, args, args.bundle, images, time.perf_counter() - began, vegeta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
