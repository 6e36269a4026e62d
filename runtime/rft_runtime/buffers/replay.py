"""Trinity-RFT's replay buffer (`experience_buffer.replay_buffer`): a priority pool of experience groups.

An item is one task's experiences from one explorer step (they share a model version and a use count).
The trainer takes the item of highest priority; with `reuse_cooldown_time` set, the item comes back
`reuse_cooldown_time` seconds later with its use count raised by one, so its priority has decayed. A full
pool (`capacity` items) drops its lowest-priority item for a new one of at least that priority, and turns
away one of lower priority. The two priority functions are Trinity 0.6's:

- linear_decay (decay 2.0): priority = model_version - decay x use_count; always put back.
- decay_limit_randomization (decay 2.0, use_count_limit 3, sigma 0.0): the same plus Gaussian noise of
  sd `sigma`; put back only while use_count < use_count_limit (0: no limit).

Records are plain dicts carrying "model_version" and "use_count".
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rft_runtime.buffers.errors import StorageError

Group = list[dict[str, Any]]


class LinearDecay:
    """priority = model_version - decay x use_count; the item is always put back for reuse."""

    defaults: dict[str, Any] = {"decay": 2.0}

    def __init__(self, decay: float = 2.0):
        self.decay = float(decay)

    def __call__(self, group: Group) -> tuple[float, bool]:
        head = group[0]
        return float(head.get("model_version", 0)) - self.decay * int(head.get("use_count", 0)), True


class DecayLimitRandomization(LinearDecay):
    """linear_decay plus Gaussian noise (sd sigma); put back only while use_count < use_count_limit."""

    defaults = {"decay": 2.0, "use_count_limit": 3, "sigma": 0.0}

    def __init__(self, decay: float = 2.0, use_count_limit: int = 3, sigma: float = 0.0, seed: int | None = None):
        super().__init__(decay)
        self.use_count_limit = int(use_count_limit)
        self.sigma = float(sigma)
        self._random = random.Random(seed)

    def __call__(self, group: Group) -> tuple[float, bool]:
        priority, _ = super().__call__(group)
        if self.sigma > 0:
            priority += self._random.gauss(0.0, self.sigma)
        uses = int(group[0].get("use_count", 0))
        return priority, uses < self.use_count_limit if self.use_count_limit > 0 else True


PRIORITY_FNS: dict[str, type[LinearDecay]] = {
    "linear_decay": LinearDecay,
    "decay_limit_randomization": DecayLimitRandomization,
}


def priority_fn(name: str, args: dict[str, Any] | None, path: str = "replay_buffer") -> LinearDecay:
    """The named priority function with Trinity's defaults under `args`; StorageError names what is wrong."""
    cls = PRIORITY_FNS.get(name)
    if cls is None:
        raise StorageError(f"{path}.priority_fn: unknown priority function {name!r}; Trinity 0.6 has "
                           f"{', '.join(PRIORITY_FNS)}")
    kwargs = {**cls.defaults, **(args or {})}
    unknown = sorted(set(kwargs) - set(cls.defaults))
    if unknown:
        raise StorageError(f"{path}.priority_fn_args: {name} takes {', '.join(cls.defaults)}, not "
                           f"{', '.join(unknown)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"{path}.priority_fn_args: {exc}") from exc


class ReplayPool:
    """Items by priority, taken highest first; taken items come back after the cooldown (not thread-safe:
    the caller holds its own lock)."""

    def __init__(self, capacity: int, priority: Callable[[Group], tuple[float, bool]],
                 reuse_cooldown_time: float | None, clock: Callable[[], float] = time.monotonic):
        if capacity < 1:
            raise StorageError(f"experience_buffer.capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.priority = priority
        self.cooldown = reuse_cooldown_time
        self.clock = clock
        self._groups: dict[float, deque[Group]] = {}
        self._count = 0
        self._size = 0  # experiences in the ready items
        self._cooling: list[tuple[float, Group]] = []  # (ready at, item) waiting out the cooldown
        self.dropped = 0  # items turned away or evicted by a full pool

    def __len__(self) -> int:
        """Items ready to be taken (not those cooling down)."""
        self._thaw()
        return self._count

    @property
    def experiences(self) -> int:
        """Experiences in the ready items."""
        self._thaw()
        return self._size

    def put(self, group: Group) -> bool:
        """Offer an item; False when the priority function or a full pool of higher priorities turned it away."""
        if not group:
            return False
        self._thaw()
        return self._insert(group)

    def _insert(self, group: Group) -> bool:
        priority, keep = self.priority(group)
        if not keep:
            return False
        if self._count >= self.capacity:
            lowest = min(self._groups)
            if lowest > priority:
                self.dropped += 1
                return False
            queue = self._groups[lowest]
            self._size -= len(queue.popleft())
            self._count -= 1
            self.dropped += 1
            if not queue:
                del self._groups[lowest]
        self._groups.setdefault(priority, deque()).append(group)
        self._count += 1
        self._size += len(group)
        return True

    def take(self) -> Group | None:
        """The highest-priority item (its use count raised; put back after the cooldown), or None."""
        self._thaw()
        if not self._count:
            return None
        top = max(self._groups)
        queue = self._groups[top]
        group = queue.popleft()
        self._count -= 1
        self._size -= len(group)
        if not queue:
            del self._groups[top]
        for record in group:
            record["use_count"] = int(record.get("use_count", 0)) + 1
        if self.cooldown is not None:
            # a copy goes back: the taken records belong to the train step now
            again = [dict(r) for r in group]
            self._cooling.append((self.clock() + max(0.0, float(self.cooldown)), again))
        return group

    def close(self) -> None:
        """No more reuse (the explorer is done): what cools down now is not put back."""
        self.cooldown = None
        self._cooling.clear()

    def next_ready_in(self) -> float | None:
        """Seconds until the next cooling item is back (None when none is cooling)."""
        if not self._cooling:
            return None
        return max(0.0, min(t for t, _ in self._cooling) - self.clock())

    def _thaw(self) -> None:
        if not self._cooling:
            return
        now = self.clock()
        ready = [g for t, g in self._cooling if t <= now]
        self._cooling = [(t, g) for t, g in self._cooling if t > now]
        for group in ready:
            self._insert(group)

    def items(self) -> list[Group]:
        """Every item held, ready or cooling (for a checkpoint)."""
        ready = [g for p in sorted(self._groups, reverse=True) for g in self._groups[p]]
        return ready + [g for _, g in self._cooling]
