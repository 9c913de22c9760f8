"""The worker subprocess: `snowtrap worker --bundle DIR`, as deployed, configured by env."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from snowtrap.demo.settings import DemoError
from snowtrap.devtools.local_processes import ChildProcess, free_port, snowtrap_child_env


class DemoWorker(ChildProcess):
    """`snowtrap worker --bundle DIR` in a child process, configured only through SNOWTRAP_*.

    `stop` sends SIGTERM first: the worker commits and leaves its group."""

    def __init__(
        self, bundle: Path, bootstrap: str, topics: Any, group_id: str, log_path: Path
    ) -> None:
        self.bundle = bundle
        self.metrics_port = free_port()
        super().__init__(
            "the worker",
            [sys.executable, "-m", "snowtrap.cli", "worker", "--bundle", str(bundle)],
            snowtrap_child_env(
                bootstrap,
                topics,
                group_id=group_id,
                metrics_host="127.0.0.1",
                metrics_port=self.metrics_port,
                create_topics="false",
            ),
            log_path,
            error=DemoError,
        )

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """Until /readyz says the worker has loaded the bundle and holds its partitions."""
        return self.wait_http_ready(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout_s)
