"""`snowtrap worker` as a real subprocess, configured only through its environment.

The tests run the worker exactly as a deployment does (the console script, `--bundle DIR`,
`SNOWTRAP_*` env vars) and talk to it over its HTTP port: `/readyz` says when it holds its
partitions, `/metrics` what it counted. Its output goes to a log file that failures quote.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from snowtrap.devtools.local_processes import ChildProcess, free_port, snowtrap_child_env
from snowtrap.stream.topics import TopicNames

REPO_ROOT = Path(__file__).resolve().parents[2]
SNOWTRAP = Path(sys.executable).with_name("snowtrap")


def worker_env(
    bootstrap: str,
    topics: TopicNames,
    group_id: str,
    metrics_port: int,
    **settings: Any,
) -> dict[str, str]:
    """The environment of a worker: every SNOWTRAP_* it needs, nothing inherited from ours."""
    defaults = {
        "group_id": group_id,
        "metrics_host": "127.0.0.1",
        "metrics_port": metrics_port,
        "lag_interval_s": 2,
    }
    return snowtrap_child_env(bootstrap, topics, **{**defaults, **settings})


class WorkerProcess(ChildProcess):
    """One `snowtrap worker` subprocess; use as a context manager (stops it on exit).

    Its log is appended to: a worker restarted on the same log keeps the first one's lines."""

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
        super().__init__(
            self.command[0],
            [str(SNOWTRAP), *self.command, str(bundle)],
            worker_env(bootstrap, topics, group_id, self.metrics_port, **settings),
            log_path,
            REPO_ROOT,
            error=AssertionError,
            tail_lines=60,
            append_log=True,
        )

    def returncode(self) -> int | None:
        return self.poll()

    def wait_ready(self, timeout_s: float = 90.0) -> dict[str, Any]:
        """Until /readyz answers 200 (bundle loaded, partitions assigned)."""
        return self.wait_http_ready(self.url("/readyz"), timeout_s)

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
