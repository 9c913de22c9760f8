"""Shared test fixtures: a real Kafka broker for the tests that need one.

`kafka_bootstrap` picks, in order: `KAFKA_BOOTSTRAP_SERVERS` (a broker someone runs already),
testcontainers' KafkaContainer when a Docker engine answers, or the project's own
`LocalKafkaBroker` (the usual case here: no Docker). If none comes up the fixture raises: a
Kafka test that silently skips would hide a broken pipeline.

Tests that use `kafka_bootstrap` (directly or through `kafka_topics`) get the `kafka` marker
automatically, so `pytest -m "not kafka"` runs everything that needs no broker.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
from conftest_training import trained_bundle, training_run  # noqa: F401  (session fixtures)

from snowtrap.stream.topics import TopicNames, ensure_topics

KAFKA_TEST_IMAGE = os.environ.get("SNOWTRAP_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:8.0.0")
"""Container image when a Docker engine is there; cp-kafka 8.x is Apache Kafka 4.x, KRaft."""


def _docker_engine_answers() -> bool:
    """True only when a Docker engine responds; fails fast when there is none."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def _container_broker() -> Iterator[str]:
    from testcontainers.community.kafka import KafkaContainer

    from snowtrap.stream.topics import MAX_MESSAGE_BYTES

    container = KafkaContainer(KAFKA_TEST_IMAGE).with_kraft()
    for key, value in {
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_MESSAGE_MAX_BYTES": str(MAX_MESSAGE_BYTES),
        "KAFKA_REPLICA_FETCH_MAX_BYTES": str(MAX_MESSAGE_BYTES),
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    }.items():
        container.with_env(key, value)
    with container:
        yield container.get_bootstrap_server()


@contextlib.contextmanager
def _local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from snowtrap.devtools.kafka_broker import LocalKafkaBroker

    broker = LocalKafkaBroker(tmp_path_factory.mktemp("kafka-broker"))
    broker.start()  # raises KafkaBrokerError with the broker log's tail if it never answers
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker with the default snowtrap topics on it."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        source: contextlib.AbstractContextManager[str] = contextlib.nullcontext(configured)
    elif _docker_engine_answers():
        source = _container_broker()
    else:
        source = _local_broker(tmp_path_factory)
    with source as bootstrap:
        ensure_topics(bootstrap)
        yield bootstrap


@pytest.fixture
def kafka_topic_names(kafka_bootstrap: str) -> Iterator[TopicNames]:
    """Unique topic names for one test, not yet created; whatever exists is deleted after."""
    names = TopicNames().with_suffix(f".test-{uuid.uuid4().hex[:12]}")
    yield names
    _delete_topics(kafka_bootstrap, list(names))


@pytest.fixture
def kafka_topics(kafka_bootstrap: str, kafka_topic_names: TopicNames) -> TopicNames:
    """Fresh snowtrap topics for one test (uuid suffix), so tests never see each other's data."""
    ensure_topics(kafka_bootstrap, kafka_topic_names)
    return kafka_topic_names


def _delete_topics(bootstrap_servers: str, topics: list[str]) -> None:
    """Best-effort cleanup, so a long-lived external broker does not collect test topics."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="snowtrap-tests")
    except KafkaError:
        return
    try:
        existing = set(admin.list_topics())
        doomed = [topic for topic in topics if topic in existing]
        if doomed:
            admin.delete_topics(doomed, timeout_ms=10_000)
    except KafkaError:
        pass
    finally:
        admin.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a broker `kafka`, whether or not its author remembered."""
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)
