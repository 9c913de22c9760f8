"""The worker subprocess: `snowtrap worker --bundle DIR`, as deployed, configured by env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from snowtrap.demo.settings import DemoError
from snowtrap.devtools.local_processes import free_port, log_tail, stop_process


class DemoWorker:
    """`snowtrap worker --bundle DIR` in a child process, configured only through SNOWTRAP_*."""

    def __init__(
        self, bundle: Path, bootstrap: str, topics: Any, group_id: str, log_path: Path
    ) -> None:
        self.bundle = bundle
        self.log_path = log_path
        self.metrics_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SNOWTRAP_")}
        self.env.update(
            {
                "SNOWTRAP_BOOTSTRAP_SERVERS": bootstrap,
                "SNOWTRAP_GROUP_ID": group_id,
                "SNOWTRAP_METRICS_HOST": "127.0.0.1",
                "SNOWTRAP_METRICS_PORT": str(self.metrics_port),
                "SNOWTRAP_CREATE_TOPICS": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        for role, name in topics.items():
            self.env[f"SNOWTRAP_TOPICS__{role.upper()}"] = name
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "snowtrap.cli", "worker", "--bundle", str(self.bundle)]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which then stops the worker
        )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(
                f"the worker exited with code {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
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

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the worker commits and leaves its group), SIGKILL if it hangs."""
        if self.process is None:
            return None
        code = stop_process(self.process, timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)
