"""Finding the images on a card and reading them: sorted walk, format sniffing, capture time."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from snowtrap.models.decode import read_capture_time
from snowtrap.stream.uploader.settings import MiB

CONTENT_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "TIFF": "image/tiff",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "HEIF": "image/heif",
}
"""Content type per sniffed format. Formats the worker cannot decode are still sent: the
worker owns the format policy and dead-letters them with a reason, nothing is lost."""

CAPTURE_TIME_READ_BYTES = 4 * MiB
"""Files larger than this are searched for EXIF in their first bytes only (EXIF sits in
the header; the decoder refuses to open a very large file whole)."""


@dataclass(frozen=True)
class Candidate:
    """A path the uploader will look at; `problem` is set when it cannot even be tried."""

    path: Path
    file_name: str
    """Name sent in the `file-name` header: relative to the folder given on the command line
    (forward slashes), or the base name for a file given directly."""
    problem: str | None = None


def find_files(paths: Sequence[Path | str]) -> list[Candidate]:
    """Every file under `paths`, in a deterministic order (arguments as given, then sorted)."""
    found: list[Candidate] = []
    for raw in paths:
        root = Path(raw).expanduser()
        if root.is_dir():
            found.extend(_walk(root))
        elif root.exists():
            found.append(Candidate(root.absolute(), root.name))
        else:
            found.append(Candidate(root.absolute(), root.name, "no such file or directory"))
    return found


def _walk(root: Path) -> Iterator[Candidate]:
    errors: list[OSError] = []
    for directory, dirnames, filenames in os.walk(root, onerror=errors.append):
        dirnames.sort()
        here = Path(directory)
        for dirname in list(dirnames):
            if (here / dirname).is_symlink():
                # Not followed (loops); said out loud so nothing vanishes silently.
                dirnames.remove(dirname)
                yield _candidate(root, here / dirname, "directory symlink, not followed")
        for filename in sorted(filenames):
            yield _candidate(root, here / filename)
    for error in errors:
        path = Path(error.filename or root)
        yield _candidate(root, path, f"cannot list directory: {error.strerror or error}")


def _candidate(root: Path, path: Path, problem: str | None = None) -> Candidate:
    try:
        name = path.relative_to(root).as_posix()
    except ValueError:
        name = path.name
    return Candidate(path.absolute(), name, problem)


def read_image_file(path: Path) -> tuple[bytes | None, str | None]:
    """The file's bytes, or why they cannot be had (never raises for a bad file)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"
        if info.st_size == 0:
            return None, "empty file (0 bytes)"
        data = path.read_bytes()
    except OSError as error:
        return None, f"unreadable: {error.strerror or error}"
    if not data:
        return None, "empty file (0 bytes)"
    return data, None


def capture_time(data: bytes) -> datetime | None:
    """EXIF DateTimeOriginal, or None. The time is optional metadata: never a reason to stop."""
    head = data if len(data) <= CAPTURE_TIME_READ_BYTES else data[:CAPTURE_TIME_READ_BYTES]
    try:
        return read_capture_time(head)
    except Exception:  # untrusted bytes: any parser error just means "no capture time"
        return None
