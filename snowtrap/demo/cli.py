"""`snowtrap demo [--bundle DIR] [--images N] [--seed S] [--bootstrap-servers H:P]`."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Any

from snowtrap.demo.settings import DemoError, DemoSettings
from snowtrap.demo.steps import run_demo


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`snowtrap demo [--bundle DIR] [--images N] [--seed S] [--bootstrap-servers H:P]`."""
    parser.add_argument("--bundle", type=Path, help="model bundle to serve (default: train one)")
    parser.add_argument("--images", type=int, help="synthetic trap images to upload (60)")
    parser.add_argument("--seed", type=int, help="seed of the synthetic survey (7)")
    parser.add_argument("--run-dir", type=Path, help="where images, logs, report go (runs/demo)")
    parser.add_argument(
        "--bootstrap-servers",
        help="an existing Kafka cluster (default: $KAFKA_BOOTSTRAP_SERVERS, else a local broker)",
    )
    parser.add_argument(
        "--keep-topics", action="store_true", help="leave this run's topics on the cluster"
    )
    parser.add_argument("--live-port", type=int, help="port of the live sightings page (any)")
    parser.add_argument(
        "--hold",
        action="store_true",
        help="keep the live sightings page (and broker, topics) up after the run until Ctrl-C",
    )
    parser.set_defaults(run=_cli_demo)


def _cli_demo(args: argparse.Namespace) -> int:
    import logging

    from rich.console import Console

    overrides = {
        "images": args.images,
        "seed": args.seed,
        "run_dir": args.run_dir,
        "bootstrap_servers": args.bootstrap_servers,
        "live_port": args.live_port,
        "hold": args.hold or None,
    }
    settings = DemoSettings(**{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    console = Console()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends the demo like Ctrl-C does: the worker and the broker are stopped.
        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, interrupt)
    started = time.perf_counter()
    try:
        run_demo(settings, bundle=args.bundle, keep_topics=args.keep_topics, console=console)
    except KeyboardInterrupt:
        console.print("[bold yellow]snowtrap demo: interrupted; worker and broker stopped[/]")
        return 130
    except DemoError as error:
        console.print(f"snowtrap demo: {error}", style="bold red", markup=False, highlight=False)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0
