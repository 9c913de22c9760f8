"""`ServeServer`: the API app on uvicorn, on a socket bound before it starts.

Binding first makes port 0 work and the printed address the real one. `run()` blocks (the
command: uvicorn handles SIGINT/SIGTERM); `start()` serves from a thread and `stop()` ends it
(tests, benchmarks, embedding).
"""

from __future__ import annotations

import socket
import threading

import uvicorn

from snowtrap.stream.serve.app import DetectorLoader, build_app, load_detector
from snowtrap.stream.serve.metrics import ServeMetrics
from snowtrap.stream.serve.settings import ServeSettings

GRACEFUL_SHUTDOWN_S = 5
"""Requests in flight get this long to finish on SIGTERM."""


class ServeServer:
    """One API process: `build_app` served by uvicorn."""

    def __init__(
        self,
        settings: ServeSettings,
        *,
        loader: DetectorLoader = load_detector,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ServeMetrics()
        # proto IPPROTO_TCP, not 0: asyncio turns Nagle off only on connections whose socket
        # says TCP, and with Nagle on every answer after the first on a keep-alive connection
        # waits ~40 ms for the client's delayed ACK (headers and body are two writes).
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket.bind((settings.host, settings.port))
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(
            build_app(settings, loader=loader, metrics=self.metrics),
            log_level=settings.log_level,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The API's base address, prefix included (127.0.0.1 when on every interface)."""
        host = self.settings.host
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        return f"http://{shown}:{self.port}{self.settings.root_path}"

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self) -> ServeServer:
        """Serve from a background thread; returns once the server accepts connections (the
        bundle may still be loading: see /readyz)."""
        self._thread = threading.Thread(target=self.run, name="snowtrap-serve-http", daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the API's HTTP server did not start")
            self._thread.join(0.05)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> ServeServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
