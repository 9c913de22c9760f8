"""The worker's agent: micro-batches of `trap.images` through the pipeline, results out.

Offsets and acknowledgements. Faust commits an offset once every event up to it is acked.
`Stream.take_events` acks a batch's events when the agent asks for the next batch, and also
when the generator is closed after the agent was cancelled or failed; that second path would
commit a batch whose outputs were never produced (verified: SIGTERM during a batch committed
it). So every batch runs under `_batch_guard`: when the batch did not complete (cancelled,
produce failure, bug), its messages are marked as already acked *without* telling the
consumer, which then never commits past them, and they are consumed again after a restart.
A batch completes only after the broker acknowledged every output (`acks=all`).

After a failed batch the worker stops (exit code 1) instead of going on: acking later events
while earlier ones are held back would leave a gap that Faust's commit logic can step over.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.types import TP, EventT

from snowtrap.stream.contracts import headers_to_dict
from snowtrap.stream.metrics import WorkerMetrics
from snowtrap.stream.worker.health import WorkerHealth
from snowtrap.stream.worker.pipeline import (
    STAGE_PRODUCE,
    BatchResult,
    ClaimCheckReader,
    InboundMessage,
    InferenceModels,
    PipelineConfig,
    SourceRef,
    process_batch,
)
from snowtrap.stream.worker.topics import WorkerTopics

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Per partition, the next offset the worker has not finished (for the lag gauge)."""

    next_offsets: dict[TP, int] = field(default_factory=dict)

    def advance(self, events: Sequence[EventT]) -> None:
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            self.next_offsets[tp] = max(self.next_offsets.get(tp, 0), offset + 1)


class BatchHandler:
    """Runs one micro-batch: pipeline off the loop, produce, await acks, count."""

    def __init__(
        self,
        app: faust.App,
        topics: WorkerTopics,
        models: InferenceModels,
        config: PipelineConfig,
        read_claim_check: ClaimCheckReader,
        metrics: WorkerMetrics,
        health: WorkerHealth,
    ) -> None:
        self.app = app
        self.topics = topics
        self.models = models
        self.config = config
        self.read_claim_check = read_claim_check
        self.metrics = metrics
        self.health = health
        self.progress = Progress()
        # One thread: batches are sequential, and ONNX Runtime uses its own thread pool.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snowtrap-models")
        self.failed = False

    async def handle(self, events: Sequence[EventT]) -> None:
        """Process one batch; its offsets become committable only if it completes."""
        with _batch_guard(events) as batch:
            if self.failed:  # the worker is stopping: nothing more may be acked
                return
            try:
                await self._run(events)
            except asyncio.CancelledError:
                log.info("batch of %d cancelled; not committed, redone after restart", len(events))
                raise
            except Exception as exc:
                self.failed = True
                self.health.fatal_error = f"{type(exc).__name__}: {exc}"
                log.exception(
                    "batch of %d could not be completed; stopping so it is redone", len(events)
                )
                await self.app.crash(exc)
                return
            batch.completed = True

    async def _run(self, events: Sequence[EventT]) -> None:
        messages = [inbound_message(event) for event in events]
        loop = asyncio.get_running_loop()
        batch = await loop.run_in_executor(
            self.executor,
            functools.partial(
                process_batch, messages, self.models, self.config, self.read_claim_check
            ),
        )
        started = time.perf_counter()
        await self._produce(batch)
        produced_at = time.time()
        self.metrics.stage_latency.labels(stage=STAGE_PRODUCE).observe(
            time.perf_counter() - started
        )
        self._count(batch, produced_at)
        self.progress.advance(events)

    async def _produce(self, batch: BatchResult) -> None:
        """Send every output of the batch, then wait until the broker acknowledged each."""
        pending: list[Any] = []
        for result in batch.results:
            for output in result.outputs:
                topic = self.topics.by_name(output.topic)
                pending.append(
                    await topic.send(
                        key=output.key, value=output.value, headers=output.headers, force=True
                    )
                )
        await asyncio.gather(*pending)

    def _count(self, batch: BatchResult, produced_at: float) -> None:
        metrics = self.metrics
        metrics.batch_size.observe(len(batch.results))
        for stage, seconds in batch.stage_seconds.items():
            metrics.stage_latency.labels(stage=stage).observe(seconds)
        for result in batch.results:
            metrics.images.labels(outcome=result.outcome).inc()
            camera = result.camera_id
            if camera:
                metrics.camera_images.labels(camera_id=camera).inc()
                metrics.camera_last_seen.labels(camera_id=camera).set(produced_at)
            if result.letter is not None:
                letter = result.letter
                metrics.deadletters.labels(reason=letter.reason, stage=letter.stage).inc()
                continue
            record = result.record
            assert record is not None
            if record.detections and camera:
                metrics.leopards.labels(camera_id=camera).inc(len(record.detections))
            if result.crops:
                metrics.crops.inc(len(result.crops))
            if record.sent_at > 0:
                metrics.end_to_end_latency.observe(max(0.0, produced_at - record.sent_at))


