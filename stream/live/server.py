"""`LiveServer`: the state, the Kafka thread and the HTTP server of the page, started together.

Served by a `BoundHttpServer` (port 0 works; `run()` blocks, `start()` serves from a thread
for tests and the demo).
"""

from __future__ import annotations

from snowtrap.stream.http_server import BoundHttpServer
from snowtrap.stream.live.app import build_app
from snowtrap.stream.live.follower import TopicFollower
from snowtrap.stream.live.settings import LiveSettings
from snowtrap.stream.live.state import LiveState

GRACEFUL_SHUTDOWN_S = 2
"""Open event streams never end by themselves; on shutdown they are cut after this long."""


class LiveServer:
    """One page: `LiveState` filled by a `TopicFollower`, served by uvicorn."""

    def __init__(self, settings: LiveSettings) -> None:
        self.settings = settings
        self.state = LiveState(
            sightings=settings.live.sightings, window_hours=settings.live.window_hours
        )
        self.follower = TopicFollower(settings, self.state)
        self.http = BoundHttpServer(
            build_app(settings, self.state),
            host=settings.live.host,
            port=settings.live.port,
            name="snowtrap-live-http",
            graceful_shutdown_s=GRACEFUL_SHUTDOWN_S,
        )
        self.port = self.http.port

    @property
    def url(self) -> str:
        """The page's address, prefix included (127.0.0.1 when listening on every interface)."""
        return self.http.address(self.settings.live.root_path) + "/"

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then stop reading Kafka."""
        try:
            self.http.run(on_start=self.follower.start)
        finally:
            self.follower.stop()

    def start(self) -> LiveServer:
        """Serve from a background thread; returns once the server accepts connections."""
        self.http.start(self.run)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        self.http.stop(timeout_s)

    def __enter__(self) -> LiveServer:
        return self if self.http.started else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
