"""The snowtrap topics: names, partition counts and configs, and their creation.

The broker never auto-creates topics (a misspelt name must fail, not silently create a
one-partition topic with 1 MiB messages), so every process and test calls `ensure_topics`
before producing. Names are defaults only: a process takes a `TopicNames` from its settings,
so two pipelines can share a cluster and each test can use its own topics.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest record batch on the image-carrying topics; larger images go as claim-check URIs."""

IMAGES_TOPIC = "trap.images"
DETECTIONS_TOPIC = "trap.detections"
CROPS_TOPIC = "trap.crops"
DEADLETTER_TOPIC = "trap.deadletter"
IDENTITIES_TOPIC = "trap.identities"

DAY_MS = 24 * 60 * 60 * 1000
TOPIC_ALREADY_EXISTS = 36
"""Kafka protocol error code TOPIC_ALREADY_EXISTS: another process created it first."""


@dataclass(frozen=True)
class TopicNames:
    """The name of each snowtrap topic; override them through a process's settings."""

    images: str = IMAGES_TOPIC
    detections: str = DETECTIONS_TOPIC
    crops: str = CROPS_TOPIC
    deadletter: str = DEADLETTER_TOPIC
    identities: str = IDENTITIES_TOPIC

    def with_suffix(self, suffix: str) -> TopicNames:
        """The same topics with `suffix` appended, e.g. unique names per test."""
        return TopicNames(**{role: f"{name}{suffix}" for role, name in self.items()})

    def items(self) -> Iterator[tuple[str, str]]:
        """(role, topic name) pairs, roles being the field names."""
        for item in dataclasses.fields(self):
            yield item.name, getattr(self, item.name)

    def __iter__(self) -> Iterator[str]:
        return (name for _, name in self.items())


@dataclass(frozen=True)
class TopicSpec:
    """How one topic is created: partitions (the unit of parallelism) and topic configs."""

    role: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


TOPIC_SPECS: Mapping[str, TopicSpec] = MappingProxyType(
    {
        "images": TopicSpec(
            "images",
            6,
            MappingProxyType(
                {
                    "max.message.bytes": str(MAX_MESSAGE_BYTES),
                    "retention.ms": str(7 * DAY_MS),
                }
            ),
        ),
        "detections": TopicSpec("detections", 6),
        "crops": TopicSpec(
            "crops", 6, MappingProxyType({"max.message.bytes": str(MAX_MESSAGE_BYTES)})
        ),
        # Dead letters wait for a human to look at them; keep them far longer than images.
        "deadletter": TopicSpec(
            "deadletter",
            3,
            MappingProxyType(
                {
                    "max.message.bytes": str(MAX_MESSAGE_BYTES),
                    "retention.ms": str(90 * DAY_MS),
                }
            ),
        ),
        "identities": TopicSpec("identities", 6),
    }
)
"""Topic specs keyed by role (the field names of `TopicNames`)."""


class TopicProvisioningError(RuntimeError):
    """The cluster refused to create a topic for a reason other than 'already exists'."""


def ensure_topics(
    bootstrap_servers: str | list[str],
    names: TopicNames | None = None,
    partitions: int | None = None,
    *,
    replication_factor: int | None = None,
    security_protocol: str = "PLAINTEXT",
    sasl_mechanism: str | None = None,
    sasl_plain_username: str | None = None,
    sasl_plain_password: str | None = None,
    ssl_cafile: str | None = None,
    timeout_s: float = 30.0,
    partitions_by_role: Mapping[str, int] | None = None,
    **client_options: Any,
) -> list[str]:
    """Create whichever snowtrap topics are missing; return the names this call created.

    Idempotent: existing topics are left as they are (their partition count is not changed,
    since that would move keys between partitions and break per-camera order), and a topic
    another process creates at the same moment counts as present. `partitions` overrides the
    partition count of every topic, `partitions_by_role` that of single roles ("images"...);
    `replication_factor` defaults to the broker's default.
    Extra `client_options` go to kafka-python's KafkaAdminClient unchanged.
    """
    from kafka import KafkaAdminClient

    names = names or TopicNames()
    timeout_ms = int(timeout_s * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="snowtrap-topics",
        security_protocol=security_protocol,
        sasl_mechanism=sasl_mechanism,
        sasl_plain_username=sasl_plain_username,
        sasl_plain_password=sasl_plain_password,
        ssl_cafile=ssl_cafile,
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        **client_options,
    )
    try:
        existing = set(admin.list_topics())
        wanted = {
            name: {
                "num_partitions": partitions
                or (partitions_by_role or {}).get(role)
                or TOPIC_SPECS[role].partitions,
                "replication_factor": replication_factor or -1,
                "configs": dict(TOPIC_SPECS[role].configs),
            }
            for role, name in names.items()
            if name not in existing
        }
        if not wanted:
            return []
        response = admin.create_topics(wanted, timeout_ms=timeout_ms, raise_errors=False)
        created: list[str] = []
        for topic in response["topics"]:
            code = topic["error_code"]
            if code == 0:
                created.append(topic["name"])
            elif code != TOPIC_ALREADY_EXISTS:
                raise TopicProvisioningError(
                    f"creating topic {topic['name']!r} failed: error {code} "
                    f"{topic.get('error_message') or ''}".rstrip()
                )
        # CreateTopics returns before every partition has a leader; producers need one.
        admin.wait_for_topics(list(wanted), timeout_ms=timeout_ms)
        log.info("created topics %s on %s", created, bootstrap_servers)
        return sorted(created)
    finally:
        admin.close()
