"""`snowtrap live [--config FILE] [--host H] [--port P] [--root-path /live]`: the page."""

from __future__ import annotations

import argparse
import logging
import sys

from snowtrap.stream.live.settings import LiveSettings
from snowtrap.stream.runtime.cli import EXIT_BAD_SETTINGS, add_config_argument, load_settings
from snowtrap.stream.settings import KafkaLoginError

ADDRESS_LINE = "live sightings: "
"""The line the address is printed on (the demo and the tests read it)."""
EXIT_LOGIN_REFUSED = 4
"""As the worker and the matcher: the cluster refused the login; retrying cannot help."""


def configure_cli(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--host", help="interface to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (8470; 0: any free port)")
    parser.add_argument("--root-path", help="public path prefix behind a proxy, e.g. /live")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, host:port,...")
    parser.set_defaults(run=_cli_live)


def _cli_live(args: argparse.Namespace) -> int:
    from snowtrap.stream.live.server import LiveServer

    page = {"host": args.host, "port": args.port, "root_path": args.root_path}
    settings = load_settings(
        LiveSettings,
        args.config,
        "live",
        live={key: value for key, value in page.items() if value is not None} or None,
        bootstrap_servers=args.bootstrap_servers,
    )
    if settings is None:
        return EXIT_BAD_SETTINGS
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:  # a refused TLS handshake or SASL login is one clear error, not endless retries
        settings.check_login(settings.live.connect_timeout_s)
    except KafkaLoginError as error:
        print(f"snowtrap live: cannot log in: {error}", file=sys.stderr)
        return EXIT_LOGIN_REFUSED
    try:
        server = LiveServer(settings)
    except OSError as error:
        print(f"snowtrap live: cannot listen on {settings.live.host}:{settings.live.port}: {error}",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"{ADDRESS_LINE}{server.url}", flush=True)
    print(
        f"reading {settings.topics.detections}, {settings.topics.crops}, "
        f"{settings.topics.identities} and {settings.topics.deadletter} at "
        f"{settings.bootstrap_servers}, {settings.live.window_hours:g} h back",
        flush=True,
    )
    server.run()
    return 0
