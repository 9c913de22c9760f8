"""Reading images that travel as claim checks (`file://` or `s3://` URIs) instead of bytes.

A claim check is untrusted input like any header: a URI could point at `/etc/shadow`, at a
FIFO that never ends, at a symlink out of the shared mount, or at someone else's bucket.
Only regular files whose real path lies under one of the configured roots, and only objects
in the allowed buckets (`claim_check_buckets`), are read, and never more than the size limit
plus one byte (a ranged GET for objects). Every refusal is a `ClaimCheckError` whose reason
is a dead-letter reason: `claim_check_unsupported`, `claim_check_forbidden`,
`claim_check_missing`, `claim_check_unreadable`, `too_large_bytes`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from snowtrap.stream.object_store import ObjectStoreUnavailableError, S3Settings, s3_client


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


class S3ClaimChecks:
    """Reads `s3://bucket/key` claim checks from the allowed buckets with one boto3 client."""

    MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
    FORBIDDEN = frozenset({"AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId"})

    def __init__(self, buckets: Sequence[str], settings: S3Settings, client: Any = None) -> None:
        self.buckets = frozenset(buckets)
        self._client = client if client is not None else s3_client(settings)

    def read(self, uri: str, max_bytes: int) -> bytes:
        parsed = urlparse(uri)
        bucket, key = parsed.netloc, unquote(parsed.path.lstrip("/"))
        if bucket not in self.buckets:
            raise ClaimCheckError("claim_check_forbidden", f"bucket {bucket!r} is not allowed")
        if not key:
            raise ClaimCheckError("claim_check_missing", f"no object key in {uri[:200]!r}")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes}")
            data = answer["Body"].read(max_bytes + 1)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            reason = (
                "claim_check_missing"
                if code in self.MISSING
                else "claim_check_forbidden"
                if code in self.FORBIDDEN
                else "claim_check_unreadable"
            )
            raise ClaimCheckError(reason, f"s3://{bucket}/{key}: {exc}") from exc
        except (BotoCoreError, OSError) as exc:
            raise ClaimCheckError("claim_check_unreadable", f"s3://{bucket}/{key}: {exc}") from exc
        if len(data) > max_bytes:
            raise ClaimCheckError(
                "too_large_bytes", f"s3://{bucket}/{key} exceeds the limit of {max_bytes} bytes"
            )
        return bytes(data)


def s3_claim_checks_for(buckets: Sequence[str], settings: S3Settings) -> S3ClaimChecks | None:
    """The `s3://` reader for these settings; None when no bucket is allowed (or no boto3),
    so `s3://` claim checks are refused as forbidden."""
    if not buckets:
        return None
    try:
        return S3ClaimChecks(buckets, settings)
    except ObjectStoreUnavailableError:
        return None


def read_claim_check(
    uri: str, roots: Sequence[Path], max_bytes: int, s3: S3ClaimChecks | None = None
) -> bytes:
    """The bytes a claim check points at, or `ClaimCheckError` saying why not."""
    if uri.startswith("s3://"):
        if s3 is None:
            raise ClaimCheckError("claim_check_forbidden", "no claim_check_buckets are allowed")
        return s3.read(uri, max_bytes)
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
