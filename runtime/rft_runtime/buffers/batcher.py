"""Cutting groups of experiences into train batches of exactly n, first in first out or by replay priority.

What Trinity's queue does between the explorer and the trainer: groups (one task's experiences of one
explorer step) go in; the trainer takes n experiences at a time, splitting a group where n ends (the rest
waits for the next batch). With the replay buffer the next group is the one of highest priority, and taken
groups come back after their cooldown.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from rft_runtime.buffers.replay import Group, ReplayPool


class Batcher:
    """Groups in, batches of n out (not thread-safe: the caller holds its own lock)."""

    def __init__(self, pool: ReplayPool | None = None):
        self.pool = pool
        self._fifo: deque[Group] = deque()
        self._fifo_size = 0
        self._partial: deque[dict[str, Any]] = deque()  # the rest of a group a batch ended inside

    @property
    def available(self) -> int:
        """Experiences that could be handed out now."""
        held = self.pool.experiences if self.pool is not None else self._fifo_size
        return held + len(self._partial)

    @property
    def groups(self) -> int:
        """Groups held (a split group's rest counts as one; cooling groups are not counted)."""
        held = len(self.pool) if self.pool is not None else len(self._fifo)
        return held + (1 if self._partial else 0)

    def add(self, group: Group) -> bool:
        """Offer a group; False when the replay pool turned it away."""
        if not group:
            return False
        if self.pool is not None:
            return self.pool.put(group)
        self._fifo.append(group)
        self._fifo_size += len(group)
        return True

    def _next_group(self) -> Group | None:
        if self.pool is not None:
            return self.pool.take()
        if not self._fifo:
            return None
        group = self._fifo.popleft()
        self._fifo_size -= len(group)
        return group

    def take(self, n: int) -> list[dict[str, Any]] | None:
        """Exactly n experiences, or None (nothing taken) when fewer are available."""
        if self.available < n:
            return None
        out: list[dict[str, Any]] = []
        while len(out) < n:
            if not self._partial:
                group = self._next_group()
                if group is None:  # a cooldown ended between the count and now: cannot happen, but be safe
                    self._partial.extendleft(reversed(out))
                    return None
                self._partial.extend(group)
            out.append(self._partial.popleft())
        return out

    def close(self) -> None:
        """The explorer is done: taken groups are no longer put back."""
        if self.pool is not None:
            self.pool.close()

    def next_ready_in(self) -> float | None:
        """Seconds until a cooling group is back (None when none is cooling)."""
        return self.pool.next_ready_in() if self.pool is not None else None

    def held(self) -> list[Group]:
        """Everything not handed out, partial group first (for a checkpoint)."""
        rest = [list(self._partial)] if self._partial else []
        return rest + (self.pool.items() if self.pool is not None else list(self._fifo))
