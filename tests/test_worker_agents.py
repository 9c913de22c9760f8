"""The worker's agent logic that needs no broker: lag measurement during rebalances, acks
held back for batches that did not complete."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import IllegalStateError
from faust.types import TP

from snowtrap.stream.metrics import WorkerMetrics
from snowtrap.stream.runtime.batches import batch_guard
from snowtrap.stream.worker.agents import BatchHandler, Progress, measure_lag, recover_stalled

TOPIC = "trap.images"


@dataclass
class FakeConsumer:
    """The three consumer calls `measure_lag` makes; partitions in `moved` were reassigned
    after `assignment()` answered, as happens during a rebalance."""

    assigned: list[TP]
    high: dict[TP, int]
    positions: dict[TP, int]
    moved: set[TP] = field(default_factory=set)
    highwaters_error: Exception | None = None

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        if self.highwaters_error is not None:
            raise self.highwaters_error
        return {tp: self.high[tp] for tp in tps}

    async def position(self, tp: TP) -> int:
        if tp in self.moved:
            raise IllegalStateError(f"Partition {tp} is not assigned")
        return self.positions[tp]


def lag_samples(metrics: WorkerMetrics) -> dict[str, float]:
    return {
        sample.labels["partition"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "snowtrap_consumer_lag_messages"
        for sample in family.samples
    }


def test_lag_skips_a_partition_taken_away_mid_measurement():
    tps = [TP(TOPIC, p) for p in range(3)]
    consumer = FakeConsumer(
        assigned=[*tps, TP("other", 0)],
        high={tp: 10 for tp in tps},
        positions={tps[0]: 4, tps[1]: 9, tps[2]: 0},
        moved={tps[2]},
    )
    progress = Progress(next_offsets={tps[1]: 10})  # finished work counts, not the fetch position
    metrics = WorkerMetrics()
    asyncio.run(measure_lag(SimpleNamespace(consumer=consumer), TOPIC, progress, metrics))  # type: ignore[arg-type]
    assert lag_samples(metrics) == {"0": 6.0, "1": 0.0}


def test_lag_counts_from_the_groups_committed_offset_not_the_fetch_position():
    """Records Faust fetched and then dropped around a rebalance move the fetch position but
    were never processed: until the worker finishes work on a partition, the lag counts from
    the offset the group committed on the broker."""
    tps = [TP(TOPIC, p) for p in range(3)]
    consumer = FakeConsumer(
        assigned=tps, high={tp: 20 for tp in tps}, positions={tp: 20 for tp in tps}
    )
    asked: list[list[TP]] = []

    async def resume_offsets(wanted: Any) -> dict[TP, int | None]:
        asked.append(sorted(wanted))
        return {tps[0]: 12, tps[1]: None}

    progress = Progress(next_offsets={tps[2]: 15})
    metrics = WorkerMetrics()
    app = SimpleNamespace(consumer=consumer)
    asyncio.run(measure_lag(app, TOPIC, progress, metrics, resume_offsets=resume_offsets))  # type: ignore[arg-type]
    assert asked == [[tps[0], tps[1]]]  # tp2's own last commit needs no broker round trip
    assert lag_samples(metrics) == {"0": 8.0, "1": 0.0, "2": 5.0}


def test_lag_measurement_never_raises_out_of_the_timer():
    tps = [TP(TOPIC, 0)]
    consumer = FakeConsumer(tps, {}, {}, highwaters_error=IllegalStateError("rebalancing"))
    metrics = WorkerMetrics()
    asyncio.run(measure_lag(SimpleNamespace(consumer=consumer), TOPIC, Progress(), metrics))  # type: ignore[arg-type]
    assert lag_samples(metrics) == {}


def events(n: int) -> list[Any]:
    return [SimpleNamespace(message=SimpleNamespace(acked=False, offset=i)) for i in range(n)]


def test_a_batch_that_does_not_complete_has_its_acks_withheld():
    batch = events(3)
    with pytest.raises(RuntimeError), batch_guard(batch):
        raise RuntimeError("produce failed")
    assert all(event.message.acked for event in batch)  # later ack() calls are no-ops

    cancelled = events(2)
    with pytest.raises(asyncio.CancelledError), batch_guard(cancelled):
        raise asyncio.CancelledError

    assert all(event.message.acked for event in cancelled)

    done = events(2)
    with batch_guard(done) as state:
        state.completed = True
    assert not any(event.message.acked for event in done)  # Faust acks them as usual


def _event(tp: TP, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


def test_records_delivered_again_after_a_seek_back_are_dropped_once_committed() -> None:
    tp0, tp1 = TP(TOPIC, 0), TP(TOPIC, 1)
    progress = Progress()
    progress.advance([_event(tp0, 4), _event(tp0, 5)])  # committed up to offset 5 on tp0
    batch = [_event(tp0, 5), _event(tp0, 6), _event(tp0, 6), _event(tp1, 0), _event(tp0, 3)]
    kept = progress.fresh(batch)
    assert [(e.message.tp.partition, e.message.offset) for e in kept] == [(0, 6), (1, 0)]
    progress.forget(tp0)  # revoked: another worker may have committed more since
    assert progress.fresh([_event(tp0, 2)])[0].message.offset == 2


def test_a_partition_counts_as_stalled_only_while_images_wait_at_the_same_position() -> None:
    tp = TP(TOPIC, 3)
    progress = Progress()
    assert progress.stalled_for(tp, position=10, lag=8, now=100.0) == 0.0
    assert progress.stalled_for(tp, position=10, lag=8, now=131.0) == 31.0
    assert progress.stalled_for(tp, position=12, lag=6, now=140.0) == 0.0  # it moved
    assert progress.stalled_for(tp, position=12, lag=6, now=150.0) == 10.0
    assert progress.stalled_for(tp, position=12, lag=0, now=200.0) == 0.0  # nothing waits
    assert progress.stalled_for(tp, position=12, lag=3, now=210.0) == 0.0


def test_a_batch_with_a_hole_keeps_what_precedes_it_and_names_where_to_read_again() -> None:
    tp0, tp1, tp2 = TP(TOPIC, 0), TP(TOPIC, 1), TP(TOPIC, 2)
    progress = Progress()
    progress.advance([_event(tp0, 9)])  # committed up to 10 on tp0
    batch = [_event(tp0, 10), _event(tp0, 13), _event(tp0, 14), _event(tp1, 5), _event(tp1, 6)]
    batch += [_event(tp2, 0)]
    assert progress.unknown_starts(batch) == {tp1, tp2}  # tp0 goes on from the last commit
    progress.starts.update({tp1: 5, tp2: None})  # the group's committed offsets on the broker
    kept, holes = progress.contiguous(batch)
    assert [(e.message.tp.partition, e.message.offset) for e in kept] == [
        (0, 10), (1, 5), (1, 6), (2, 0),
    ]  # fmt: skip
    assert holes == {tp0: 11}
    kept, holes = progress.contiguous([_event(tp1, 7)])
    assert holes == {tp1: 5} and not kept  # assigned at 5, nothing committed since: 5 first
    progress.forget(tp1)  # revoked: where it starts is read again when it comes back
    assert progress.unknown_starts([_event(tp1, 7)]) == {tp1}


def test_a_stalled_partition_is_read_again_from_where_its_lag_was_measured() -> None:
    """Recovery seeks each stalled partition to the position its lag counted from (the last
    commit, or the group's resume offset), never to a fetch position past dropped records."""
    tp0, tp1 = TP(TOPIC, 0), TP(TOPIC, 1)
    calls: list[Any] = []

    class SeekingConsumer:
        def resume_partitions(self, tps: set[TP]) -> None:
            calls.append(("resume", sorted(tps)))

        async def seek(self, tp: TP, offset: int) -> None:
            calls.append(("seek", tp.partition, offset))

        def resume_flow(self) -> None:
            calls.append(("flow",))

    progress = Progress()
    progress.stalled_for(tp0, position=0, lag=8, now=100.0)  # never committed: the log start
    progress.stalled_for(tp1, position=42, lag=3, now=100.0)
    stalled = {tp0: progress.stalled_for(tp0, 0, 8, 140.0), tp1: 40.0}
    asyncio.run(recover_stalled(SimpleNamespace(consumer=SeekingConsumer()), progress, stalled))  # type: ignore[arg-type]
    assert calls == [("resume", [tp0, tp1]), ("seek", 0, 0), ("seek", 1, 42), ("flow",)]
    assert progress.stalled_since == {}  # a full window before the next seek


def test_a_hole_is_read_again_unless_retention_deleted_it() -> None:
    """Records buffered before a seek can show the same hole twice; only the log start says
    the records are gone, and then the partition goes on from it."""
    tp = TP(TOPIC, 0)
    seeks: list[int] = []

    class Consumer:
        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return {tp: 5}

        async def seek(self, _: TP, offset: int) -> None:
            seeks.append(offset)

    handler = SimpleNamespace(app=SimpleNamespace(consumer=Consumer()), progress=Progress())
    handler.progress.advance([_event(tp, 6)])
    for _ in range(3):  # the same hole, again and again: read again every time
        asyncio.run(BatchHandler.read_again(handler, tp, 7))  # type: ignore[arg-type]
    assert seeks == [7, 7, 7] and handler.progress.next_offsets == {tp: 7}
    asyncio.run(BatchHandler.read_again(handler, tp, 2))  # type: ignore[arg-type]
    assert seeks[-1] == 5 and handler.progress.starts == {tp: 5}
    assert handler.progress.next_offsets == {}  # the next batch continues from 5


def test_committed_offsets_ride_out_a_client_that_is_not_ready_yet() -> None:
    """Seen in CI: a fresh admin client's first request found no broker in its metadata
    (NodeNotReadyError). Retriable errors get a fresh client and another try; the batch and
    the lag timer never use the client at the same time; a fatal error is raised."""
    from aiokafka.errors import GroupAuthorizationFailedError, NodeNotReadyError

    from snowtrap.stream.runtime.transactions import PartitionTransactions
    from snowtrap.stream.worker.settings import WorkerSettings

    tp0, tp1 = TP(TOPIC, 0), TP(TOPIC, 1)
    failures: list[Exception] = [NodeNotReadyError("node id None")]
    in_use: list[int] = []

    class Admin:
        async def list_consumer_group_offsets(self, group: str, partitions: Any) -> Any:
            in_use.append(1)
            assert len(in_use) == 1, "two requests at once on one client"
            await asyncio.sleep(0.01)
            in_use.pop()
            if failures:
                raise failures.pop()
            return {
                partitions[0]: SimpleNamespace(offset=7),
                partitions[1]: SimpleNamespace(offset=-1),
            }

        async def close(self) -> None:
            pass

    transactions = PartitionTransactions(WorkerSettings(group_id="g"))
    transactions._started_admin = lambda: _coro(Admin())  # type: ignore[method-assign]

    async def both() -> list[dict[TP, int | None]]:
        return list(
            await asyncio.gather(*(transactions.committed_offsets([tp0, tp1]) for _ in range(2)))
        )

    assert asyncio.run(both()) == [{tp0: 7, tp1: None}] * 2
    failures.append(GroupAuthorizationFailedError("not allowed"))
    with pytest.raises(GroupAuthorizationFailedError):
        asyncio.run(transactions.committed_offsets([tp0]))


async def _coro(value: Any) -> Any:
    return value
