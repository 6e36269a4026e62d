"""The reconcile queue: which job to reconcile next, and when (asyncio, in kopf's event loop).

What a controller's work queue promises, as client-go's does: a job is never reconciled twice at once; a job
woken while it is being reconciled is reconciled once more right after; a job woken many times before its
turn is reconciled once; every job comes back at least every resync interval. Workers take keys only while
`resume()` is in force (leader election pauses a standby replica).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Hashable


class WorkQueue:
    """Keys due at a time; `get` hands out the earliest due key that is not being worked on."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}
        self._working: set[Hashable] = set()
        # keys woken while being worked on: when to run them again once the current pass ends
        self._again: dict[Hashable, float] = {}
        self._dropped: set[Hashable] = set()
        self._order = itertools.count()
        self._changed = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()

    def __len__(self) -> int:
        return len(self._due) + len(self._working)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        """Have `key` worked on within `delay` seconds (an earlier time already asked for stands)."""
        due = self._now() + max(delay, 0.0)
        self._dropped.discard(key)
        if key in self._working:
            self._again[key] = min(self._again.get(key, due), due)
            return
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._order), key))
        self._changed.set()

    def forget(self, key: Hashable) -> None:
        """Drop `key` (its object was deleted): not handed out again unless added again."""
        self._due.pop(key, None)
        self._again.pop(key, None)
        if key in self._working:
            self._dropped.add(key)

    def done(self, key: Hashable, next_in: float | None) -> None:
        """The pass over `key` ended; come back in `next_in` seconds (None: only when woken)."""
        self._working.discard(key)
        if key in self._dropped:
            self._dropped.discard(key)
            return
        again = self._again.pop(key, None)
        if again is not None:
            self.add(key, again - self._now())
        if next_in is not None:
            self.add(key, next_in)

    def pause(self) -> None:
        """Hand out nothing until `resume` (the keys keep their times)."""
        self._running.clear()

    def resume(self) -> None:
        """Hand out keys again."""
        self._running.set()
        self._changed.set()

    async def get(self) -> Hashable:
        """The next due key, once it is due; it is the caller's until `done`."""
        while True:
            await self._running.wait()
            while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                heapq.heappop(self._heap)  # superseded by an earlier time, or forgotten
            now = self._now()
            if self._heap and self._heap[0][0] <= now:
                _, _, key = heapq.heappop(self._heap)
                del self._due[key]
                self._working.add(key)
                return key
            self._changed.clear()
            timeout = self._heap[0][0] - now if self._heap else None
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass
