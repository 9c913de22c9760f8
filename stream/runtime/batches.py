"""One micro-batch at a time, committed exactly once or not at all.

A batch's outputs and the group's offsets after it go to Kafka in one transaction per input
partition (`stream.runtime.transactions`): either a consumer reading `read_committed` sees all
of a batch's outputs and the group moves past its input, or neither happens and the input is
consumed again. Faust never commits offsets itself (`stream.runtime.transport`).

Faust still acks events: a rebalance or a stop waits until the batch in flight has acked its
events. `Stream.take_events` acks a batch's events when the agent asks for the next batch, and
also when the generator is closed after the agent was cancelled or failed, so every batch runs
under `batch_guard`: when it did not complete, its messages are marked as already acked
without telling the consumer.

After a failed batch the process stops (exit code 1) instead of going on; a restart consumes
the batch again from the last committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import faust
from aiokafka.errors import KafkaError
from faust.types import TP, EventT

from snowtrap.stream.runtime.health import ProcessHealth
from snowtrap.stream.runtime.transactions import Output, PartitionTransactions

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["GuardedBatchHandler", "Output", "add_batch_agent", "batch_guard"]


class GuardedBatchHandler:
    """Runs one batch: `run_batch` (the process's work), guarded; stops the app on failure.

    Blocking work goes through `off_loop`, on one thread: batches are sequential, and the
    models (ONNX Runtime) or the database bring their own threads or need exactly one.
    Outputs go out through `commit`, in the batch's transactions.
    """

    def __init__(
        self,
        app: faust.App,
        health: ProcessHealth,
        transactions: PartitionTransactions,
        thread_name: str,
    ) -> None:
        self.app = app
        self.health = health
        self.transactions = transactions
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self.failed = False

    async def run_batch(self, events: Sequence[EventT]) -> None:
        """The process's work for one batch; returns once `commit` committed it."""
        raise NotImplementedError

    async def commit(self, events: Sequence[EventT], outputs: Iterable[tuple[TP, Output]]) -> None:
        """Every output (each with the input partition it came from) and the offsets after
        `events`, in one transaction per input partition."""
        await self.transactions.commit_batch(
            ((event.message.tp, event.message.offset) for event in events), outputs
        )

    async def handle(self, events: Sequence[EventT]) -> None:
        """Process one batch; its offsets become committable only if it completes."""
        with batch_guard(events) as batch:
            if self.failed:  # the process is stopping: nothing more may be acked
                return
            try:
                await self.run_batch(events)
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

    async def off_loop(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on the handler's one thread, awaited from the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(function, *args))


@dataclass
class BatchState:
    completed: bool = False


@contextlib.contextmanager
def batch_guard(events: Sequence[EventT]) -> Iterator[BatchState]:
    """Hold back the acks of a batch that did not complete (see the module docstring)."""
    state = BatchState()
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


def add_batch_agent(
    app: faust.App,
    topic: Any,
    handler: GuardedBatchHandler,
    *,
    name: str,
    batch_size: int,
    batch_timeout_s: float,
    on_revoked: Callable[[set[TP]], None] | None = None,
) -> None:
    """The one agent of a process: batches of `topic` through `handler`; readiness follows
    the partition assignment of `topic` (`on_revoked` forgets per-partition state), and so do
    the transactional producers (one per partition; starting one fences the last owner)."""
    health = handler.health
    topic_name = topic.get_topic_name()

    @app.agent(topic, name=name, concurrency=1)
    async def process_batches(stream: faust.StreamT) -> None:
        try:
            async for events in stream.take_events(batch_size, within=batch_timeout_s):
                await handler.handle(events)
        finally:  # after the batch in flight ended, however it ended
            await handler.transactions.close()

    @app.on_partitions_assigned.connect
    async def _on_assigned(_: faust.App, assigned: set[TP], **__: Any) -> None:
        mine = {tp for tp in assigned if tp.topic == topic_name}
        try:
            await handler.transactions.assign(mine)
        except (KafkaError, TimeoutError) as error:  # the first batch of each partition
            # starts its producer instead (and fails the batch if it still cannot)
            log.warning("transactional producers not started yet: %s", error)
        health.assigned = True
        health.partitions = len(mine)
        health.partition_ids = sorted(tp.partition for tp in mine)
        log.info("assigned %d partitions of %s", health.partitions, topic_name)

    @app.on_partitions_revoked.connect
    async def _on_revoked(_: faust.App, revoked: set[TP], **__: Any) -> None:
        health.assigned = False
        if on_revoked is not None:
            on_revoked(revoked)
