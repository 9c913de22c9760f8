"""A real S3-compatible server for claim-check tests: moto's server on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from snowtrap.devtools.local_processes import free_port
from snowtrap.stream.object_store import S3Settings, s3_client

REGION = "eu-central-1"


@dataclass(frozen=True)
class S3Server:
    """Where the server listens and the settings that reach it."""

    settings: S3Settings

    def client(self):  # type: ignore[no-untyped-def]
        return s3_client(self.settings)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION}
        )

    def settings_env(self) -> dict[str, str]:
        """The settings by field name, for a worker process's `SNOWTRAP_S3__<FIELD>`."""
        secret = self.settings.secret_access_key
        return {
            "endpoint_url": self.settings.endpoint_url or "",
            "region": self.settings.region or "",
            "access_key_id": self.settings.access_key_id or "",
            "secret_access_key": secret.get_secret_value() if secret else "",
        }


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server (a real HTTP server speaking the S3 API) on a free local port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(
            S3Settings(
                endpoint_url=f"http://127.0.0.1:{port}",
                region=REGION,
                access_key_id="snowtrap-test",
                secret_access_key="snowtrap-test-secret",  # type: ignore[arg-type]
                max_attempts=1,
            )
        )
    finally:
        server.stop()
