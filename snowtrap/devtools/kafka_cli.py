"""`snowtrap kafka start|stop|status`: a local broker that outlives the command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from snowtrap.devtools.kafka_broker import (
    DEFAULT_CLI_PORT,
    KafkaBrokerError,
    LocalKafkaBroker,
    LocalKafkaSettings,
)


def default_data_dir(settings: LocalKafkaSettings | None = None) -> Path:
    """Where `snowtrap kafka start` keeps its broker: `<cache>/kafka/run`."""
    return (settings or LocalKafkaSettings()).kafka_cache_dir / "run"


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`snowtrap kafka start|stop|status`."""
    commands = parser.add_subparsers(dest="kafka_command", metavar="{start,stop,status}")

    def add_data_dir(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="broker state, log, pid file (default: $SNOWTRAP_CACHE_DIR/kafka/run)",
        )

    start = commands.add_parser("start", help="start a broker that keeps running in background")
    start.add_argument("--port", type=int, default=DEFAULT_CLI_PORT, help="default: 9092")
    start.add_argument("--timeout", type=float, default=120.0, help="startup timeout, seconds")
    start.add_argument(
        "--topics", action="store_true", help="also create the snowtrap topics on it"
    )
    add_data_dir(start)
    start.set_defaults(run=_cli_start)

    stop = commands.add_parser("stop", help="stop the broker started by 'snowtrap kafka start'")
    add_data_dir(stop)
    stop.set_defaults(run=_cli_stop)

    status = commands.add_parser(
        "status", help="print bootstrap servers and topics; exit 1 if down"
    )
    add_data_dir(status)
    status.set_defaults(run=_cli_status)


def _cli_broker(args: argparse.Namespace, **kwargs: Any) -> LocalKafkaBroker:
    return LocalKafkaBroker(args.data_dir or default_data_dir(), **kwargs)


def _cli_start(args: argparse.Namespace) -> int:
    broker = _cli_broker(args, port=args.port, startup_timeout_s=args.timeout)
    try:
        started = broker.start()
    except KafkaBrokerError as error:
        print(f"snowtrap kafka: {error}")
        return 1
    if started:
        print(f"Kafka started on {broker.bootstrap_servers} (pid {broker.pid})")
    else:
        print(f"Kafka already running on {broker.bootstrap_servers} (pid {broker.pid})")
        if broker.port is not None and broker.port != args.port:
            print(f"note: it listens on port {broker.port}, not the requested {args.port}")
    print(f"data dir: {broker.data_dir}\nlog: {broker.log_file}")
    if args.topics:
        from snowtrap.stream.topics import ensure_topics

        created = ensure_topics(broker.bootstrap_servers)
        print(f"topics created: {', '.join(created) if created else 'none (all present)'}")
    return 0


def _cli_stop(args: argparse.Namespace) -> int:
    broker = _cli_broker(args)
    pid = broker.pid
    if broker.stop():
        print(f"Kafka stopped (pid {pid})")
    else:
        print(f"Kafka is not running (data dir {broker.data_dir})")
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    status = _cli_broker(args).status()
    if not status.running:
        print(f"Kafka is not running (data dir {status.data_dir})")
        return 1
    if not status.answering:
        print(
            f"Kafka pid {status.pid} is running but does not answer on {status.bootstrap_servers}"
        )
        return 1
    print(f"bootstrap servers: {status.bootstrap_servers}")
    print(f"pid: {status.pid}")
    print(f"topics ({len(status.topics)}):")
    for topic in status.topics:
        print(f"  {topic}")
    return 0
