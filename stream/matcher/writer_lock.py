"""One matcher per individual database: an exclusive lock on a file beside the SQLite file.

SQLite allows one writer, and two matchers on one database would also split `trap.crops`
between two indexes that drift apart. So the matcher holds an exclusive `flock` on
`<db>.matcher-lock` for as long as it runs; a second matcher on the same database refuses to
start with an error naming the holder, or, given a wait, stands by until the first one stops.
The kernel drops the lock when its process dies, SIGKILL included, so a restarted matcher
never finds a stale lock. `snowtrap individuals enroll` does not take it: enrolling while the
matcher runs is expected (SQLite serialises the two writers).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

LOCK_SUFFIX = ".matcher-lock"
POLL_S = 0.5


class DatabaseLocked(RuntimeError):
    """Another matcher serves this database."""


class WriterLock:
    """The exclusive lock of one database file; `acquire`, then `release` (or `with`)."""

    def __init__(self, db_path: Path | str) -> None:
        self.path = Path(f"{db_path}{LOCK_SUFFIX}")
        self._handle: IO[str] | None = None

    def holder(self) -> str:
        """What the lock file says about its holder (pid and start time), for messages."""
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self, wait_s: float = 0.0, on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock, waiting up to `wait_s` for its holder to stop; raises DatabaseLocked."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    raise DatabaseLocked(
                        f"the individual database is already served by another matcher "
                        f"({self.holder()}; lock {self.path}): one matcher per database"
                    ) from None
                if on_wait is not None and not told:
                    on_wait(self.holder())
                    told = True
                time.sleep(POLL_S)
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        )
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
