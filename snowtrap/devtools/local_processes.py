"""Small helpers for child processes the development tools start: ports, liveness, logs."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LISTEN_HOST = "127.0.0.1"


def free_port(host: str = LISTEN_HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = LISTEN_HOST, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def process_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def cmdline_of(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def list_topics(
    bootstrap_servers: str, timeout_s: float = 5.0, **client_options: Any
) -> list[str] | None:
    """Topic names on the cluster, or None when it does not answer within the timeout.

    `client_options` go to kafka-python's KafkaAdminClient (SASL/TLS of a secure broker)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = max(1000, int(timeout_s * 1000))
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            client_id="snowtrap-local-broker",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
            **client_options,
        )
    except (KafkaError, OSError):
        return None
    try:
        return sorted(admin.list_topics())
    except (KafkaError, OSError):
        return None
    finally:
        admin.close()


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int | None:
    """SIGTERM, then SIGKILL if the child has not exited within `timeout_s`; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    return process.returncode


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing) across processes: pytest workers and
    parallel runs share one jar or bundle cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
