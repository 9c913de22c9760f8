"""The worker subprocess: `snowtrap worker --bundle DIR`, as deployed, configured by env."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
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
        """Poll /readyz until the worker has loaded the bundle and holds its partitions."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    body: dict[str, Any] = json.loads(response.read())
                    return body
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}"
            except (OSError, ValueError) as error:
                last = repr(error)
            time.sleep(0.5)
        raise DemoError(
            f"the worker was not ready after {timeout_s:.0f} s ({last}); "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )
