"""A secure local broker: SASL/SCRAM-SHA-512 over TLS, with its own CA and SCRAM users.

Production clusters (Strimzi, MSK, Confluent) take clients over SASL_SSL; the Helm chart
renders those settings. `SecureKafkaBroker` lets the tests run the real processes against a
real broker that demands the same: its one client listener is SASL_SSL (SCRAM-SHA-512, a
certificate for `localhost` / 127.0.0.1 signed by a CA made for this broker alone), brokers
talk to each other over the same listener as a broker user, and only the KRaft controller
listener stays PLAINTEXT on 127.0.0.1. SCRAM users are created when the KRaft storage is
formatted (`kafka-storage format --add-scram`), so a fresh data dir is needed to change them.

    user = ScramUser("snowtrap", "s3cret")
    with SecureKafkaBroker(tmp_dir, users=[user]) as broker:
        broker.bootstrap_servers, broker.tls.ca_file

Key material is written with the `cryptography` package (no openssl or keytool): the broker
reads PEM keystores directly (`ssl.keystore.type=PEM`).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from snowtrap.devtools.kafka_broker import KafkaBrokerError, LocalKafkaBroker
from snowtrap.devtools.local_processes import LISTEN_HOST

SCRAM_MECHANISM = "SCRAM-SHA-512"
SECURE_LISTENER = "SASL_SSL"
TLS_DIR = "tls"
BROKER_USER_FILE = "broker-user.json"
CERT_DAYS = 30
"""Certificates of a test broker live as long as its data dir is likely to: days, not years."""


@dataclass(frozen=True)
class ScramUser:
    """A SCRAM-SHA-512 user the broker knows from format time on."""

    name: str
    password: str

    def __post_init__(self) -> None:
        # StorageTool parses `[name=...,password=...]`: these characters would cut the value.
        for value in (self.name, self.password):
            if not value or any(c in value for c in ',[]="\n'):
                raise ValueError(
                    "SCRAM names and passwords must be non-empty and may not contain "
                    f'the characters , [ ] = " or a newline: {value!r}'
                )

    def format_argument(self) -> str:
        """`kafka-storage format --add-scram` value for this user."""
        return f"{SCRAM_MECHANISM}=[name={self.name},password={self.password}]"


@dataclass(frozen=True)
class BrokerTls:
    """The PEM files of one broker: the CA clients trust, and the broker's key + chain."""

    ca_file: Path
    keystore_file: Path
    """Unencrypted PKCS#8 private key followed by the broker certificate and the CA."""


def write_broker_tls(
    directory: Path, hosts: Sequence[str] = ("localhost", LISTEN_HOST)
) -> BrokerTls:
    """A new CA and a broker certificate for `hosts` (DNS names or IP addresses), as PEM files.

    Every call makes a new CA: a client that trusts one test broker trusts no other.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=CERT_DAYS))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "snowtrap local Kafka CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(broker_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    keystore_file = directory / "broker-keystore.pem"
    keystore_file.touch(mode=0o600)
    keystore_file.write_bytes(
        broker_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + broker_cert.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    return BrokerTls(ca_file=ca_file, keystore_file=keystore_file)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class SecureKafkaBroker(LocalKafkaBroker):
    """`LocalKafkaBroker` whose only client listener is SASL_SSL with SCRAM-SHA-512.

    `bootstrap_servers` is that listener; `tls.ca_file` is the CA a client must trust;
    `users` are the SCRAM users clients log in as. The broker logs in to itself as a user of
    its own (kept in the data dir, so a restart on the same data dir still logs in).
    """

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        users: Sequence[ScramUser],
        **options: Any,
    ) -> None:
        super().__init__(data_dir, port, **options)
        if not users:
            raise ValueError("a secure broker needs at least one SCRAM user")
        self.users = list(users)
        self._tls: BrokerTls | None = None
        self._broker_user: ScramUser | None = None

    @property
    def tls(self) -> BrokerTls:
        """The broker's CA and keystore, made on first use and kept in the data dir."""
        if self._tls is None:
            directory = self.data_dir / TLS_DIR
            existing = BrokerTls(directory / "ca.crt", directory / "broker-keystore.pem")
            if existing.ca_file.is_file() and existing.keystore_file.is_file():
                self._tls = existing
            else:
                self._tls = write_broker_tls(directory)
        return self._tls

    @property
    def broker_user(self) -> ScramUser:
        """The broker's own SCRAM user (inter-broker traffic and its readiness probe)."""
        if self._broker_user is None:
            path = self.data_dir / TLS_DIR / BROKER_USER_FILE
            try:
                self._broker_user = ScramUser(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                user = ScramUser("snowtrap-broker", secrets.token_hex(16))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch(mode=0o600)
                path.write_text(json.dumps({"name": user.name, "password": user.password}))
                self._broker_user = user
        return self._broker_user

    def server_config(self) -> dict[str, Any]:
        """The plain broker's config with the client listener swapped for SASL_SSL."""
        config = super().server_config()
        listener = f"{SECURE_LISTENER}://{LISTEN_HOST}:{self.port}"
        login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{self.broker_user.name}" password="{self.broker_user.password}";'
        )
        config.update(
            {
                "listeners": f"{listener},CONTROLLER://{LISTEN_HOST}:{self.controller_port}",
                "advertised.listeners": listener,
                "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name": SECURE_LISTENER,
                "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": login,
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(self.tls.keystore_file),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(self.tls.ca_file),
                "ssl.client.auth": "none",
            }
        )
        return config

    def storage_format_options(self) -> list[str]:
        """Every SCRAM user, the broker's own included, created at format time."""
        options: list[str] = []
        for user in [self.broker_user, *self.users]:
            options += ["--add-scram", user.format_argument()]
        return options

    def client_config(self) -> dict[str, Any]:
        """kafka-python options for the broker's own probes (as the broker user)."""
        return client_config(self.broker_user, self.tls.ca_file)


def client_config(user: ScramUser, ca_file: Path) -> dict[str, Any]:
    """kafka-python client options that log in as `user` over TLS trusting `ca_file`."""
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": SCRAM_MECHANISM,
        "sasl_plain_username": user.name,
        "sasl_plain_password": user.password,
        "ssl_cafile": str(ca_file),
    }


__all__ = [
    "BrokerTls",
    "KafkaBrokerError",
    "ScramUser",
    "SecureKafkaBroker",
    "client_config",
    "write_broker_tls",
]
