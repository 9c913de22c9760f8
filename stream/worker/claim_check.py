"""Reading images that travel as claim checks (`file://` URIs) instead of message bytes.

A claim check is untrusted input like any header: a URI could point at `/etc/shadow`, at a
FIFO that never ends, or at a symlink out of the shared mount. Only regular files whose real
path lies under one of the configured roots are read, and never more than the size limit.
`s3://` claim checks need an object-store client the worker does not ship yet; they are
dead-lettered with their own reason so they can be replayed once it does.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname


class ClaimCheckError(Exception):
    """A claim check that cannot be honoured; `reason` is a dead-letter reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def claim_check_path(uri: str, roots: Sequence[Path]) -> Path:
    """The real path of a `file://` claim check, checked to lie under one of `roots`."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ClaimCheckError(
            "claim_check_unsupported", f"scheme {parsed.scheme or '(none)'!r} in {uri[:200]!r}"
        )
    if parsed.netloc not in ("", "localhost"):
        raise ClaimCheckError("claim_check_forbidden", f"remote host {parsed.netloc!r}")
    if not roots:
        raise ClaimCheckError("claim_check_forbidden", "no claim_check_roots are configured")
    raw = Path(url2pathname(unquote(parsed.path)))
    try:
        real = raw.resolve(strict=True)
    except FileNotFoundError as exc:
        raise ClaimCheckError("claim_check_missing", f"{raw} does not exist") from exc
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop
        raise ClaimCheckError("claim_check_unreadable", f"{raw}: {exc}") from exc
    for root in roots:
        try:
            real_root = Path(root).resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real.is_relative_to(real_root):
            return real
    raise ClaimCheckError("claim_check_forbidden", f"{real} is outside the allowed roots")


def read_claim_check(uri: str, roots: Sequence[Path], max_bytes: int) -> bytes:
    """The bytes a `file://` claim check points at, or `ClaimCheckError` saying why not."""
    path = claim_check_path(uri, roots)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: the checked real
        # path must not have been swapped for a symlink since.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        raise ClaimCheckError("claim_check_unreadable", f"{path}: {exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ClaimCheckError("claim_check_unreadable", f"{path} is not a regular file")
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise ClaimCheckError("claim_check_unreadable", f"{path}: {exc}") from exc
    if len(data) > max_bytes:
        raise ClaimCheckError("too_large_bytes", f"{path} exceeds the limit of {max_bytes} bytes")
    return data