@dataclass
class _BatchState:
    completed: bool = False


@contextlib.contextmanager
def _batch_guard(events: Sequence[EventT]) -> Iterator[_BatchState]:
    """Hold back the acks of a batch that did not complete (see the module docstring)."""
    state = _BatchState()
    try:
        yield state
    finally:
        if not state.completed:
            withhold_acks(events)


def withhold_acks(events: Sequence[EventT]) -> None:
    """Make later `ack()` calls on these events no-ops, so their offsets are never committed.

    `Message.ack` does nothing for a message already marked acked, and only the consumer's
    own bookkeeping (which this skips) makes an offset committable.
    """
    for event in events:
        event.message.acked = True


def inbound_message(event: EventT) -> InboundMessage:
    """A Faust event as the pipeline's plain message (raw key, value, headers, source)."""
    message = event.message
    return InboundMessage(
        key=message.key,
        value=message.value,
        headers=headers_to_dict(message.headers),
        source=SourceRef(message.topic, message.partition, message.offset),
    )


def wire_worker(
    app: faust.App,
    topics: WorkerTopics,
    handler: BatchHandler,
    *,
    batch_size: int,
    batch_timeout_s: float,
    lag_interval_s: float,
) -> None:
    """Add the agent, the lag timer and the assignment signals to the app."""
    health, metrics = handler.health, handler.metrics

    @app.agent(topics.images, name="snowtrap.worker.images", concurrency=1)
    async def process_images(stream: faust.StreamT) -> None:
        async for events in stream.take_events(batch_size, within=batch_timeout_s):
            await handler.handle(events)

    @app.on_partitions_assigned.connect
    async def _on_assigned(_: faust.App, assigned: set[TP], **__: Any) -> None:
        health.assigned = True
        health.partitions = sum(1 for tp in assigned if tp.topic == topics.images.get_topic_name())
        log.info("assigned %d partitions of %s", health.partitions, topics.images.get_topic_name())

    @app.on_partitions_revoked.connect
    async def _on_revoked(_: faust.App, revoked: set[TP], **__: Any) -> None:
        health.assigned = False
        for tp in revoked:  # another worker may own it next: its lag is no longer ours
            handler.progress.next_offsets.pop(tp, None)
            with contextlib.suppress(KeyError):
                metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    @app.timer(lag_interval_s)
    async def _measure_lag() -> None:
        await measure_lag(app, topics.images.get_topic_name(), handler.progress, metrics)


async def measure_lag(
    app: faust.App, topic: str, progress: Progress, metrics: WorkerMetrics
) -> None:
    """Consumer lag per assigned partition: high watermark minus the next unfinished offset.

    Never raises (but for cancellation): it runs as a Faust timer, and an exception escaping a
    timer crashes the whole worker. A rebalance can take a partition away between
    `assignment()` and the calls that follow (aiokafka raises IllegalStateError): that
    partition is skipped; any other failure skips this round.
    """
    try:
        await _measure_lag(app, topic, progress, metrics)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("consumer lag not measured this round: %s: %s", type(exc).__name__, exc)


async def _measure_lag(
    app: faust.App, topic: str, progress: Progress, metrics: WorkerMetrics
) -> None:
    assigned = [tp for tp in app.consumer.assignment() if tp.topic == topic]
    if not assigned:
        return
    highwaters = await app.consumer.highwaters(*assigned)
    for tp in assigned:
        position = progress.next_offsets.get(tp)
        if position is None:
            try:
                position = await app.consumer.position(tp)
            except KafkaError as exc:  # IllegalStateError: not assigned (any more)
                log.debug("no position for %s (reassigned?): %s", tp, exc)
                continue
        high = highwaters.get(tp)
        if high is None or position is None:
            continue
        metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
            max(0, high - position)
        )
