"""Counts over a sliding time window: how many events of each key in the last N hours, each
thing counted once.

Events may arrive out of time order (the page reads several partitions at once), so they sit
in a heap ordered by time and the oldest fall out first, whatever order they came in. A worker
that restarts after a crash may publish an image's record again under the same id; the ids
seen recently are remembered so the repeat is not counted twice.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from collections.abc import Hashable


class WindowCounts:
    """Events per key whose time lies within the last `window_s` seconds of `now`."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: list[tuple[float, int, Hashable]] = []
        self._counts: Counter[Hashable] = Counter()
        self._sequence = 0  # ties in time never compare keys of different types

    def add(self, key: Hashable, at: float, now: float) -> bool:
        """Count `key` at time `at` (Unix seconds); False when it is already outside."""
        if at < now - self.window_s:
            return False
        self._sequence += 1
        heapq.heappush(self._events, (at, self._sequence, key))
        self._counts[key] += 1
        return True

    def counts(self, now: float) -> dict[Hashable, int]:
        """The counts within the window ending at `now` (older events are forgotten)."""
        horizon = now - self.window_s
        while self._events and self._events[0][0] < horizon:
            _, _, key = heapq.heappop(self._events)
            self._counts[key] -= 1
            if not self._counts[key]:
                del self._counts[key]
        return dict(self._counts)

    def total(self, now: float) -> int:
        return sum(self.counts(now).values())


class RecentlySeen:
    """The last `limit` ids seen: a repeat published soon after the first is recognised."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: OrderedDict[Hashable, None] = OrderedDict()

    def first_time(self, key: Hashable) -> bool:
        """True the first time `key` comes (within the last `limit` ids), False for a repeat."""
        if key in self._ids:
            self._ids.move_to_end(key)
            return False
        self._ids[key] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        return True
