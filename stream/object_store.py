"""The S3-compatible object store that holds `s3://` claim checks: its settings and client.

The uploader puts images over the message limit there; the worker reads them back. Both
take the same typed settings (`S3Settings`, nested as `s3` in their settings objects:
`SNOWTRAP_S3__ENDPOINT_URL`, ...). Credentials left unset come from boto3's usual chain
(environment, shared files, instance or pod role), so none need be written in a file.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr


class S3Settings(BaseModel):
    """Where the object store is and how to sign requests to it."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None
    """None: AWS S3; else an S3-compatible service (MinIO, Ceph RGW, ...)."""
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    max_attempts: int = 3
    """Attempts per request, retries included (boto3's standard retry mode)."""


class ObjectStoreUnavailableError(RuntimeError):
    """boto3 is not installed (it comes with the `serve` extra)."""


def s3_client(settings: S3Settings) -> Any:
    """A boto3 S3 client for these settings (thread-safe; make one per process)."""
    try:
        import boto3  # type: ignore[import-untyped, unused-ignore]
        from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]
    except ImportError as error:
        raise ObjectStoreUnavailableError(
            "s3:// claim checks need boto3 (pip install 'snowtrap[serve]')"
        ) from error
    secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=secret,
        config=Config(
            connect_timeout=settings.connect_timeout_s,
            read_timeout=settings.read_timeout_s,
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        ),
    )
