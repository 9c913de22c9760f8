"""Small helpers for child processes the development tools start: ports, liveness, logs.

`ChildProcess` is the one way the demo and the tests run a `snowtrap` command as a child:
its own session, its output in a log file that failures quote, SIGTERM then SIGKILL to stop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, Self

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


def raise_if_exited(
    process: subprocess.Popen[bytes],
    name: str,
    log_path: Path,
    error: type[Exception] = RuntimeError,
    lines: int = 40,
) -> None:
    """Raise `error` with the log's tail once the child has exited, so a wait on a dead
    child fails at once with the child's own last words instead of running out its time."""
    code = process.poll()
    if code is not None:
        raise error(
            f"{name} exited with code {code}; last lines of {log_path}:\n"
            f"{log_tail(log_path, lines)}"
        )


class Topics(Protocol):
    """Topic names by role: a `TopicNames` or a plain mapping."""

    def items(self) -> Iterable[tuple[str, str]]: ...


def snowtrap_child_env(bootstrap: str, topics: Topics, **settings: object) -> dict[str, str]:
    """The environment of a `snowtrap` child, configured only through SNOWTRAP_* as deployed.

    Every SNOWTRAP_* of ours is dropped (a developer's shell must not leak into the child);
    then the broker, one SNOWTRAP_TOPICS__<ROLE> per topic, unbuffered output (the log is
    read while the child runs) and `settings` as SNOWTRAP_<NAME> (`live__port=0` gives
    SNOWTRAP_LIVE__PORT=0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWTRAP_")}
    env["SNOWTRAP_BOOTSTRAP_SERVERS"] = bootstrap
    env.update({f"SNOWTRAP_TOPICS__{role.upper()}": name for role, name in topics.items()})
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"SNOWTRAP_{name.upper()}": str(value) for name, value in settings.items()})
    return env


class ChildProcess:
    """A command in a child process of its own session, stdout and stderr in a log file.

    Its own session: a Ctrl-C in the parent's terminal does not reach it, the parent stops
    it (`stop`, or leaving the `with` block). `error` is what a dead child raises from
    `check_alive` (the demo's DemoError, the tests' AssertionError)."""

    stop_timeout_s: float = 30.0
    """How long `stop` waits after SIGTERM before SIGKILL, unless told."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
        *,
        error: type[Exception] = RuntimeError,
        tail_lines: int = 40,
        append_log: bool = False,
    ) -> None:
        """`append_log`: keep what an earlier child wrote to the same log (a restart)."""
        self.name = name
        self.args = [str(part) for part in command]
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.error = error
        self.tail_lines = tail_lines
        self.append_log = append_log
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab" if self.append_log else "wb")
        try:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError:
            self._close_log()
            raise
        return self

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self._started().pid

    def poll(self) -> int | None:
        """The exit code once the child has exited; None while it runs or before start."""
        return None if self.process is None else self.process.poll()

    def check_alive(self) -> None:
        """Raise `error` with the log's tail when the child has exited."""
        if self.process is not None:
            raise_if_exited(self.process, self.name, self.log_path, self.error, self.tail_lines)

    def wait_http_ready(self, url: str, timeout_s: float) -> dict[str, Any]:
        """Poll `url` (the child's /readyz) until it answers 200; its JSON body.

        A child that exits fails the wait at once (`check_alive`); a timeout raises `error`
        with the last answer and the log's tail."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    body: dict[str, Any] = json.loads(response.read())
                    return body
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code} {error.read()[:200]!r}"
            except (OSError, ValueError) as error:
                last = repr(error)
            time.sleep(0.5)
        raise self.error(
            f"{self.name} was not ready after {timeout_s:.0f} s ({last}); "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (the child shuts down cleanly), SIGKILL if it has not exited within
        `timeout_s`; closes the log. The exit code, None if it was never started."""
        if self.process is None:
            return None
        code = stop_process(self.process, self.stop_timeout_s if timeout_s is None else timeout_s)
        self._close_log()
        return code

    def kill(self) -> int:
        """SIGKILL: no shutdown code runs in the child (a crash); the log stays open."""
        process = self._started()
        process.kill()
        return process.wait(timeout=30)

    def log_tail(self, lines: int | None = None) -> str:
        return log_tail(self.log_path, self.tail_lines if lines is None else lines)

    def _started(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


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
