"""`LiveServer`: the state, the Kafka thread and the HTTP server of the page, started together.

The socket is bound before the server starts, so port 0 works and the address printed is the
real one. `run()` blocks (the command: uvicorn handles SIGINT/SIGTERM); `start()` serves from a
thread and `stop()` ends it (tests, embedding).
"""

from __future__ import annotations

import socket
import threading

import uvicorn

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
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((settings.live.host, settings.live.port))
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(
            build_app(settings, self.state),
            log_level="warning",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address, prefix included (127.0.0.1 when listening on every interface)."""
        host = self.settings.live.host
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        return f"http://{shown}:{self.port}{self.settings.live.root_path}/"

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then stop reading Kafka."""
        self.follower.start()
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.follower.stop()
            self.socket.close()

    def start(self) -> LiveServer:
        """Serve from a background thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.run, name="snowtrap-live-http", daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the live page's HTTP server did not start")
            self._thread.join(0.05)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> LiveServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
