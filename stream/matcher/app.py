"""`snowtrap matcher [--config FILE] [--db PATH]`: identify leopards on `trap.crops`.

The matcher runs on the stream runtime the worker runs on (`stream.runtime`): the same Faust
app (no internal topics, raw bytes on every topic, `read_committed`, so crops of an aborted
worker batch are never matched), each batch's outputs and input offsets in one Kafka
transaction per partition (exactly once), the same health server for `/metrics`, `/healthz`
and `/readyz`. Matching and every database call run on one thread,
off the event loop. One identity record per crop goes to `trap.identities`; undecodable or
malformed crops go to `trap.deadletter` with a reason.

One matcher per database: it holds an exclusive lock beside the SQLite file while it runs
(`writer_lock`); a second one refuses to start, or stands by for `db_lock_wait_s`.

Start-up order: settings, the database lock, the individual database and its index
(readiness waits for it), the topics, then Faust. Exit codes: 0 stopped cleanly, 1 a batch
could not be committed (aborted; a restart redoes it), 2 bad settings, 3 unusable or locked
database, 4 no topics (`stream.runtime.process`).
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
from collections.abc import Sequence

import faust
from faust.types import EventT

from snowtrap.stream.matcher.database import IndividualDB
from snowtrap.stream.matcher.metrics import MatcherMetrics
from snowtrap.stream.matcher.service import Handled, MatcherService, Source
from snowtrap.stream.matcher.settings import MatcherSettings
from snowtrap.stream.matcher.writer_lock import DatabaseLocked, WriterLock
from snowtrap.stream.runtime.app import RAW_TOPIC, create_app
from snowtrap.stream.runtime.batches import GuardedBatchHandler, add_batch_agent
from snowtrap.stream.runtime.cli import configure_process_cli
from snowtrap.stream.runtime.health import ProcessHealth
from snowtrap.stream.runtime.process import (
    EXIT_CANNOT_SERVE,
    EXIT_NO_TOPICS,
    create_topics,
    run_faust_worker,
    start_process,
)
from snowtrap.stream.runtime.transactions import PartitionTransactions

log = logging.getLogger("stream.matcher")

EXIT_BAD_DB = EXIT_CANNOT_SERVE
EXIT_DB_LOCKED = EXIT_CANNOT_SERVE
"""Another matcher holds the database (`db_lock_wait_s` passed): this one does not serve."""


def configure_cli(parser: argparse.ArgumentParser) -> None:
    configure_process_cli(
        parser,
        MatcherSettings,
        run_matcher,
        command="matcher",
        path_option="--db",
        setting="db_path",
        help="individual database (else db_path setting)",
    )


def run_matcher(settings: MatcherSettings) -> int:
    """Lock and open the database, create the topics, run the Faust worker; the exit code."""
    return start_process(settings, "snowtrap-matcher-", _serve_locked)


def _serve_locked(settings: MatcherSettings) -> int:
    """`_serve` while holding the database's writer lock (one matcher per database)."""
    lock = WriterLock(settings.db_path)
    try:
        lock.acquire(
            settings.db_lock_wait_s,
            on_wait=lambda holder: log.info(
                "standing by: database %s is served by another matcher (%s)",
                settings.db_path,
                holder,
            ),
        )
    except (DatabaseLocked, OSError) as error:
        log.error("cannot serve %s: %s", settings.db_path, error)
        return EXIT_DB_LOCKED
    with lock:
        return _serve(settings)


def _serve(settings: MatcherSettings) -> int:
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
    if not create_topics(settings):
        return EXIT_NO_TOPICS
    try:
        return _run_faust(settings, service)
    finally:
        db.close()


class CropHandler(GuardedBatchHandler):
    """One batch of crops: match off the loop, commit the outputs, count."""

    def __init__(
        self,
        app: faust.App,
        topics: dict[str, str],
        service: MatcherService,
        metrics: MatcherMetrics,
        health: ProcessHealth,
        transactions: PartitionTransactions,
    ) -> None:
        super().__init__(app, health, transactions, thread_name="snowtrap-matcher")
        self.topics = topics
        self.service = service
        self.metrics = metrics

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

    async def run_batch(self, events: Sequence[EventT]) -> None:
        handled = await self.off_loop(self._match_batch, events)
        await self.commit(
            events,
            (
                (
                    event.message.tp,
                    (self.topics[h.output.role], h.output.key, h.output.value, h.output.headers),
                )
                for event, h in zip(events, handled, strict=True)
            ),
        )
        self._count(handled)

    async def refresh(self) -> None:
        try:
            await self.off_loop(self.service.refresh)
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
    health = ProcessHealth(bundle_loaded=True)  # "bundle" here: the database and its index
    app = create_app(settings)
    names = settings.topics
    crops = app.topic(names.crops, allow_empty=True, **RAW_TOPIC)
    outputs = {"identities": names.identities, "deadletter": names.deadletter}
    transactions = PartitionTransactions(settings)
    handler = CropHandler(app, outputs, service, metrics, health, transactions)
    handler._gauges()
    add_batch_agent(
        app,
        crops,
        handler,
        name="snowtrap.matcher.crops",
        batch_size=settings.batch_size,
        batch_timeout_s=settings.batch_timeout_ms / 1000.0,
    )

    @app.timer(settings.refresh_interval_s)
    async def _refresh() -> None:
        await handler.refresh()

    return run_faust_worker(app, handler, metrics.registry, settings)
