"""`BoundHttpServer`: an ASGI app on uvicorn, on a socket bound before it starts.

Shared by the detection API (`snowtrap serve`) and the live page (`snowtrap live`). Binding
first makes port 0 work and the printed address the real one. `run()` blocks (a command:
uvicorn handles SIGINT/SIGTERM); `start()` serves from a thread and `stop()` ends it (tests,
benchmarks, the demo).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn


def url_path_prefix(value: str) -> str:
    """A `root_path` setting as '' or '/prefix' with no trailing slash, so `prefix + '/x'` is
    always right; anything that is not a plain URL path is refused."""
    value = value.strip().rstrip("/")
    if value and not value.startswith("/"):
        value = "/" + value
    if any(c in value for c in "?#\"'<> "):
        raise ValueError(f"root_path {value!r} must be a plain URL path such as /snowtrap")
    return value


class BoundHttpServer:
    """One uvicorn server on its own socket, run in the foreground or from a thread."""

    def __init__(
        self,
        app: Any,
        *,
        host: str,
        port: int,
        name: str,
        graceful_shutdown_s: float,
        log_level: str = "warning",
    ) -> None:
        self.host = host
        self.name = name
        # proto IPPROTO_TCP, not 0: asyncio turns Nagle off only on connections whose socket
        # says TCP, and with Nagle on every answer after the first on a keep-alive connection
        # waits ~40 ms for the client's delayed ACK (headers and body are two writes).
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket.bind((host, port))
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level=log_level,
            timeout_graceful_shutdown=graceful_shutdown_s,
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def address(self, root_path: str = "") -> str:
        """The base address, prefix included (127.0.0.1 when on every interface)."""
        shown = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{shown}:{self.port}{root_path}"

    def run(self, on_start: Callable[[], None] = lambda: None) -> None:
        """Serve until SIGINT/SIGTERM (or `stop()`); `on_start` runs first."""
        try:
            on_start()
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self, target: Callable[[], None] | None = None) -> None:
        """Serve from a background thread (`target`, default `run`); returns once the server
        accepts connections."""
        self._thread = threading.Thread(target=target or self.run, name=self.name, daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the HTTP server {self.name} did not start")
            self._thread.join(0.05)

    @property
    def started(self) -> bool:
        return self._thread is not None

    def stop(self, timeout_s: float = 15.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
