"""Dynamic batching across concurrent requests: one task, one model thread, a bounded queue.

Requests put their images on a bounded queue and wait on a future each. One asyncio task
takes the oldest image and the ones behind it, up to `max_batch`, waiting at most `max_wait_s`
after the oldest arrived for batch-mates, and runs the batch on a single model thread, so the
event loop keeps accepting, reading and answering requests while the models run. A request
whose images do not all fit in the queue is refused at once (the caller answers 503 with
`Retry-After`): an overloaded server says so instead of letting latency grow without bound.
Images of requests that gave up (timeout, client gone) are dropped before they are run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class QueueFull(Exception):
    """The images of a request do not fit in the queue now."""


@dataclass
class _Job(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    enqueued_at: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[In, Out]):
    """Runs `run_batch` over batches of the submitted items on one thread, in arrival order.

    `observe_batch(size)` is told the size of every batch run (for metrics).
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[In]], Sequence[Out]],
        *,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        observe_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.observe_batch = observe_batch
        self._pending: collections.deque[_Job[In, Out]] = collections.deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snowtrap-models")
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Images waiting for the models (not counting the batch being run)."""
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending:
            job.future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def call_in_model_thread(self, function: Callable[[], Out]) -> Out:
        """Run `function` on the model thread (loading a bundle creates its sessions there)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def submit(self, items: Sequence[In]) -> list[asyncio.Future[Out]]:
        """Queue all the items or none of them (raises `QueueFull`); a future per item."""
        if len(self._pending) + len(items) > self.queue_size:
            raise QueueFull(f"{len(self._pending)} images waiting, room for {self.queue_size}")
        loop = asyncio.get_running_loop()
        jobs = [_Job[In, Out](item, loop.create_future()) for item in items]
        self._pending.extend(jobs)
        self._arrived.set()
        return [job.future for job in jobs]

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self.observe_batch(len(batch))
            items = [job.item for job in batch]
            try:
                outs = await self.call_in_model_thread(functools.partial(self._run, items))
            except Exception as error:  # run_batch promises not to raise; if it does, say so
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, out in zip(batch, outs, strict=True):
                if not job.future.done():
                    job.future.set_result(out)

    def _run(self, items: list[In]) -> list[Out]:
        return list(self.run_batch(items))

    async def _next_batch(self) -> list[_Job[In, Out]]:
        """The oldest waiting jobs, up to `max_batch`, once the batch is full or the oldest has
        waited `max_wait_s`; jobs whose caller gave up are dropped."""
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._pending[0].enqueued_at + self.max_wait_s
        while len(self._pending) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        batch = []
        while self._pending and len(batch) < self.max_batch:
            job = self._pending.popleft()
            if not job.future.done():
                batch.append(job)
        return batch
