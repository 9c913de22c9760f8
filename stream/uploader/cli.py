"""`snowtrap upload PATH... --camera-id ID --station-id ID [...]`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from snowtrap.stream.metrics import UploaderMetrics
from snowtrap.stream.runtime.cli import load_settings
from snowtrap.stream.uploader.outcomes import EXIT_BAD_SETTINGS, EXIT_INTERRUPTED
from snowtrap.stream.uploader.producer import Uploader
from snowtrap.stream.uploader.settings import UploaderSettings
from snowtrap.stream.uploader.summary import print_summary


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`snowtrap upload PATH... --camera-id ID --station-id ID [...]`."""
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    parser.add_argument("--camera-id", help="camera id (the Kafka key of every image)")
    parser.add_argument("--station-id", help="camera station id")
    parser.add_argument("--config", type=Path, help="YAML settings file (UploaderSettings)")
    parser.add_argument("--ledger", type=Path, help="SQLite ledger of acknowledged images")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, host:port,...")
    parser.add_argument(
        "--claim-check-store", help="directory, file:// or s3:// URI for oversized images"
    )
    parser.add_argument(
        "--metrics-port", type=int, help="serve /metrics on this port while running"
    )
    parser.add_argument("--metrics-textfile", type=Path, help="write final metrics to this file")
    parser.add_argument(
        "--keep-gps",
        action="store_true",
        help="send images with their GPS (default: removed before upload; strip_gps)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every file and Kafka")
    parser.set_defaults(run=_cli_upload)


def stop_on_sigterm() -> None:
    """Make SIGTERM (how a station's service manager stops us) act like Ctrl-C, so the sends
    in flight are settled and recorded before the process ends (see `_Run.upload`)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _cli_upload(args: argparse.Namespace) -> int:
    overrides = {
        "camera_id": args.camera_id,
        "station_id": args.station_id,
        "ledger_path": args.ledger,
        "bootstrap_servers": args.bootstrap_servers,
        "claim_check_store": args.claim_check_store,
        "metrics_port": args.metrics_port,
        "metrics_textfile": args.metrics_textfile,
        "progress": False if args.no_progress else None,
        "strip_gps": False if args.keep_gps else None,
    }
    settings = load_settings(UploaderSettings, args.config, "upload", **overrides)
    if settings is None:
        return EXIT_BAD_SETTINGS
    if not settings.camera_id or not settings.station_id:
        print("snowtrap upload: --camera-id and --station-id are required", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kafka-python logs every refused connection; the summary says what matters.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    metrics = UploaderMetrics()
    server = None
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        server, _thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_address, registry=metrics.registry
        )
    stop_on_sigterm()
    try:
        summary = Uploader(settings, metrics=metrics).run(args.paths)
    except KeyboardInterrupt:
        print("snowtrap upload: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    if settings.metrics_textfile is not None:
        from prometheus_client import write_to_textfile

        with contextlib.suppress(OSError):
            settings.metrics_textfile.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(settings.metrics_textfile), metrics.registry)
    print_summary(summary, settings)
    return summary.exit_code
