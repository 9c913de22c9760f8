"""The demo's live sightings page: `snowtrap live` as a subprocess on the demo's topics.

Started as soon as the topics exist, so its address is printed early and a browser opened
then watches the crops arrive; before the demo ends it checks that the page shows what the run
produced, and with `--hold` it stays up (with the broker and topics) until Ctrl-C.
"""

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


class DemoLivePage(ChildProcess):
    """`snowtrap live` in a child process, configured only through SNOWTRAP_*."""

    stop_timeout_s = 20.0

    def __init__(self, bootstrap: str, topics: Any, log_path: Path, port: int = 0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        super().__init__(
            "the live page",
            [sys.executable, "-m", "snowtrap.cli", "live"],
            snowtrap_child_env(bootstrap, topics, live__host="127.0.0.1", live__port=self.port),
            log_path,
            error=DemoError,
            tail_lines=15,
        )

    def snapshot(self) -> dict[str, Any]:
        """What the page shows now, as JSON (its /api/snapshot)."""
        with urllib.request.urlopen(self.url + "api/snapshot", timeout=5) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            try:
                self.snapshot()
                return
            except (OSError, urllib.error.HTTPError, ValueError) as error:
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"the live page did not answer in {timeout_s:.0f} s ({error!r}); "
                        f"last lines of {self.log_path}:\n{self.log_tail()}"
                    ) from error
            time.sleep(0.3)

    def wait_until_shown(
        self, camera_id: str, images: int, dead_letters: int, timeout_s: float
    ) -> dict[str, Any]:
        """The page's snapshot once it counts `images` images of the camera and the dead
        letters; raises DemoError with what it shows if that takes longer than `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            snapshot = self.snapshot()
            counted = {row["camera_id"]: row for row in snapshot["cameras"]}.get(camera_id, {})
            if (
                counted.get("images", 0) >= images
                and snapshot["deadletters"]["total"] >= dead_letters
            ):
                return snapshot
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the live page still shows {counted or 'nothing'} for {camera_id} and "
                    f"{snapshot['deadletters']['total']} dead letters after {timeout_s:.0f} s"
                )
            time.sleep(0.5)
