"""Running a stream process: exit codes, logging, its data directory, topics, the Faust worker.

Start-up order, for every process: settings, then what it serves (a model bundle, a database;
readiness waits for it, and a process that cannot serve fails before it joins the consumer
group), then the topics, then Faust.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import faust
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from snowtrap.stream.runtime.batches import GuardedBatchHandler
from snowtrap.stream.runtime.cli import EXIT_BAD_SETTINGS  # noqa: F401 (one list of exit codes)
from snowtrap.stream.runtime.health import HealthServer
from snowtrap.stream.runtime.settings import StreamProcessSettings
from snowtrap.stream.settings import KafkaLoginError
from snowtrap.stream.topics import TopicProvisioningError, ensure_topics

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BATCH_FAILED = 1
"""A batch could not be completed: not committed, a restart redoes it."""
EXIT_CANNOT_SERVE = 3
"""What the process serves could not be loaded (the worker's bundle, the matcher's database)."""
EXIT_NO_TOPICS = 4

S = TypeVar("S", bound=StreamProcessSettings)


def configure_logging(level: str) -> None:
    """One log format for every process; the Kafka clients' connection chatter hidden."""
    logging.basicConfig(
        level=level.upper(),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    for chatty in ("kafka", "aiokafka"):  # their warnings still show
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


def start_process(settings: S, prefix: str, serve: Callable[[S], int]) -> int:
    """Configure logging, then `serve(settings)` with a data directory; its exit code."""
    configure_logging(settings.log_level)
    return with_data_dir(settings, prefix, serve)


def with_data_dir(settings: S, prefix: str, run: Callable[[S], int]) -> int:
    """`run(settings)` with `data_dir` set: the configured one, else a temporary directory."""
    if settings.data_dir is not None:
        return run(settings)
    with tempfile.TemporaryDirectory(prefix=prefix) as data_dir:
        return run(settings.model_copy(update={"data_dir": Path(data_dir)}))


def create_topics(settings: StreamProcessSettings) -> bool:
    """Log in once (a refused login is one clear error, not Faust's endless retries), then
    create missing snowtrap topics when `create_topics` is on; False if either failed."""
    try:
        settings.check_login()
    except KafkaLoginError as error:
        log.error("cannot log in: %s", error)
        return False
    if not settings.create_topics:
        return True
    client = settings.kafka_python_config()
    try:
        ensure_topics(client.pop("bootstrap_servers"), settings.topics, **client)
    except (KafkaError, TopicProvisioningError, OSError) as error:
        log.error("cannot create the snowtrap topics: %s", error)
        return False
    return True


def run_faust_worker(
    app: faust.App,
    handler: GuardedBatchHandler,
    registry: CollectorRegistry,
    settings: StreamProcessSettings,
) -> int:
    """Run the app with the health server until it stops; returns the exit code."""
    server = HealthServer(
        handler.health,
        registry,
        settings.metrics_host,
        settings.metrics_port,
        settings.liveness_stall_s,
    )
    worker = faust.Worker(
        app, server, loglevel=settings.log_level, quiet=True, redirect_stdouts=False
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else EXIT_BATCH_FAILED
    else:  # pragma: no cover - execute_from_commandline always exits
        code = EXIT_OK
    finally:
        handler.executor.shutdown(wait=True, cancel_futures=True)
    if handler.failed:
        return EXIT_BATCH_FAILED
    return code
