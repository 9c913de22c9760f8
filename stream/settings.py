"""Kafka connection settings shared by every stream process (worker, uploader, export, matcher).

Each process has its own settings class (see `snowtrap.core.settings.SnowtrapSettings`) that
embeds these fields, so `SNOWTRAP_BOOTSTRAP_SERVERS`, `SNOWTRAP_SASL_USERNAME`... mean the
same thing everywhere. Credentials come from the environment (Kubernetes Secrets), never
from a values file.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from snowtrap.core.settings import SnowtrapSettings
from snowtrap.stream.topics import TopicNames

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


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


class TopicsSettings(SnowtrapSettings, KafkaSettings):
    """What `snowtrap topics` reads: the Kafka connection and names, plus provisioning."""

    partitions: dict[str, int] = Field(default_factory=dict)
    """Partition count per topic role (images, detections, crops, deadletter, identities)."""
    replication_factor: int | None = Field(default=None, ge=1)
