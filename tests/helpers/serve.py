"""The detection API for tests and the bench: a real server on 127.0.0.1 and raw HTTP bytes.

`running_server` serves the real app with uvicorn from a thread on a free port and waits for
/readyz; `raw_exchange` writes request bytes on a plain socket (bodies a well-behaved client
would never send: a Content-Length it does not keep, a chunked body that never ends) and reads
what the server answers.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx

from snowtrap.stream.serve.server import ServeServer
from snowtrap.stream.serve.settings import ServeSettings


@contextlib.contextmanager
def running_server(settings: ServeSettings, **kwargs: object) -> Iterator[ServeServer]:
    """The API serving `settings` (port 0: a free one), ready, stopped afterwards."""
    with ServeServer(settings, **kwargs) as server:  # type: ignore[arg-type]
        wait_ready(server.url)
        yield server


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    """Until /readyz says 200 (a process that printed its address may not listen yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never became ready")
        time.sleep(0.1)


def raw_exchange(port: int, head: bytes, body_chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send the head, then body chunks until the server answers or closes; returns (the
    answer's bytes, how many body bytes were sent before the answer came)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.settimeout(0.05)
        answer = b""
        for chunk in body_chunks:
            with contextlib.suppress(TimeoutError):
                answer = sock.recv(65536)
            if answer:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.settimeout(30)
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
    return answer, sent


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer."""
    return int(answer.split(b" ", 2)[1])
