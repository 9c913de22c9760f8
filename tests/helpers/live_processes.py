"""`snowtrap worker` and `snowtrap matcher` as real subprocesses for the monitoring tests.

Handles on a running process (its HTTP port, /metrics, /readyz, log), the SNOWTRAP_* env the
chart would set, sums over a /metrics text, and the few images (two cameras, one dead letter)
the worker gets before it is scraped. The pytest fixtures that start them live in
tests/test_monitoring_live.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from helpers.frames import make_frames
from snowtrap.devtools.local_processes import log_tail, raise_if_exited, snowtrap_child_env
from snowtrap.stream.contracts import TrapImage, build_image_message, image_id_of
from snowtrap.stream.topics import TopicNames

SNOWTRAP = Path(sys.executable).with_name("snowtrap")


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


@dataclass
class RunningProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def metrics_text(self) -> str:
        return http_get(self.url("/metrics")).decode()

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log, lines)

    def check_alive(self) -> None:
        raise_if_exited(self.process, self.log.stem, self.log, AssertionError, 60)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            try:
                http_get(self.url("/readyz"), timeout=2)
                return
            except (OSError, urllib.error.HTTPError):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.log.stem} never ready:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.5)


@dataclass
class RunningWorker(RunningProcess):
    bundle: Path
    topics: TopicNames
    images_sent: int = 0


@dataclass
class RunningMatcher(RunningProcess):
    crops_matched: float = 0.0


def process_env(kafka_bootstrap: str, topics: TopicNames, port: int) -> dict[str, str]:
    """SNOWTRAP_* as the chart sets them (minus the chart's 0.0.0.0), nothing inherited."""
    return snowtrap_child_env(
        kafka_bootstrap, topics, metrics_host="127.0.0.1", metrics_port=port, batch_timeout_ms=100
    )


def metric_sum(metrics_text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def processed_total(metrics_text: str) -> float:
    return metric_sum(metrics_text, "snowtrap_images_processed_total")


def produce_images(bootstrap: str, topic: str) -> int:
    """A few frames from two cameras plus one non-image (a dead letter); returns the count."""
    from kafka import KafkaProducer

    messages = []
    for i, frame in enumerate(make_frames(6, seed=77, leopard_rate=0.5)):
        camera = ("cam-mon-a", "cam-mon-b")[i % 2]
        messages.append((frame.jpeg, frame.name, camera))
    messages.append((b"this is not an image, it is a text file\n" * 20, "notes.jpg", "cam-mon-a"))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=16 << 20)
    try:
        for data, name, camera in messages:
            key, value, headers = build_image_message(
                TrapImage(
                    image_id=image_id_of(data),
                    camera_id=camera,
                    station_id="station-mon",
                    file_name=name,
                    content_type="image/jpeg",
                    capture_time=None,
                    sent_at=time.time(),
                    payload=data,
                )
            )
            producer.send(topic, key=key, value=value, headers=headers)
        producer.flush(timeout=30)
    finally:
        producer.close()
    return len(messages)


def delete_topics(bootstrap: str, names: list[str]) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="snowtrap-tests")
    except KafkaError:
        return
    try:
        admin.delete_topics([n for n in names if n in set(admin.list_topics())], timeout_ms=10_000)
    except KafkaError:
        pass
    finally:
        admin.close()
