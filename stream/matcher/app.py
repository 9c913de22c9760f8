"""`snowtrap matcher [--config FILE] [--db PATH]`: identify leopards on `trap.crops`.

The Faust app follows the worker's conventions (`stream.worker.app`): no internal topics,
raw bytes on every topic, offsets committable only after every output of a batch was
acknowledged by the broker (`acks=all`), the worker's health server for `/metrics`,
`/healthz` and `/readyz`. Matching and every database call run on one thread, off the event
loop. One identity record per crop goes to `trap.identities`; undecodable or malformed crops
go to `trap.deadletter` with a reason.

Start-up order: settings, the individual database and its index (readiness waits for it),
the topics, then Faust. Exit codes: 0 stopped cleanly, 1 a batch could not be completed
(not committed; a restart redoes it), 2 bad settings, 3 unusable database, 4 no topics.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
from faust.types import TP, EventT
from kafka.errors import KafkaError
from pydantic import ValidationError

from snowtrap.core.settings import SettingsFileError
from snowtrap.models.reid.database import IndividualDB
from snowtrap.stream.matcher.metrics import MatcherMetrics
from snowtrap.stream.matcher.service import Handled, MatcherService, Source
from snowtrap.stream.matcher.settings import MatcherSettings
from snowtrap.stream.topics import TopicProvisioningError, ensure_topics
from snowtrap.stream.worker.agents import withhold_acks
from snowtrap.stream.worker.health import HealthServer, WorkerHealth

log = logging.getLogger("stream.matcher")

EXIT_OK = 0
EXIT_BATCH_FAILED = 1
EXIT_BAD_SETTINGS = 2
EXIT_BAD_DB = 3
EXIT_NO_TOPICS = 4
MiB = 1024 * 1024
_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML settings file (SNOWTRAP_* env vars win)"
    )
    parser.add_argument(
        "--db", type=Path, default=None, help="individual database (else db_path setting)"
    )
    parser.set_defaults(run=_cli_matcher)


def _cli_matcher(args: argparse.Namespace) -> int:
    overrides = {"db_path": args.db} if args.db is not None else {}
    try:
        settings = MatcherSettings.load(args.config, **overrides)
    except (SettingsFileError, ValidationError) as error:
        print(f"snowtrap matcher: bad settings: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    return run_matcher(settings)


def create_app(settings: MatcherSettings) -> faust.App:
    assert settings.data_dir is not None
    records_per_poll = max(2 * settings.batch_size, 8)
    return faust.App(
        settings.group_id,
        broker=settings.faust_broker_urls(),
        broker_credentials=settings.faust_credentials(),
        broker_client_id=settings.client_id,
        autodiscover=False,
        datadir=str(settings.data_dir),
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset=settings.auto_offset_reset,
        consumer_max_fetch_size=settings.max_message_bytes + MiB,
        broker_max_poll_records=records_per_poll,
        stream_buffer_maxsize=records_per_poll,
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 4),
        producer_acks=-1,
        producer_max_request_size=settings.max_message_bytes + MiB,
        producer_linger_ms=5,
        producer_request_timeout=settings.produce_timeout_s,
    )


def run_matcher(settings: MatcherSettings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    for chatty in ("kafka", "aiokafka"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    if settings.data_dir is None:
        with tempfile.TemporaryDirectory(prefix="snowtrap-matcher-") as data_dir:
            return run_matcher(settings.model_copy(update={"data_dir": Path(data_dir)}))
    config = settings.matcher_config()
    try:
        db = IndividualDB(settings.db_path)
        service = MatcherService(db, config)
    except (sqlite3.Error, OSError, ValueError) as error:
        log.error("cannot open the individual database %s: %s", settings.db_path, error)
        return EXIT_BAD_DB
    log.info(
        "matcher %s: %d chip(s) of %d individual(s), %d descriptors, database %s version %d",
        config.version,
        service.n_chips,
        len(service.index.individuals()),
        service.index.n_descriptors,
        settings.db_path,
        service.db_version,
    )
    if settings.create_topics:
        client = settings.kafka_python_config()
        try:
            ensure_topics(client.pop("bootstrap_servers"), settings.topics, **client)
        except (KafkaError, TopicProvisioningError, OSError) as error:
            log.error("cannot create the snowtrap topics: %s", error)
            return EXIT_NO_TOPICS
    try:
        return _run_faust(settings, service)
    finally:
        db.close()


class CropHandler:
    """One batch of crops: match off the loop, produce, await acks, count."""

    def __init__(
        self,
        app: faust.App,
        topics: dict[str, Any],
        service: MatcherService,
        metrics: MatcherMetrics,
        health: WorkerHealth,
    ) -> None:
        self.app = app
        self.topics = topics
        self.service = service
        self.metrics = metrics
        self.health = health
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snowtrap-matcher")
        self.failed = False

    def _match_batch(self, events: Sequence[EventT]) -> list[Handled]:
        self.service.refresh()
        out = []
        for event in events:
            message = event.message
            out.append(
                self.service.handle(
                    message.value,
                    message.headers,
                    message.key,
                    Source(message.topic, message.partition, message.offset),
                )
            )
        return out

    async def handle(self, events: Sequence[EventT]) -> None:
        completed = False
        try:
            if self.failed:
                return
            loop = asyncio.get_running_loop()
            handled = await loop.run_in_executor(
                self.executor, functools.partial(self._match_batch, events)
            )
            pending = [
                await self.topics[h.output.role].send(
                    key=h.output.key, value=h.output.value, headers=h.output.headers, force=True
                )
                for h in handled
            ]
            await asyncio.gather(*pending)
            self._count(handled)
            completed = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed = True
            self.health.fatal_error = f"{type(exc).__name__}: {exc}"
            log.exception("batch of %d could not be completed; stopping", len(events))
            await self.app.crash(exc)
        finally:
            if not completed:
                withhold_acks(events)

    async def refresh(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self.service.refresh)
        except Exception as exc:  # a timer must never crash the app
            log.warning("database refresh failed: %s: %s", type(exc).__name__, exc)
        self._gauges()

    def _gauges(self) -> None:
        index = self.service.index
        self.metrics.enrolled_chips.set(len(index.chips))
        self.metrics.individuals.set(len(index.individuals()))
        self.metrics.db_version.set(self.service.db_version)

    def _count(self, handled: list[Handled]) -> None:
        for h in handled:
            if h.result is None:
                self.metrics.crops.labels(outcome="deadletter").inc()
                self.metrics.deadletters.labels(reason=h.reason or "unknown").inc()
                continue
            self.metrics.crops.labels(outcome="matched").inc()
            self.metrics.decisions.labels(decision=h.result.decision.value).inc()
            self.metrics.query_latency.observe(h.result.seconds)
        self._gauges()


def _run_faust(settings: MatcherSettings, service: MatcherService) -> int:
    metrics = MatcherMetrics()
    metrics.info.info({"version": service.config.version, "db_path": str(settings.db_path)})
    health = WorkerHealth(bundle_loaded=True)  # "bundle" here: the database and its index
    app = create_app(settings)
    names = settings.topics
    topics = {
        "crops": app.topic(names.crops, allow_empty=True, **_RAW),
        "identities": app.topic(names.identities, **_RAW),
        "deadletter": app.topic(names.deadletter, **_RAW),
    }
    handler = CropHandler(app, topics, service, metrics, health)
    handler._gauges()
    batch_timeout_s = settings.batch_timeout_ms / 1000.0

    @app.agent(topics["crops"], name="snowtrap.matcher.crops", concurrency=1)
    async def match_crops(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_size, within=batch_timeout_s):
            await handler.handle(events)

    @app.on_partitions_assigned.connect
    async def _on_assigned(_: faust.App, assigned: set[TP], **__: Any) -> None:
        health.assigned = True
        health.partitions = sum(1 for tp in assigned if tp.topic == names.crops)
        log.info("assigned %d partitions of %s", health.partitions, names.crops)

    @app.on_partitions_revoked.connect
    async def _on_revoked(_: faust.App, revoked: set[TP], **__: Any) -> None:
        health.assigned = False

    @app.timer(settings.refresh_interval_s)
    async def _refresh() -> None:
        await handler.refresh()

    server = HealthServer(
        health,
        metrics.registry,
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
    else:  # pragma: no cover
        code = EXIT_OK
    finally:
        handler.executor.shutdown(wait=True, cancel_futures=True)
    if handler.failed:
        return EXIT_BATCH_FAILED
    return code
