"""`snowtrap worker` as a real subprocess, configured only through its environment.

The tests run the worker exactly as a deployment does (the console script, `--bundle DIR`,
`SNOWTRAP_*` env vars) and talk to it over its HTTP port: `/readyz` says when it holds its
partitions, `/metrics` what it counted. Its output goes to a log file that failures quote.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families

from snowtrap.stream.topics import TopicNames

REPO_ROOT = Path(__file__).resolve().parents[2]
SNOWTRAP = Path(sys.executable).with_name("snowtrap")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_env(
    bootstrap: str,
    topics: TopicNames,
    group_id: str,
    metrics_port: int,
    **settings: Any,
) -> dict[str, str]:
    """The environment of a worker: every SNOWTRAP_* it needs, nothing inherited from ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWTRAP_")}
    env.update(
        {
            "SNOWTRAP_BOOTSTRAP_SERVERS": bootstrap,
            "SNOWTRAP_GROUP_ID": group_id,
            "SNOWTRAP_METRICS_HOST": "127.0.0.1",
            "SNOWTRAP_METRICS_PORT": str(metrics_port),
            "SNOWTRAP_TOPICS__IMAGES": topics.images,
            "SNOWTRAP_TOPICS__DETECTIONS": topics.detections,
            "SNOWTRAP_TOPICS__CROPS": topics.crops,
            "SNOWTRAP_TOPICS__DEADLETTER": topics.deadletter,
            "SNOWTRAP_TOPICS__IDENTITIES": topics.identities,
            "SNOWTRAP_LAG_INTERVAL_S": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name, value in settings.items():
        env[f"SNOWTRAP_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """One `snowtrap worker` subprocess; use as a context manager (stops it on exit)."""

    command: tuple[str, ...] = ("worker", "--bundle")
    """The snowtrap command and the option that takes `bundle` (a subclass runs another)."""

    def __init__(
        self,
        bundle: Path,
        bootstrap: str,
        topics: TopicNames,
        group_id: str,
        log_path: Path,
        **settings: Any,
    ) -> None:
        self.bundle = bundle
        self.metrics_port = free_port()
        self.env = worker_env(bootstrap, topics, group_id, self.metrics_port, **settings)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(SNOWTRAP), *self.command, str(self.bundle)],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def __enter__(self) -> WorkerProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def check_alive(self) -> None:
        """Raise with the log's tail when the worker has exited."""
        code = self.returncode()
        if code is not None:
            raise AssertionError(f"worker exited with {code}:\n{self.log_tail()}")

    def wait_ready(self, timeout_s: float = 90.0) -> dict[str, Any]:
        """Wait until /readyz answers 200 (bundle loaded, partitions assigned)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=2) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                last = f"{error.code} {error.read()[:200]!r}"
            except (OSError, ValueError) as error:
                last = repr(error)
            time.sleep(0.5)
        raise AssertionError(f"worker not ready after {timeout_s} s ({last}):\n{self.log_tail()}")

    def kill(self) -> int:
        """SIGKILL: no shutdown code runs, nothing more is committed."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop in time; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    # -- HTTP side -----------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as response:
            return response.read().decode()

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """Samples by name, then by sorted label pairs: {'snowtrap_images_processed_total':
        {(('outcome', 'leopard'),): 12.0, ...}, ...}."""
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
        return dict(samples)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class MatcherProcess(WorkerProcess):
    """`snowtrap matcher --db PATH` with the worker helper's lifecycle and HTTP checks."""

    command = ("matcher", "--db")

    def __init__(self, db: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(db, *args, **kwargs)


def metric_total(
    metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str
) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for key, value in metrics.get(name, {}).items() if wanted <= set(key))


def metric_by(
    metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, label: str
) -> dict[str, float]:
    """A metric's samples summed by one label's value (e.g. dead letters by reason)."""
    out: dict[str, float] = defaultdict(float)
    for key, value in metrics.get(name, {}).items():
        out[dict(key).get(label, "")] += value
    return dict(out)
