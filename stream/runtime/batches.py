"""One micro-batch at a time, and offsets committable only for batches that completed.

Offsets and acknowledgements. Faust commits an offset once every event up to it is acked.
`Stream.take_events` acks a batch's events when the agent asks for the next batch, and also
when the generator is closed after the agent was cancelled or failed; that second path would
commit a batch whose outputs were never produced (verified: SIGTERM during a batch committed
it). So every batch runs under `batch_guard`: when the batch did not complete (cancelled,
produce failure, bug), its messages are marked as already acked *without* telling the
consumer, which then never commits past them, and they are consumed again after a restart.
A batch completes only after the broker acknowledged every output (`acks=all`).

After a failed batch the process stops (exit code 1) instead of going on: acking later events
while earlier ones are held back would leave a gap that Faust's commit logic can step over.
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
from faust.types import TP, EventT

from snowtrap.stream.runtime.health import ProcessHealth

log = logging.getLogger(__name__)

T = TypeVar("T")

Output = tuple[Any, bytes | None, bytes | None, Any]
"""One message to produce: (Faust topic, key, value, headers)."""


class GuardedBatchHandler:
    """Runs one batch: `run_batch` (the process's work), guarded; stops the app on failure.

    Blocking work goes through `off_loop`, on one thread: batches are sequential, and the
    models (ONNX Runtime) or the database bring their own threads or need exactly one.
    """

    def __init__(self, app: faust.App, health: ProcessHealth, thread_name: str) -> None:
        self.app = app
        self.health = health
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self.failed = False

    async def run_batch(self, events: Sequence[EventT]) -> None:
        """The process's work for one batch; returns once every output was acknowledged."""
        raise NotImplementedError

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


async def produce_all(outputs: Iterable[Output]) -> None:
    """Send every output, then wait until the broker acknowledged each (`acks=all`)."""
    pending = [
        await topic.send(key=key, value=value, headers=headers, force=True)
        for topic, key, value, headers in outputs
    ]
    await asyncio.gather(*pending)


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
    the partition assignment of `topic` (`on_revoked` forgets per-partition state)."""
    health = handler.health
    topic_name = topic.get_topic_name()

    @app.agent(topic, name=name, concurrency=1)
    async def process_batches(stream: faust.StreamT) -> None:
        async for events in stream.take_events(batch_size, within=batch_timeout_s):
            await handler.handle(events)

    @app.on_partitions_assigned.connect
    async def _on_assigned(_: faust.App, assigned: set[TP], **__: Any) -> None:
        health.assigned = True
        health.partitions = sum(1 for tp in assigned if tp.topic == topic_name)
        log.info("assigned %d partitions of %s", health.partitions, topic_name)

    @app.on_partitions_revoked.connect
    async def _on_revoked(_: faust.App, revoked: set[TP], **__: Any) -> None:
        health.assigned = False
        if on_revoked is not None:
            on_revoked(revoked)
