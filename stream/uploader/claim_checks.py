"""Claim checks: where an image over the message limit goes, and the URI that travels instead."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

from snowtrap.stream.object_store import ObjectStoreUnavailableError, S3Settings, s3_client


class ClaimCheckError(RuntimeError):
    """The claim-check store is misconfigured or an image could not be stored in it."""


class ClaimCheckStore(Protocol):
    def put(self, path: Path, data: bytes, image_id: str) -> str:
        """Store `data` (the image as sent, read from `path`) if needed; return the URI the
        worker fetches it from."""
        ...


class OwnPathStore:
    """No store configured: the image stays on disk and the claim check points at it (only
    for images sent as they are: one without its GPS needs a store for the stripped copy)."""

    def put(self, path: Path, data: bytes, image_id: str) -> str:
        return path.resolve().as_uri()


class DirectoryStore:
    """Copies into a directory (often a shared mount), named by image id: re-puts are free."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ClaimCheckError(f"claim-check directory {directory}: {error}") from error

    def put(self, path: Path, data: bytes, image_id: str) -> str:
        target = self.directory / f"{image_id}{path.suffix.lower()}"
        if not (target.is_file() and target.stat().st_size == len(data)):
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
            try:
                partial.write_bytes(data)
                os.replace(partial, target)  # readers never see a half-copied image
            except OSError as error:
                partial.unlink(missing_ok=True)
                raise ClaimCheckError(f"copying {path} to {target}: {error}") from error
        return target.resolve().as_uri()


class S3Store:
    """Uploads to `s3://bucket/prefix/<image id><suffix>` with boto3 (the `serve` extra)."""

    def __init__(self, bucket: str, prefix: str, settings: S3Settings | None = None) -> None:
        try:
            self._client = s3_client(settings or S3Settings())
        except ObjectStoreUnavailableError as error:
            raise ClaimCheckError(
                f"claim_check_store is an s3:// URI but {error}; or use a directory"
            ) from error
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def put(self, path: Path, data: bytes, image_id: str) -> str:
        key = "/".join(part for part in (self.prefix, f"{image_id}{path.suffix.lower()}") if part)
        try:
            self._client.upload_fileobj(io.BytesIO(data), self.bucket, key)
        except Exception as error:  # boto3's errors share no useful base class
            raise ClaimCheckError(
                f"uploading {path} to s3://{self.bucket}/{key}: {error}"
            ) from error
        return f"s3://{self.bucket}/{key}"


def claim_check_store_for(setting: str | None, s3: S3Settings | None = None) -> ClaimCheckStore:
    """The store a `claim_check_store` setting names (None, a directory, file://, s3://)."""
    if not setting:
        return OwnPathStore()
    parsed = urlparse(setting)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ClaimCheckError(f"claim_check_store {setting!r}: no bucket in the s3:// URI")
        return S3Store(parsed.netloc, parsed.path, s3)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ClaimCheckError(f"claim_check_store {setting!r}: file:// URIs must be local")
        return DirectoryStore(Path(url2pathname(parsed.path)))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise ClaimCheckError(
            f"claim_check_store {setting!r}: use a directory, file:// or s3:// URI"
        )
    return DirectoryStore(Path(setting).expanduser())
