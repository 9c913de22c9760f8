"""`ServeServer`: the API app on a `BoundHttpServer` (port 0 works; `run()` blocks, `start()`
serves from a thread for tests, benchmarks and embedding)."""

from __future__ import annotations

from snowtrap.stream.http_server import BoundHttpServer
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
        self.http = BoundHttpServer(
            build_app(settings, loader=loader, metrics=self.metrics),
            host=settings.host,
            port=settings.port,
            name="snowtrap-serve-http",
            graceful_shutdown_s=GRACEFUL_SHUTDOWN_S,
            log_level=settings.log_level,
        )
        self.port = self.http.port

    @property
    def url(self) -> str:
        """The API's base address, prefix included (127.0.0.1 when on every interface)."""
        return self.http.address(self.settings.root_path)

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM."""
        self.http.run()

    def start(self) -> ServeServer:
        """Serve from a background thread; returns once the server accepts connections (the
        bundle may still be loading: see /readyz)."""
        self.http.start()
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        self.http.stop(timeout_s)

    def __enter__(self) -> ServeServer:
        return self if self.http.started else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
