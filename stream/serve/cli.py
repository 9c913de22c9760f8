"""`snowtrap serve [--config FILE] [--bundle DIR] [--host H] [--port P]`: the detection API.

The bundle's manifest is checked before the server listens (a bad directory fails at once,
exit code 3 like the worker); its ONNX sessions are opened after start-up, while /healthz
already answers and /readyz says it is loading.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from snowtrap.stream.runtime.cli import EXIT_BAD_SETTINGS, add_config_argument, load_settings
from snowtrap.stream.serve.settings import ServeSettings

ADDRESS_LINE = "detection API: "
"""The line the address is printed on (tests and the bench read it)."""
EXIT_BAD_BUNDLE = 3
EXIT_CANNOT_LISTEN = 1


def configure_cli(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--bundle", type=Path, help="model bundle directory (else bundle_dir)")
    parser.add_argument("--host", help="interface to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (8480; 0: any free port)")
    parser.add_argument("--max-batch", type=int, help="images per model batch at most (8)")
    parser.add_argument("--max-wait-ms", type=float, help="wait for batch-mates at most (0)")
    parser.add_argument("--queue-size", type=int, help="images waiting at most; more: 503")
    parser.set_defaults(run=_cli_serve)


def _cli_serve(args: argparse.Namespace) -> int:
    from snowtrap.models.bundle import BundleError, read_manifest
    from snowtrap.stream.serve.server import ServeServer

    settings = load_settings(
        ServeSettings,
        args.config,
        "serve",
        bundle_dir=args.bundle,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
    )
    if settings is None:
        return EXIT_BAD_SETTINGS
    if settings.bundle_dir is None:
        print(
            "snowtrap serve: no model bundle: set SNOWTRAP_SERVE_BUNDLE_DIR or pass --bundle DIR",
            file=sys.stderr,
        )
        return EXIT_BAD_SETTINGS
    try:
        manifest = read_manifest(settings.bundle_dir)
    except BundleError as error:
        print(f"snowtrap serve: cannot serve the model bundle: {error}", file=sys.stderr)
        return EXIT_BAD_BUNDLE
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        server = ServeServer(settings)
    except OSError as error:
        print(f"snowtrap serve: cannot listen on {settings.host}:{settings.port}: {error}",
              file=sys.stderr)  # fmt: skip
        return EXIT_CANNOT_LISTEN
    print(f"{ADDRESS_LINE}{server.url}", flush=True)
    print(
        f"bundle {manifest.name} {manifest.version} from {settings.bundle_dir}; batches of up "
        f"to {settings.max_batch} within {settings.max_wait_ms:g} ms; queue {settings.queue_size}",
        flush=True,
    )
    server.run()
    return 0
