"""Stream speed: worker saturation, gate on vs off, 1 vs 2 workers, latency under steady load.

Starts the project's local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS or --bootstrap names
one) and, in one run, on one frame set from the project's generator (`training.synthetic`,
1280 x 960 JPEG, 10% leopard frames by default; cached under .cache/bench-frames):

1. worker, gate on: one worker with a backlog (frames sent faster than it takes them):
   saturation throughput S, crops/s, whether the detector finds the leopards;
2. worker, gate off (`detect_all`, every frame through the detector, as MegaDetector-style
   pipelines do): the gate's gain is S over this rate;
3. worker, decode of before #24 (one decode at the detector's size for both models, on one
   thread): the decode change as a ratio measured in the same run;
4. 2 workers in one consumer group on 2 partitions (each given half the cores): ratio to 1;
5. steady load at 50% of S (open loop): latency p50/p95/p99, sent-at -> outcome visible;
6. end to end: the real uploader sends the card in one burst to a running worker.

Each scenario runs `snowtrap worker` subprocesses as deployed, on fresh topics with 2 image
partitions. The table ends with the stage breakdown (worker seconds per stage per image) and
the acceptance lines of issue #24. Absolute figures depend on the machine and on what else it
runs (the load average is printed); the ratios are taken within the run.

Usage: python bench/stream_throughput.py [--images 300] [--width 1280] [--height 960]
       [--leopard-rate 0.1] [--bundle DIR|test] [--only 1,2,...] [--set SETTING=VALUE]
Without --bundle: the trained demo bundle (runs/demo/training/bundle/..., what `snowtrap
demo` serves), trained first (about 12 minutes on 2 cores, once) when it is not there.
`--bundle test`: the tests' stand-in bundle (quick, but its detector is not trained).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from bench.stream_frames import bench_frames  # noqa: E402
from bench.stream_kafka import bench_broker  # noqa: E402
from bench.stream_report import print_report  # noqa: E402
from bench.stream_runs import Scenario, ScenarioResult, run_scenario  # noqa: E402
from snowtrap.stream.topics import TopicNames  # noqa: E402


def resolve_bundle(given: str | None, console: object) -> tuple[Path, str]:
    """(bundle directory, how the table names it)."""
    if given == "test":
        from helpers.bundle import test_bundle

        return test_bundle("detector"), "tests' stand-in bundle (CAM detector, not trained)"
    from snowtrap.demo.settings import DemoSettings
    from snowtrap.demo.steps import find_or_train_bundle

    bundle = find_or_train_bundle(DemoSettings(), Path(given) if given else None, console)
    return bundle, "given" if given else "trained demo bundle (configs/demo.yaml)"


def scenarios(args: argparse.Namespace, saturation: float | None) -> list[Scenario]:
    cores = os.cpu_count() or 2
    half = {"inference_threads": max(1, cores // 2), "decode_threads": max(1, cores // 2)}
    steady_rate = 0.5 * saturation if saturation and saturation > 0 else 10.0
    common = dict(item.split("=", 1) for item in args.set)
    listed = [
        Scenario("1 worker, gate on", "burst"),
        Scenario("1 worker, gate off (detect_all)", "burst", settings={"detect_all": "true"}),
        Scenario(
            "1 worker, decode before #24",
            "burst",
            settings={"decode_for_classifier": "false", "decode_threads": 1},
        ),
        Scenario("2 workers, 2 partitions", "burst", workers=2, settings=half),
        Scenario(f"steady {steady_rate:.1f}/s (50% of 1)", "steady", rate=steady_rate),
        Scenario("end to end: uploader burst", "uploader"),
    ]
    for scenario in listed:
        scenario.settings = {**common, **scenario.settings}
    return listed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--leopard-rate", type=float, default=0.1)
    parser.add_argument("--night-rate", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bundle", default=None, help="bundle directory, or 'test'")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers")
    parser.add_argument(
        "--only", default="", help="scenario numbers to run, e.g. 1,5 (default: all)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per scenario")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a worker setting for every scenario (e.g. batch_timeout_ms=200); repeatable",
    )
    args = parser.parse_args()
    os.chdir(REPO_ROOT)  # the demo config's run directory is relative to the repository

    from rich.console import Console

    console = Console(width=130)
    began = time.perf_counter()
    bundle, bundle_source = resolve_bundle(args.bundle, console)
    frame_set = bench_frames(
        args.images, args.width, args.height, args.leopard_rate, args.night_rate, args.seed
    )
    frames = frame_set.frames
    wanted = {int(n) for n in args.only.split(",") if n.strip()}

    results: list[ScenarioResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="snowtrap-bench-") as tmp,
        bench_broker(args.bootstrap, Path(tmp)) as (bootstrap, broker_source),
    ):
        work = Path(tmp)
        saturation = None
        for number, _ in enumerate(scenarios(args, None), start=1):
            if wanted and number not in wanted:
                continue
            scenario = scenarios(args, saturation)[number - 1]
            console.print(f"[bold]{number}. {scenario.name}[/] ...")
            upload = uploader(bootstrap, frame_set.folder, work) if number == 6 else None
            result = run_scenario(scenario, frames, bundle, bootstrap, work, upload, args.timeout)
            if number == 1:
                saturation = result.rate
            console.print(
                f"   {result.images} outcomes, {result.rate:.1f} images/s, "
                f"p99 {result.latency_s(99) * 1000:.0f} ms"
            )
            results.append(result)
    print_report(
        console,
        results,
        frame_set=frame_set,
        args=args,
        bundle=bundle,
        bundle_source=bundle_source,
        broker=f"{bootstrap} ({broker_source})",
        seconds=time.perf_counter() - began,
    )
    return 0


def uploader(bootstrap: str, card: Path, work: Path) -> Callable[[TopicNames], set[str]]:
    """The real uploader sending the card's camera folders in one burst; returns the ids."""
    from snowtrap.stream.uploader import Uploader, UploaderSettings

    def upload(topics: TopicNames) -> set[str]:
        settings = UploaderSettings(
            bootstrap_servers=bootstrap,
            topics=topics,
            camera_id="bench-cam",
            station_id="bench-station",
            ledger_path=work / f"ledger-{time.time_ns()}.sqlite",
            progress=False,
            create_topics=False,
        )
        cameras = sorted(path for path in card.iterdir() if path.is_dir())
        summary = Uploader(settings).run(cameras)
        sent = {outcome.image_id for outcome in summary.sent if outcome.image_id}
        if summary.exit_code != 0 or not sent:
            raise SystemExit(f"upload incomplete: exit {summary.exit_code}, {len(sent)} sent")
        return sent

    return upload


if __name__ == "__main__":
    sys.exit(main())
