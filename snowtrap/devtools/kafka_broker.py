"""A real Apache Kafka 4 broker that the project starts itself.

Development machines and CI have no Docker engine, so the tests, the demo and local runs
need a broker that does not come from a container. This module resolves the broker's jars
from Maven Central once (tools/kafka/pom.xml, cached under `$SNOWTRAP_CACHE_DIR/kafka`) and
runs a single KRaft node (broker + controller in one JVM) bound to 127.0.0.1 only.

    with LocalKafkaBroker(tmp_dir) as broker:
        ensure_topics(broker.bootstrap_servers)

`snowtrap kafka start|stop|status` (`kafka_cli`) does the same for a broker that outlives
the command.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from snowtrap.devtools.kafka_jars import (
    KafkaBrokerError,
    LocalKafkaSettings,
    resolve_kafka_classpath,
)
from snowtrap.devtools.local_processes import (
    LISTEN_HOST,
    cmdline_of,
    free_port,
    list_topics,
    log_tail,
    port_is_open,
    process_alive,
)
from snowtrap.stream.topics import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

__all__ = [
    "BrokerStatus",
    "KafkaBrokerError",
    "LocalKafkaBroker",
    "LocalKafkaSettings",
    "free_port",
    "port_is_open",
]

DEFAULT_CLI_PORT = 9092
BROKER_MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
SOCKET_REQUEST_MAX_BYTES = 100 * 1024 * 1024
"""Largest request the broker accepts; a produce request carries a whole batch plus framing."""

PID_FILE = "broker.pid"
BOOTSTRAP_FILE = "bootstrap"
LOG_FILE = "broker.log"
SERVER_PROPERTIES = "server.properties"
LOG4J2_PROPERTIES = "log4j2.properties"
KRAFT_LOG_DIR = "kraft-logs"


@dataclass
class BrokerStatus:
    """What `LocalKafkaBroker.status()` saw: is the JVM alive, and does it answer."""

    data_dir: Path
    running: bool
    pid: int | None = None
    bootstrap_servers: str | None = None
    answering: bool = False
    topics: list[str] = field(default_factory=list)


def _new_cluster_id() -> str:
    # Kafka's Uuid text form: URL-safe base64 without padding, never starting with '-'.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class LocalKafkaBroker:
    """One KRaft node (broker + controller) in a child JVM, listening on 127.0.0.1 only.

    `data_dir` holds everything of this broker: config, KRaft log, `broker.log`, and while it
    runs `broker.pid` and `bootstrap`. A second `LocalKafkaBroker` on the same data dir finds a
    running broker through those files, so `start()` is idempotent across processes.
    """

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        log_file: Path | str | None = None,
        startup_timeout_s: float = 120.0,
        settings: LocalKafkaSettings | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.requested_port = port
        self.log_file = Path(log_file) if log_file else self.data_dir / LOG_FILE
        self.startup_timeout_s = startup_timeout_s
        self.settings = settings or LocalKafkaSettings()
        self.port: int | None = None
        self.controller_port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    # -- public API -----------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for Kafka clients; known once the broker was started or found."""
        if self.port is None:
            recorded = self._recorded_bootstrap()
            if recorded is None:
                raise KafkaBrokerError(f"broker in {self.data_dir} has not been started")
            return recorded
        return f"{LISTEN_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker JVM while it runs."""
        return self._running_pid()

    def is_running(self) -> bool:
        """True while this data dir's broker JVM is alive (it may still be starting)."""
        return self._running_pid() is not None

    def start(self) -> bool:
        """Start the broker and wait until it answers; False if it was already running.

        Raises KafkaBrokerError, with the tail of the broker log, when it does not come up.
        """
        running_pid = self._running_pid()
        if running_pid is not None:
            self._pid = running_pid
            recorded = self._recorded_bootstrap()
            if recorded is not None:
                self.port = int(recorded.rsplit(":", 1)[1])
            self._wait_until_answering(running_pid)
            return False

        classpath = resolve_kafka_classpath(self.settings)
        java = shutil.which(self.settings.java)
        if java is None:
            raise KafkaBrokerError(f"Java ({self.settings.java!r}) is not on PATH; Kafka needs 17+")

        # A restart (stop(), then start() on the same object) keeps the port clients know.
        port = self.requested_port if self.requested_port is not None else self.port
        port = port if port is not None else free_port()
        if port_is_open(port):
            raise KafkaBrokerError(f"port {LISTEN_HOST}:{port} is already in use")
        controller_port = free_port()
        while controller_port == port:
            controller_port = free_port()
        self.port, self.controller_port = port, controller_port

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        server_properties = self._write_server_properties()
        log4j_properties = self._write_log4j_properties()
        if not (self.data_dir / KRAFT_LOG_DIR / "meta.properties").is_file():
            self._format_storage(java, classpath, server_properties)

        command = [
            java,
            *self._jvm_options(log4j_properties),
            "-cp",
            classpath,
            BROKER_MAIN_CLASS,
            str(server_properties),
        ]
        with self.log_file.open("ab") as log_handle:
            log_handle.write(
                f"\n==== snowtrap: starting Kafka on {self.bootstrap_servers}\n".encode()
            )
            log_handle.flush()
            self._process = subprocess.Popen(
                command,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the CLI's broker survives the command and Ctrl-C
            )
        self._pid = self._process.pid
        (self.data_dir / PID_FILE).write_text(f"{self._pid}\n")
        (self.data_dir / BOOTSTRAP_FILE).write_text(f"{self.bootstrap_servers}\n")
        try:
            self._wait_until_answering(self._pid)
        except BaseException:
            self.stop()
            raise
        log.info("Kafka broker up on %s (pid %d)", self.bootstrap_servers, self._pid)
        return True

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker: SIGTERM, wait for a clean shutdown, SIGKILL if it hangs.

        Returns False when no broker was running. Safe to call more than once.
        """
        pid = self._running_pid()
        stopped = False
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            if not self._wait_exit(pid, timeout_s):
                log.warning(
                    "Kafka broker pid %d ignored SIGTERM for %.0f s; killing", pid, timeout_s
                )
                self._signal(pid, signal.SIGKILL)
                if not self._wait_exit(pid, 10.0):
                    raise KafkaBrokerError(f"Kafka broker pid {pid} survived SIGKILL")
            stopped = True
        for name in (PID_FILE, BOOTSTRAP_FILE):
            (self.data_dir / name).unlink(missing_ok=True)
        self._process = None
        self._pid = None
        return stopped

    def status(self, timeout_s: float = 5.0) -> BrokerStatus:
        """Whether the JVM is alive and answering, with its bootstrap address and topics."""
        pid = self._running_pid()
        if pid is None:
            return BrokerStatus(data_dir=self.data_dir, running=False)
        bootstrap = self._recorded_bootstrap() or (
            f"{LISTEN_HOST}:{self.port}" if self.port else None
        )
        topics = list_topics(bootstrap, timeout_s, **self.client_config()) if bootstrap else None
        return BrokerStatus(
            data_dir=self.data_dir,
            running=True,
            pid=pid,
            bootstrap_servers=bootstrap,
            answering=topics is not None,
            topics=topics or [],
        )

    def __enter__(self) -> LocalKafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------

    def server_config(self) -> dict[str, Any]:
        """The broker's server.properties: one node, loopback only, sized for image payloads."""
        if self.port is None or self.controller_port is None:
            raise KafkaBrokerError("ports are chosen in start()")
        return {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@{LISTEN_HOST}:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://{LISTEN_HOST}:{self.port},"
                f"CONTROLLER://{LISTEN_HOST}:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{LISTEN_HOST}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir / KRAFT_LOG_DIR),
            # Topics come from stream/topics.py; a typo in a topic name must fail, not create.
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 10,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 10,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            # Full-resolution trap images travel as message values (up to 16 MiB).
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "replica.fetch.max.bytes": MAX_MESSAGE_BYTES,
            "socket.request.max.bytes": SOCKET_REQUEST_MAX_BYTES,
            # Two shared CPU cores: fewer threads than the defaults.
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 4,
        }

    def storage_format_options(self) -> list[str]:
        """Extra `kafka-storage format` options (a secure broker adds its SCRAM users)."""
        return []

    def client_config(self) -> dict[str, Any]:
        """kafka-python options for the broker's own probes (a secure broker logs in)."""
        return {}

    def _write_server_properties(self) -> Path:
        path = self.data_dir / SERVER_PROPERTIES
        lines = ["# written by snowtrap devtools/kafka_broker.py on every start"]
        lines += [f"{key}={value}" for key, value in self.server_config().items()]
        path.write_text("\n".join(lines) + "\n")
        return path

    def _write_log4j_properties(self) -> Path:
        # Everything goes to stdout, which start() sends to the log file.
        path = self.data_dir / LOG4J2_PROPERTIES
        path.write_text(
            "\n".join(
                [
                    "status = warn",
                    "name = snowtrap-local-kafka",
                    "appender.stdout.type = Console",
                    "appender.stdout.name = STDOUT",
                    "appender.stdout.layout.type = PatternLayout",
                    "appender.stdout.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.stdout.ref = STDOUT",
                    "logger.request.name = kafka.request.logger",
                    "logger.request.level = WARN",
                    "logger.statechange.name = state.change.logger",
                    "logger.statechange.level = WARN",
                    "logger.cleaner.name = kafka.log.LogCleaner",
                    "logger.cleaner.level = WARN",
                    "",
                ]
            )
        )
        return path

    def _jvm_options(self, log4j_properties: Path) -> list[str]:
        return [
            f"-Xmx{self.settings.kafka_heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j_properties}",
            # Kafka logs its own shutdown; log4j's hook would stop the logging halfway through.
            "-Dlog4j2.shutdownHookEnabled=false",
            f"-Dkafka.logs.dir={self.data_dir / 'logs'}",
            f"-Dsnowtrap.kafka.data.dir={self.data_dir}",
        ]

    def _format_storage(self, java: str, classpath: str, server_properties: Path) -> None:
        """`kafka-storage format` for a fresh node with a static single-voter quorum.

        A static quorum (controller.quorum.voters) rather than `--standalone` keeps the
        controller endpoint out of the metadata log, so a restart may pick new ports.
        """
        command = [
            java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.data_dir / LOG4J2_PROPERTIES}",
            "-cp",
            classpath,
            STORAGE_TOOL_CLASS,
            "format",
            "--config",
            str(server_properties),
            "--cluster-id",
            _new_cluster_id(),
            "--ignore-formatted",
            *self.storage_format_options(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        with self.log_file.open("a") as log_handle:
            log_handle.write(f"==== snowtrap: kafka-storage format\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise KafkaBrokerError(
                f"formatting KRaft storage in {self.data_dir} failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr).strip()[-4000:]}"
            )

    def _wait_until_answering(self, pid: int) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        bootstrap = self.bootstrap_servers
        port = int(bootstrap.rsplit(":", 1)[1])
        while time.monotonic() < deadline:
            if not self._alive(pid):
                raise KafkaBrokerError(
                    f"Kafka broker (pid {pid}) exited during startup; last lines of "
                    f"{self.log_file}:\n{log_tail(self.log_file)}"
                )
            # Probe the socket first: kafka-python logs loudly about refused connections.
            if port_is_open(port):
                remaining = max(1.0, min(10.0, deadline - time.monotonic()))
                if list_topics(bootstrap, remaining, **self.client_config()) is not None:
                    return
            time.sleep(0.25)
        raise KafkaBrokerError(
            f"Kafka broker (pid {pid}) did not answer on {bootstrap} within "
            f"{self.startup_timeout_s:.0f} s; last lines of {self.log_file}:\n"
            f"{log_tail(self.log_file)}"
        )

    def _running_pid(self) -> int | None:
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        if self._process is not None:
            return None
        pid_file = self.data_dir / PID_FILE
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not process_alive(pid):
            return None
        # The pid may have been reused: only a Kafka JVM on this data dir's config counts.
        cmdline = cmdline_of(pid)
        if BROKER_MAIN_CLASS in cmdline and str(self.data_dir / SERVER_PROPERTIES) in cmdline:
            return pid
        return None

    def _recorded_bootstrap(self) -> str | None:
        try:
            text = (self.data_dir / BOOTSTRAP_FILE).read_text().strip()
        except OSError:
            return None
        return text or None

    def _alive(self, pid: int) -> bool:
        if self._process is not None and self._process.pid == pid:
            return self._process.poll() is None
        return process_alive(pid)

    def _signal(self, pid: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    def _wait_exit(self, pid: int, timeout_s: float) -> bool:
        if self._process is not None and self._process.pid == pid:
            try:
                self._process.wait(timeout=timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not process_alive(pid):
                return True
            time.sleep(0.1)
        return False
