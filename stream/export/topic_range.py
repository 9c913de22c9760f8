"""A bounded range of a topic read: a time range, an offset range, or up to the end offsets
as they were at the start (never waits for new records)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from snowtrap.stream.export.settings import ExportError

OffsetSpec = int | dict[int, int]
"""One offset for every partition, or offsets by partition. A range given by partition reads
only the partitions it names; a partition named on one side only runs to the topic's
start or end on the other."""


def parse_offsets(text: str) -> OffsetSpec:
    """`"120"` (all partitions) or `"0:120,3:57"` (by partition)."""
    text = text.strip()
    try:
        if ":" not in text:
            value = int(text)
            if value < 0:
                raise ValueError
            return value
        offsets: dict[int, int] = {}
        for part in text.split(","):
            partition, offset = part.split(":")
            offsets[int(partition)] = int(offset)
        if any(p < 0 or o < 0 for p, o in offsets.items()):
            raise ValueError
        return offsets
    except ValueError:
        raise ValueError(f"offsets {text!r}: expected N or PARTITION:OFFSET,...") from None


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without a zone is UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"time {text!r} is not ISO 8601 (e.g. 2024-03-01T06:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ReadRange:
    """Which records to read: by record time [from, to), by offsets [from, to), or all."""

    from_time: datetime | None = None
    to_time: datetime | None = None
    from_offsets: OffsetSpec | None = None
    to_offsets: OffsetSpec | None = None

    def __post_init__(self) -> None:
        by_time = self.from_time is not None or self.to_time is not None
        by_offset = self.from_offsets is not None or self.to_offsets is not None
        if by_time and by_offset:
            raise ValueError("give a time range or an offset range, not both")

    @property
    def by_offsets(self) -> bool:
        return self.from_offsets is not None or self.to_offsets is not None

    @property
    def named_partitions(self) -> set[int] | None:
        """Partitions an offset range names (`P:N`); None when it covers every partition."""
        named = [spec for spec in (self.from_offsets, self.to_offsets) if isinstance(spec, dict)]
        if not named:
            return None
        return {partition for spec in named for partition in spec}

    @property
    def time_window_ms(self) -> tuple[int | None, int | None]:
        def ms(value: datetime | None) -> int | None:
            return None if value is None else int(value.timestamp() * 1000)

        return ms(self.from_time), ms(self.to_time)

    def describe(self) -> dict[str, Any]:
        if self.by_offsets:
            return {"from_offsets": self.from_offsets, "to_offsets": self.to_offsets}
        if self.from_time or self.to_time:
            return {
                "from_time": self.from_time.isoformat() if self.from_time else None,
                "to_time": self.to_time.isoformat() if self.to_time else None,
            }
        return {"all": True}


def _offset_for(spec: OffsetSpec | None, partition: int, default: int) -> int:
    if spec is None:
        return default
    if isinstance(spec, int):
        return spec
    return spec.get(partition, default)


def read_topic(consumer: Any, topic: str, read_range: ReadRange, idle_timeout_s: float) -> Iterator:
    """The topic's records within `read_range`, per partition in offset order; then stops.

    The end of each partition is fixed when the read starts (the end offsets, or the offsets
    the range's upper bound maps to), so a busy topic still gives a bounded export.
    """
    from kafka import TopicPartition

    partition_ids = consumer.partitions_for_topic(topic)
    if not partition_ids:
        raise ExportError(f"topic {topic!r} does not exist")
    partitions = [TopicPartition(topic, p) for p in sorted(partition_ids)]
    first = consumer.beginning_offsets(partitions)
    end = consumer.end_offsets(partitions)
    from_ms, to_ms = read_range.time_window_ms
    if read_range.by_offsets:
        named = read_range.named_partitions
        if named is not None:
            unknown = named - set(partition_ids)
            if unknown:
                raise ExportError(f"topic {topic!r} has no partition(s) {sorted(unknown)}")
            partitions = [tp for tp in partitions if tp.partition in named]
        start = {
            tp: _offset_for(read_range.from_offsets, tp.partition, first[tp]) for tp in partitions
        }
        stop = {tp: _offset_for(read_range.to_offsets, tp.partition, end[tp]) for tp in partitions}
    else:
        start = dict(first) if from_ms is None else _offsets_at(consumer, partitions, from_ms, end)
        stop = dict(end) if to_ms is None else _offsets_at(consumer, partitions, to_ms, end)
    start = {tp: min(max(start[tp], first[tp]), end[tp]) for tp in partitions}
    stop = {tp: min(max(stop[tp], start[tp]), end[tp]) for tp in partitions}
    remaining = [tp for tp in partitions if start[tp] < stop[tp]]
    consumer.assign(partitions)
    for tp in partitions:
        consumer.seek(tp, start[tp])
    consumer.pause(*[tp for tp in partitions if tp not in remaining])
    last_progress = time.monotonic()
    while remaining:
        batches = consumer.poll(timeout_ms=500)
        for tp, records in sorted(batches.items(), key=lambda item: item[0].partition):
            for record in records:
                if record.offset >= stop[tp]:
                    continue
                # offsets_for_times is exact only for ordered timestamps: filter each record.
                if from_ms is not None and record.timestamp < from_ms:
                    continue
                if to_ms is not None and record.timestamp >= to_ms:
                    continue
                yield record
            if records:
                last_progress = time.monotonic()
        for tp in list(remaining):
            if consumer.position(tp) >= stop[tp]:
                remaining.remove(tp)
                consumer.pause(tp)
        if remaining and time.monotonic() - last_progress > idle_timeout_s:
            left = {f"{tp.partition}": f"{consumer.position(tp)}/{stop[tp]}" for tp in remaining}
            raise ExportError(
                f"{topic}: no records for {idle_timeout_s:g} s while some remain (at/end: {left})"
            )


def _offsets_at(consumer: Any, partitions: list, at_ms: int, end: dict) -> dict:
    """First offset whose timestamp is >= at_ms, per partition (the end if there is none)."""
    found = consumer.offsets_for_times({tp: at_ms for tp in partitions})
    return {tp: found[tp].offset if found.get(tp) is not None else end[tp] for tp in partitions}
