"""The Kafka broker the tests run against, and the topics snowtrap provisions on it.

These talk to a real broker (see conftest.py): image-sized payloads with headers survive a
round trip in per-camera order, topics get the partitions and limits the pipeline relies on,
and the project's own broker starts, is found again, and stops leaving its port free.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import MessageSizeTooLargeError

from snowtrap.devtools.kafka_broker import (
    KafkaBrokerError,
    LocalKafkaBroker,
    LocalKafkaSettings,
    free_port,
    port_is_open,
)
from snowtrap.stream.topics import DAY_MS, MAX_MESSAGE_BYTES, TOPIC_SPECS, TopicNames, ensure_topics

pytestmark = pytest.mark.kafka

PAYLOAD_BYTES = 2 * 1024 * 1024


def _producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        max_request_size=MAX_MESSAGE_BYTES,
        linger_ms=5,
    )


def _consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
    )
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def _admin(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-kafka-broker")


def test_images_with_headers_round_trip_in_per_camera_order(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    cameras = [b"cam-north", b"cam-ridge", b"cam-gully"]
    base = os.urandom(PAYLOAD_BYTES)
    sent = []
    producer = _producer(kafka_bootstrap)
    try:
        for seq in range(12):
            camera = cameras[seq % len(cameras)]
            value = seq.to_bytes(4, "big") + base[4:]
            headers = [
                ("image_id", hashlib.sha256(value).hexdigest().encode()),
                ("camera_id", camera),
                ("seq", str(seq).encode()),
                ("content_type", b"image/jpeg"),
            ]
            producer.send(kafka_topics.images, value=value, key=camera, headers=headers)
            sent.append((camera, value, headers))
        producer.flush(timeout=60)
    finally:
        producer.close()

    received = _consume(kafka_bootstrap, kafka_topics.images, expected=len(sent))

    assert len(received) == len(sent)
    assert sorted((r.key, r.value, list(r.headers)) for r in received) == sorted(sent)
    by_camera: dict[bytes, list] = defaultdict(list)
    for record in sorted(received, key=lambda r: (r.partition, r.offset)):
        by_camera[record.key].append(record)
    for camera, records in by_camera.items():
        assert len({r.partition for r in records}) == 1, f"{camera!r} spread over partitions"
        seqs = [int(dict(r.headers)["seq"]) for r in records]
        assert seqs == sorted(seqs), f"{camera!r} out of order: {seqs}"


def test_ensure_topics_is_idempotent_and_sets_partitions_and_limits(
    kafka_bootstrap: str, kafka_topic_names: TopicNames
) -> None:
    names = kafka_topic_names

    assert ensure_topics(kafka_bootstrap, names) == sorted(names)
    assert ensure_topics(kafka_bootstrap, names) == []

    admin = _admin(kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics(list(names))}
        for role, name in names.items():
            assert len(described[name]["partitions"]) == TOPIC_SPECS[role].partitions
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        admin.close()
    topic_configs = next(iter(configs.values()))

    def config(name: str, key: str) -> str | None:
        entry = topic_configs[name].get(key)
        return None if entry is None else entry["value"]

    for name in (names.images, names.crops, names.deadletter):
        assert config(name, "max.message.bytes") == str(MAX_MESSAGE_BYTES)
    assert config(names.images, "retention.ms") == str(7 * DAY_MS)
    assert int(config(names.deadletter, "retention.ms") or 0) > 7 * DAY_MS


def test_ensure_topics_races_and_partition_override(
    kafka_bootstrap: str, kafka_topic_names: TopicNames
) -> None:
    names = kafka_topic_names
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def provision() -> None:
        try:
            results.append(ensure_topics(kafka_bootstrap, names, partitions=2))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=provision) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sorted(name for created in results for name in created) == sorted(names)
    admin = _admin(kafka_bootstrap)
    try:
        for topic in admin.describe_topics(list(names)):
            assert len(topic["partitions"]) == 2
    finally:
        admin.close()


def test_image_topic_takes_a_15_mib_image_and_refuses_17_mib(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        acks="all",
        max_request_size=2 * MAX_MESSAGE_BYTES,  # let the broker, not the client, decide
    )
    try:
        accepted = producer.send(kafka_topics.images, value=os.urandom(15 * 1024 * 1024), key=b"c")
        assert accepted.get(timeout=60).offset == 0
        refused = producer.send(kafka_topics.images, value=os.urandom(17 * 1024 * 1024), key=b"c")
        with pytest.raises(MessageSizeTooLargeError):
            refused.get(timeout=60)
    finally:
        producer.close()


def test_local_broker_starts_is_found_again_and_stops_freeing_its_port(tmp_path) -> None:
    port = free_port()
    data_dir = tmp_path / "broker"
    broker = LocalKafkaBroker(data_dir, port=port)
    with broker:
        assert broker.bootstrap_servers == f"127.0.0.1:{port}"
        listeners = (data_dir / "server.properties").read_text()
        assert "listeners=PLAINTEXT://127.0.0.1:" in listeners
        assert "auto.create.topics.enable=false" in listeners
        pid = broker.pid
        assert pid is not None

        # Another process's view of the same data dir finds the running broker.
        again = LocalKafkaBroker(data_dir, port=port)
        assert again.start() is False
        assert again.pid == pid
        status = again.status()
        assert status.running and status.answering
        assert status.bootstrap_servers == f"127.0.0.1:{port}"

        assert ensure_topics(broker.bootstrap_servers, partitions=1)
        assert set(TopicNames()) <= set(broker.status().topics)

    assert not port_is_open(port)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
    assert not (data_dir / "broker.pid").exists()
    assert not LocalKafkaBroker(data_dir).status().running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert broker.stop() is False


def test_local_broker_reports_a_taken_port_and_a_jvm_that_dies(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(KafkaBrokerError, match="already in use"):
            LocalKafkaBroker(tmp_path / "taken", port=taken).start()

    broken = LocalKafkaBroker(
        tmp_path / "broken",
        settings=LocalKafkaSettings(kafka_heap="not-a-size"),
        startup_timeout_s=60,
    )
    started = time.monotonic()
    with pytest.raises(KafkaBrokerError, match=r"exited during startup(.|\n)*heap size"):
        broken.start()
    assert time.monotonic() - started < 60, "a dead JVM must be noticed, not waited out"
    assert not broken.is_running()
