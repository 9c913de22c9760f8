"""Kafka connection settings shared by every stream process (worker, uploader, export, matcher).

Each process has its own settings class (see `snowtrap.core.settings.SnowtrapSettings`) that
embeds these fields, so `SNOWTRAP_BOOTSTRAP_SERVERS`, `SNOWTRAP_SASL_USERNAME`... mean the
same thing everywhere. Credentials come from the environment (Kubernetes Secrets), never
from a values file.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from snowtrap.core.settings import SnowtrapSettings
from snowtrap.stream.topics import TopicNames

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaLoginError(RuntimeError):
    """These settings' TLS handshake or SASL login cannot succeed: retrying cannot help.

    The message is one line naming the cluster, the user and the broker's own reason."""


class KafkaSettings(BaseModel):
    """How to reach the cluster. Mixed into each process's settings class."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    topics: TopicNames = Field(default_factory=TopicNames)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client SSL context for SSL/SASL_SSL, built from the CA and client cert files."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context

    def kafka_python_config(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's KafkaProducer / KafkaConsumer / KafkaAdminClient."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            config["sasl_mechanism"] = self.sasl_mechanism or "SCRAM-SHA-512"
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            config["ssl_cafile"] = self.ssl_cafile
            config["ssl_certfile"] = self.ssl_certfile
            config["ssl_keyfile"] = self.ssl_keyfile
        return config

    def check_login(self, timeout_s: float = 15.0) -> None:
        """Open one connection to a bootstrap server and log in; raise KafkaLoginError if refused.

        Why: kafka-python 3.0.12 drops the broker's SaslAuthenticate error when the broker
        closes the connection in the same read, so a wrong password looks like an unreachable
        cluster until its bootstrap timeout, and Faust retries a refused login for ever. This
        asks once, with aiokafka, which reads the broker's reason. An unreachable or silent
        cluster is not a login failure: this returns and the client reports it as before.
        PLAINTEXT has nothing to check.
        """
        if self.security_protocol == "PLAINTEXT":
            return
        try:
            context = self.ssl_context()
        except OSError as error:  # ssl.SSLError too: a CA or key file that does not load
            raise KafkaLoginError(f"{self._who()}: TLS files: {_one_line(error)}") from None
        # A loop of its own, never installed as the current one: Faust makes its own later.
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(
                asyncio.wait_for(self._log_in_once(context, timeout_s), timeout_s)
            )
        except TimeoutError:
            return
        finally:
            loop.close()

    def _who(self) -> str:
        """`Kafka at HOST:PORT (SASL_SSL, SCRAM-SHA-512 user 'name')`: whose login it was."""
        who = f"Kafka at {self.bootstrap_servers.split(',')[0].strip()} ({self.security_protocol}"
        if self.security_protocol.startswith("SASL"):
            who += f", {self.sasl_mechanism or 'SCRAM-SHA-512'} user {self.sasl_username!r}"
        return who + ")"

    async def _log_in_once(self, context: ssl.SSLContext | None, timeout_s: float) -> None:
        from aiokafka import errors
        from aiokafka.conn import create_conn

        host, _, port = self.bootstrap_servers.split(",")[0].strip().rpartition(":")
        try:
            connection = await create_conn(
                host.strip("[]"),
                int(port),
                client_id="snowtrap-login-check",
                request_timeout_ms=int(timeout_s * 1000),
                ssl_context=context,
                security_protocol=self.security_protocol,
                sasl_mechanism=self.sasl_mechanism or "SCRAM-SHA-512",
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=(
                    self.sasl_password.get_secret_value() if self.sasl_password else None
                ),
            )
        except ssl.SSLError as error:
            raise KafkaLoginError(
                f"{self._who()}: TLS handshake failed: {_one_line(error)}"
                + (f" (CA file {self.ssl_cafile})" if self.ssl_cafile else "")
            ) from None
        except (
            errors.SaslAuthenticationFailed,
            errors.AuthenticationFailedError,
            errors.UnsupportedSaslMechanismError,
            errors.IllegalSaslStateError,
        ) as error:
            raise KafkaLoginError(
                f"{self._who()}: authentication failed: {_one_line(error)}"
            ) from None
        except (OSError, errors.KafkaError):
            return  # unreachable or not answering: the client itself says so
        connection.close()

    def faust_broker_urls(self) -> list[str]:
        """Bootstrap servers as Faust broker URLs (`kafka://host:port`)."""
        return [f"kafka://{server.strip()}" for server in self.bootstrap_servers.split(",")]

    def faust_credentials(self) -> Any:
        """Faust's `broker_credentials` for these settings (None for PLAINTEXT).

        Faust builds the aiokafka clients itself, so SASL/TLS reach it as a credentials object
        rather than as client keyword arguments; the same fields mean the same thing.
        """
        import faust  # the worker's dependency; the uploader never gets here

        if self.security_protocol == "PLAINTEXT":
            return None
        if self.security_protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        return faust.SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password.get_secret_value() if self.sasl_password else None,
            ssl_context=self.ssl_context(),
            mechanism=self.sasl_mechanism or "SCRAM-SHA-512",
        )


def _one_line(error: BaseException) -> str:
    name, text = type(error).__name__, " ".join(str(error).split())
    return text if name in text else f"{name}: {text}".rstrip(": ")


class TopicsSettings(SnowtrapSettings, KafkaSettings):
    """What `snowtrap topics` reads: the Kafka connection and names, plus provisioning."""

    partitions: dict[str, int] = Field(default_factory=dict)
    """Partition count per topic role (images, detections, crops, deadletter, identities)."""
    replication_factor: int | None = Field(default=None, ge=1)
