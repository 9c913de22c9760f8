"""A real browser for the live page's tests: Debian's Chromium, headless, through its chromedriver.

Both come from the project's install step (`tools/install_system_tools.sh`: `apt-get install
chromium chromium-driver`). Selenium is always given the system driver's path, and is told it
is offline, so Selenium Manager never downloads a driver or a browser. Without Chromium the
test fails with the command that installs it: a browser test that skips would hide a broken page.

Also here: `snowtrap live` as a subprocess (configured only through SNOWTRAP_* as deployed),
and where screenshots go (`SNOWTRAP_ARTIFACTS_DIR`, default `artifacts/`, kept by CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from snowtrap.devtools.local_processes import ChildProcess, snowtrap_child_env
from snowtrap.stream.live.cli import ADDRESS_LINE
from snowtrap.stream.topics import TopicNames

REPO_ROOT = Path(__file__).resolve().parents[2]
SNOWTRAP = Path(sys.executable).with_name("snowtrap")
INSTALL_HINT = (
    "install it with `bash tools/install_system_tools.sh` (Debian: chromium chromium-driver)"
)


class BrowserMissing(RuntimeError):
    """Chromium or its driver is not installed: the browser test cannot run, and says so."""


def system_chromium() -> tuple[str, str]:
    """(browser, driver) paths of the system's Chromium; raises BrowserMissing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path]
    if missing:
        raise BrowserMissing(f"{' and '.join(missing)} not found on PATH; {INSTALL_HINT}")
    assert browser is not None and driver is not None
    return browser, driver


@contextlib.contextmanager
def headless_chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A Selenium WebDriver on headless Chromium, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = system_chromium()
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never reach the network
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def artifacts_dir() -> Path:
    """Where the tests leave files for CI to keep: $SNOWTRAP_ARTIFACTS_DIR, else artifacts/."""
    configured = os.environ.get("SNOWTRAP_ARTIFACTS_DIR", "").strip()
    folder = Path(configured) if configured else REPO_ROOT / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_screenshot(driver: Any, name: str) -> Path:
    """A PNG of the whole page (the window grown to its height) in the artifacts folder;
    prints its path."""
    path = artifacts_dir() / name
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(driver.get_window_size()["width"], int(height) + 120)
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"the browser could not write a screenshot to {path}")
    print(f"screenshot: {path}")
    return path


def page_errors(driver: Any) -> list[str]:
    """The browser console's errors (script errors, blocked or failed loads)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "favicon.ico" not in entry["message"]
    ]


class LiveProcess(ChildProcess):
    """`snowtrap live` in a child process; `url` is the address it prints."""

    stop_timeout_s = 20.0

    def __init__(self, bootstrap: str, topics: TopicNames, log_path: Path, **page: Any) -> None:
        """`page`: `LivePage` fields (root_path, sightings...), given as SNOWTRAP_LIVE__*."""
        page_settings = {f"live__{name}": value for name, value in page.items()}
        super().__init__(
            "snowtrap live",
            [str(SNOWTRAP), "live"],
            snowtrap_child_env(bootstrap, topics, **{"live__port": 0, **page_settings}),
            log_path,
            REPO_ROOT,
            error=AssertionError,
        )
        self.url = ""

    def start(self, timeout_s: float = 60.0) -> Self:
        """Start it, read the address it prints, wait until /healthz answers."""
        super().start()
        try:
            self._wait_up(timeout_s)
        except BaseException:
            self.stop()  # `with` calls __exit__ only after __enter__ returned
            raise
        return self

    def _wait_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            if not self.url:
                for line in self.log_path.read_text(errors="replace").splitlines():
                    if line.startswith(ADDRESS_LINE):
                        self.url = line[len(ADDRESS_LINE) :].strip()
            if self.url:
                with contextlib.suppress(OSError, urllib.error.HTTPError):
                    urllib.request.urlopen(self.url + "healthz", timeout=2).close()
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"snowtrap live did not come up:\n{self.log_tail()}")
            time.sleep(0.2)
