"""The worker's agent: micro-batches of `trap.images` through the pipeline, results out.

The batch runs under the shared runtime's guard (`stream.runtime.batches`): its outputs and
its input offsets are committed together, in one Kafka transaction per input partition, or
not at all. This module adds what only the worker does: the pipeline off the loop, its
counters, and consumer lag per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import faust
from aiokafka.errors import KafkaError
from faust.types import TP, EventT

from snowtrap.stream.contracts import headers_to_dict
from snowtrap.stream.metrics import WorkerMetrics
from snowtrap.stream.runtime.batches import GuardedBatchHandler, add_batch_agent
from snowtrap.stream.runtime.health import ProcessHealth
from snowtrap.stream.runtime.transactions import Output, PartitionTransactions
from snowtrap.stream.worker.batch_types import (
    STAGE_PRODUCE,
    BatchResult,
    ClaimCheckReader,
    InboundMessage,
    InferenceModels,
    OutboundMessage,
    PipelineConfig,
    SourceRef,
)
from snowtrap.stream.worker.pipeline import process_batch
from snowtrap.stream.worker.topics import WorkerTopics

log = logging.getLogger(__name__)

ResumeOffsets = Callable[[Iterable[TP]], Awaitable[dict[TP, int | None]]]
"""Where the group resumes partitions, from the broker (`BatchHandler.resume_offsets`)."""


@dataclass
class Progress:
    """Per partition, where the worker stands: the next offset it has not finished (for the
    lag gauge, the stall check, and to drop a record delivered again after a seek back), and
    where reading had to begin when the partition was assigned."""

    next_offsets: dict[TP, int] = field(default_factory=dict)
    starts: dict[TP, int | None] = field(default_factory=dict)
    """Where this worker had to begin the partition: the group's committed offset on the
    broker, the log start where it never committed or retention deleted the records (None:
    unknown, the consumer resets to the latest offset; the first record is taken as it comes)."""
    stalled_since: dict[TP, tuple[int, float]] = field(default_factory=dict)
    """Per partition with images waiting: the position it is stuck at, and since when."""

    def advance(self, events: Sequence[EventT]) -> None:
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            self.next_offsets[tp] = max(self.next_offsets.get(tp, 0), offset + 1)

    def fresh(self, events: Sequence[EventT]) -> list[EventT]:
        """The events not yet committed by this worker, each offset once.

        After a seek back (`recover_stalled`), a record already in the stream's buffer can be
        delivered a second time; its outputs were (or will be) committed once, so the second
        copy is dropped here, and it must not move the committed offset backwards either.
        """
        seen: set[tuple[TP, int]] = set()
        kept = []
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            if offset < self.next_offsets.get(tp, 0) or (tp, offset) in seen:
                continue
            seen.add((tp, offset))
            kept.append(event)
        return kept

    def unknown_starts(self, events: Sequence[EventT]) -> set[TP]:
        """Partitions of these events the worker has neither finished work on nor a start for."""
        return {
            event.message.tp
            for event in events
            if event.message.tp not in self.next_offsets and event.message.tp not in self.starts
        }

    def contiguous(self, events: Sequence[EventT]) -> tuple[list[EventT], dict[TP, int]]:
        """The events that continue each partition without a hole, and per partition with a
        hole the offset it must be read again from.

        `trap.images` is written without transactions, so its offsets have no holes; a batch
        that skips offsets got records that Faust dropped around a rebalance (records it had
        fetched or buffered before the seek back to the committed offsets). Committing such a
        batch would commit past images never processed, so the records after the hole wait
        until the partition is read again. A partition continues from the worker's last
        commit, or else from its start (`starts`).
        """
        expected: dict[TP, int | None] = {}
        holes: dict[TP, int] = {}
        kept = []
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            if tp in holes:
                continue
            if tp not in expected:
                expected[tp] = self.next_offsets.get(tp, self.starts.get(tp))
            want = expected[tp]
            if want is not None and offset > want:
                holes[tp] = want
                continue
            expected[tp] = offset + 1
            kept.append(event)
        return kept, holes

    def forget(self, tp: TP) -> None:
        self.next_offsets.pop(tp, None)
        self.starts.pop(tp, None)
        self.stalled_since.pop(tp, None)

    def stalled_for(self, tp: TP, position: int, lag: int, now: float) -> float:
        """Seconds this partition has had images waiting at the same position (0: moving)."""
        if lag <= 0:
            self.stalled_since.pop(tp, None)
            return 0.0
        stuck = self.stalled_since.get(tp)
        if stuck is None or stuck[0] != position:
            self.stalled_since[tp] = (position, now)
            return 0.0
        return now - stuck[1]


class BatchHandler(GuardedBatchHandler):
    """Runs one micro-batch: pipeline off the loop, commit its outputs, count."""

    def __init__(
        self,
        app: faust.App,
        topics: WorkerTopics,
        models: InferenceModels,
        config: PipelineConfig,
        read_claim_check: ClaimCheckReader,
        metrics: WorkerMetrics,
        health: ProcessHealth,
        transactions: PartitionTransactions,
    ) -> None:
        # One thread: batches are sequential, and ONNX Runtime uses its own thread pool.
        super().__init__(app, health, transactions, thread_name="snowtrap-models")
        self.topics = topics
        self.models = models
        self.config = config
        self.read_claim_check = read_claim_check
        self.metrics = metrics
        self.progress = Progress()

    async def run_batch(self, events: Sequence[EventT]) -> None:
        # Records of a partition no longer ours (buffered before a rebalance) are its new
        # owner's to process; committing them here would fence that owner.
        assigned = self.app.consumer.assignment()
        events = [event for event in self.progress.fresh(events) if event.message.tp in assigned]
        unknown = self.progress.unknown_starts(events)
        if unknown:  # newly assigned: fence the last owner, then read where the group stands
            await asyncio.gather(*(self.transactions.producer_for(tp) for tp in unknown))
            self.progress.starts.update(await self.resume_offsets(unknown))
        events, holes = self.progress.contiguous(events)
        for tp, offset in sorted(holes.items()):
            await self.read_again(tp, offset)
        if not events:
            return
        messages = [inbound_message(event) for event in events]
        batch = await self.off_loop(
            process_batch, messages, self.models, self.config, self.read_claim_check
        )
        started = time.perf_counter()
        await self.commit(
            events,
            (
                (source_tp(result.message.source), outbound_tuple(output))
                for result in batch.results
                for output in result.outputs
            ),
        )
        produced_at = time.time()
        self.metrics.stage_latency.labels(stage=STAGE_PRODUCE).observe(
            time.perf_counter() - started
        )
        self._count(batch, produced_at)
        self.progress.advance(events)

    async def read_again(self, tp: TP, offset: int) -> None:
        """Seek `tp` back to the hole at `offset`, or past it if retention deleted it.

        A hole can come up more than once (records buffered before the seek keep arriving
        for a batch or two); only the log start says that records are really gone."""
        earliest = (await self.app.consumer.earliest_offsets(tp)).get(tp, 0)
        if offset < earliest:
            log.error(
                "partition %s: offsets %d to %d were deleted before they were processed "
                "(retention); going on from %d",
                tp,
                offset,
                earliest - 1,
                earliest,
            )
            self.progress.forget(tp)
            self.progress.starts[tp] = offset = earliest
        else:
            log.warning("partition %s skipped records from %d: reading it again", tp, offset)
        await self.app.consumer.seek(tp, offset)

    async def resume_offsets(self, tps: Iterable[TP]) -> dict[TP, int | None]:
        """Where the group resumes each partition: its committed offset on the broker, or for
        a partition it never committed, the log start when the consumer resets to the earliest
        offset (None when it resets to the latest: unknown).

        aiokafka seeks a partition to its committed offset only when there is one above 0; a
        consumer that keeps such a partition through a rebalance goes on from where it had
        fetched, past records Faust dropped when the rebalance began (seen: a partition's
        first 8 images lost in the three-SIGKILL test)."""
        offsets = await self.transactions.committed_offsets(tps)
        never = [tp for tp, offset in offsets.items() if offset is None]
        if never and self.transactions.settings.auto_offset_reset == "earliest":
            offsets.update(await self.app.consumer.earliest_offsets(*never))
        return offsets

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


def source_tp(source: SourceRef) -> TP:
    """The input partition a result came from (its batch transaction)."""
    return TP(source.topic, source.partition)


def outbound_tuple(output: OutboundMessage) -> Output:
    return (output.topic, output.key, output.value, output.headers)


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
    stall_recovery_s: float,
) -> None:
    """Add the agent, the lag timer and the assignment signals to the app."""
    metrics = handler.metrics

    def forget_revoked(revoked: set[TP]) -> None:
        for tp in revoked:  # another worker may own it next: its lag is no longer ours
            handler.progress.forget(tp)
            with contextlib.suppress(KeyError):
                metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    add_batch_agent(
        app,
        topics.images,
        handler,
        name="snowtrap.worker.images",
        batch_size=batch_size,
        batch_timeout_s=batch_timeout_s,
        on_revoked=forget_revoked,
    )

    @app.timer(lag_interval_s)
    async def _measure_lag() -> None:
        await measure_lag(
            app,
            topics.images.get_topic_name(),
            handler.progress,
            metrics,
            stall_recovery_s,
            handler.resume_offsets,
        )


async def measure_lag(
    app: faust.App,
    topic: str,
    progress: Progress,
    metrics: WorkerMetrics,
    stall_recovery_s: float = float("inf"),
    resume_offsets: ResumeOffsets | None = None,
) -> None:
    """Consumer lag per assigned partition: high watermark minus the next unfinished offset.

    Never raises (but for cancellation): it runs as a Faust timer, and an exception escaping a
    timer crashes the whole worker. A rebalance can take a partition away between
    `assignment()` and the calls that follow (aiokafka raises IllegalStateError): that
    partition is skipped; any other failure skips this round.
    """
    try:
        stalled = await _measure_lag(
            app, topic, progress, metrics, stall_recovery_s, resume_offsets
        )
        if stalled:
            await recover_stalled(app, progress, stalled)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("consumer lag not measured this round: %s: %s", type(exc).__name__, exc)


async def _measure_lag(
    app: faust.App,
    topic: str,
    progress: Progress,
    metrics: WorkerMetrics,
    stall_recovery_s: float,
    resume_offsets: ResumeOffsets | None,
) -> dict[TP, float]:
    """Sets the lag gauges; returns the partitions stalled longer than `stall_recovery_s`."""
    stalled: dict[TP, float] = {}
    assigned = [tp for tp in app.consumer.assignment() if tp.topic == topic]
    if not assigned:
        return stalled
    now = time.monotonic()
    highwaters = await app.consumer.highwaters(*assigned)
    # Where the group stands: our last commit, else where the partition resumed (known once
    # a batch of it ran, else asked of the broker: the fetch position would hide records
    # Faust fetched and then dropped), else the fetch position.
    resumes: Mapping[TP, int | None] = progress.starts
    unknown = [tp for tp in assigned if tp not in progress.next_offsets and tp not in resumes]
    if unknown and resume_offsets is not None:
        resumes = {**progress.starts, **await resume_offsets(unknown)}
    for tp in assigned:
        position = progress.next_offsets.get(tp)
        if position is None:
            position = resumes.get(tp)
        if position is None:
            try:
                position = await app.consumer.position(tp)
            except KafkaError as exc:  # IllegalStateError: not assigned (any more)
                log.debug("no position for %s (reassigned?): %s", tp, exc)
                continue
        high = highwaters.get(tp)
        if high is None or position is None:
            continue
        lag = max(0, high - position)
        metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
        waited = progress.stalled_for(tp, position, lag, now)
        if waited >= stall_recovery_s:
            stalled[tp] = waited
    return stalled


async def recover_stalled(app: faust.App, progress: Progress, stalled: dict[TP, float]) -> None:
    """Seek every stalled partition back to where the group stands and resume fetching.

    faust-streaming 0.15 can leave a partition it kept through a rebalance unfetched while
    images wait on it (seen in the three-SIGKILL test; faust-streaming issue #629 reports the
    same symptom). The position the lag was measured from is the worker's last commit or the
    group's resume offset on the broker: everything before it is committed, everything after
    is redone, and `Progress.fresh` drops a record that was already in the stream's buffer when
    it comes again. (Faust's `perform_seek` would not do: aiokafka leaves a partition without
    a committed offset where it was.)
    """
    positions = {tp: progress.stalled_since[tp][0] for tp in stalled}
    for tp, waited in sorted(stalled.items()):
        log.warning(
            "partition %s: images waiting and no progress for %.0f s; reading it again from "
            "offset %d",
            tp,
            waited,
            positions[tp],
        )
    app.consumer.resume_partitions(set(stalled))
    for tp, position in positions.items():
        await app.consumer.seek(tp, position)
    app.consumer.resume_flow()
    for tp in stalled:  # a full window again before the next seek
        progress.stalled_since.pop(tp, None)
