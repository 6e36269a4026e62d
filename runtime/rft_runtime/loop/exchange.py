"""Where the explorer thread and the trainer meet in one process (mode both): weights one way, experiences
the other, under one lock so that each side can see what the other is waiting for.

Weights (synchronizer.sync_style, as Trinity 0.6 runs them on Tinker, where weights move as saved sampler
weights and never over NCCL):
- fixed, trainer_driven: the trainer publishes every trainer_sync_interval steps; before explore step k the
  explorer waits for the weights `required_version(k)` names (sync_offset steps of lag allowed). Trinity runs
  trainer_driven exactly as fixed unless the weights go over NCCL, which Tinker has not.
- explorer_driven: the explorer asks for weights every explorer_sync_interval steps and waits for the
  answer; the trainer answers between two steps (or at once while it waits for experiences) with the
  weights of every step it has trained, or "nothing new". It publishes only when asked.
- fully_async: the explorer never waits; each explore step takes the newest weights published.
A trainer that is itself waiting for experiences cannot make new weights: an explorer waiting for them
goes on with what it has instead of waiting out sync_timeout (Trinity would wait, then stop).

Experiences: one explore batch per train step (Trinity's "the trainer consumes what the explorer made in
the latest step"), or, when buffer.train_batch_size is set or the replay buffer is on, exactly
train_batch_size experiences per step from a Batcher (first in first out, or by replay priority).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rft_runtime.buffers import Batcher
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.explorer import ExploredBatch, Rollout
from rft_runtime.loop.sync import required_version

# take() returns this when the explorer asked for weights (explorer_driven): the trainer answers, then
# calls take() again
SYNC_REQUESTED = object()


@dataclass
class Explored:
    """What the explorer hands over for one explore step: the batch as sampled, and the rollouts that carry
    an advantage (the ones a train step may use)."""

    batch: ExploredBatch
    rollouts: list[Rollout]


@dataclass
class TrainBatch:
    """The experiences of one train step and what its metrics line reports about them."""

    rollouts: list[Rollout]
    explored: ExploredBatch  # counters of the explore steps this batch stands for; groups = what is trained
    versions: list[int]
    explore_step: int
    stream_state: dict[str, Any] | None
    # the groups still held when this batch was cut (train_batch_size / replay): a checkpoint keeps them
    held: list[list[dict[str, Any]]] = field(default_factory=list)
    uses: list[int] | None = None  # replay: times each experience has been taken, this time included


def _merge(batches: list[ExploredBatch], rollouts: list[Rollout], versions: list[int]) -> ExploredBatch:
    last = batches[-1] if batches else None
    out = ExploredBatch(explore_step=last.explore_step if last else 0, groups=[rollouts],
                        weight_version=min(versions) if versions else 0,
                        stream_state=last.stream_state if last else {})
    for b in batches:
        out.time_sampling_s += b.time_sampling_s
        out.time_sync_s += b.time_sync_s
        out.prompt_tokens += b.prompt_tokens
        out.truncated_prompts += b.truncated_prompts
        out.failed_rollouts += b.failed_rollouts
        out.sampled_prompts += b.sampled_prompts
        out.longest_truncated = max(out.longest_truncated, b.longest_truncated)
        out.metrics.update(b.metrics)  # the experience pipeline's: the newest explore step's, per key
    return out


class Exchange:
    """The explorer's and the trainer's meeting point (all methods thread-safe)."""

    def __init__(self, cfg: Any, *, start_version: int, start_path: str | None, batcher: Batcher | None,
                 batch_experiences: int, capacity: int):
        sync = cfg.synchronizer
        self.style = sync.sync_style
        self.offset = sync.sync_offset
        self.explorer_interval = sync.explorer_sync_interval or sync.sync_interval
        self.trainer_interval = sync.trainer_sync_interval or sync.sync_interval
        self.timeout = float(sync.sync_timeout)
        self.start_version = start_version
        self.batcher = batcher  # None: one explore batch per train step
        self.n = batch_experiences
        self.capacity = capacity  # groups held before the explorer waits (first in first out only)
        self._cond = threading.Condition()
        self.version, self.path = start_version, start_path
        self.closed = False  # the trainer is done: the explorer stops
        self._requested = False
        self._entries: deque[Explored] = deque()  # one explore batch per step
        self._since: list[ExploredBatch] = []  # explore batches not yet reported by a train step
        self._stream_state: dict[str, Any] | None = None
        self._explorer_done = False
        self._error: BaseException | None = None
        self._trainer_waiting = False
        self._groups = 0

    # ------------------------------------------------------------ weights, explorer side

    def _trainer_starved(self) -> bool:
        return self._trainer_waiting and not self._can_take()

    def weights_for(self, step: int, first_step: int,
                    activity: Callable[[], str] | None = None) -> tuple[int, str | None]:
        """The weights to sample explore step `step` with (waiting as sync_style says); `first_step` is the
        first explore step of this run (a resumed run starts with the weights it resumed from)."""
        with self._cond:
            if self.style == "fully_async":
                return self.version, self.path
            prev = step - 1
            sync_point = prev >= first_step and prev > self.offset and (prev - self.offset) % self.explorer_interval == 0
            if self.style == "explorer_driven":
                if sync_point:
                    self._requested = True
                    self._cond.notify_all()
                    self._wait(lambda: not self._requested or self.closed, step,
                               "an answer to its request for new weights", activity)
                return self.version, self.path
            if self.batcher is None:
                # one explore batch per train step: explore step k may lag sync_offset steps behind
                need = required_version(step, self.offset, self.explorer_interval, self.start_version)
                what = f"the weights of train step {need}"
            elif sync_point:
                # train steps and explore steps do not pair up: at each sync point, newer weights than these
                need = self.version + 1
                what = f"newer weights than those of train step {self.version}"
            else:
                return self.version, self.path
            self._wait(lambda: self.version >= need or self.closed or self._trainer_starved(), step, what,
                       activity)
            return self.version, self.path

    def latest(self) -> tuple[int, str | None]:
        """The newest weights published."""
        with self._cond:
            return self.version, self.path

    def _wait(self, done: Callable[[], bool], step: int, what: str, activity: Callable[[], str] | None) -> None:
        deadline = time.monotonic() + self.timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                doing = f"; the trainer was {activity()}" if activity else ""
                raise RunError(
                    f"the trainer stalled: the explorer waited more than synchronizer.sync_timeout "
                    f"({self.timeout:.0f}s) for {what} to sample step {step} (latest weights: step "
                    f"{self.version}){doing}")
            self._cond.wait(min(left, 5.0))

    # ------------------------------------------------------------ weights, trainer side

    def publishes_at(self, step: int) -> bool:
        """Whether the trainer saves sampler weights after `step` on its own (not asked)."""
        return self.style != "explorer_driven" and step % self.trainer_interval == 0

    @property
    def requested(self) -> bool:
        """The explorer waits for an answer (explorer_driven)."""
        with self._cond:
            return self._requested

    def publish(self, version: int, path: str) -> None:
        """New sampler weights (answers a request, if one is pending)."""
        with self._cond:
            self.version, self.path = version, path
            self._requested = False
            self._cond.notify_all()

    def nothing_new(self) -> None:
        """Answer a request: no step was trained since the last weights."""
        with self._cond:
            self._requested = False
            self._cond.notify_all()

    # ------------------------------------------------------------ experiences, explorer side

    def put(self, explored: Explored) -> None:
        """Hand over an explore step's experiences (waits while the buffer holds `capacity` groups)."""
        with self._cond:
            while not self.closed and self._groups >= self.capacity and self._can_take():
                self._cond.wait(5.0)
            if self.closed:
                return
            batch = explored.batch
            self._stream_state = batch.stream_state
            if self.batcher is None:
                self._entries.append(explored)
                self._groups += len(batch.groups)
            else:
                self._since.append(batch)
                groups: dict[int, list[dict[str, Any]]] = {}
                for r in explored.rollouts:
                    groups.setdefault(r.task_index, []).append(
                        {"rollout": r, "model_version": max(batch.weight_version, 0), "use_count": 0,
                         "explore_step": batch.explore_step})
                for group in groups.values():
                    self.batcher.add(group)
                self._groups = self.batcher.groups
            self._cond.notify_all()

    def finish(self) -> None:
        """The explorer has explored its last step."""
        with self._cond:
            self._explorer_done = True
            if self.batcher is not None:
                self.batcher.close()
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """The explorer stopped on an error; the trainer raises it."""
        with self._cond:
            self._error = exc
            self._cond.notify_all()

    def close(self) -> None:
        """The trainer is done; wake the explorer so it can stop."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------ experiences, trainer side

    def _can_take(self) -> bool:
        if self.batcher is None:
            return bool(self._entries)
        return self.batcher.available >= self.n

    def take(self, step: int, explorer_activity: Callable[[], str]) -> Any:
        """The next train batch; None when the explorer is done and no full batch is left; SYNC_REQUESTED
        when the explorer asks for weights first. Raises the explorer's error, or RunError past
        sync_timeout."""
        deadline = time.monotonic() + self.timeout
        with self._cond:
            self._trainer_waiting = True
            self._cond.notify_all()
            try:
                while True:
                    if self._error is not None:
                        raise self._error
                    if self._requested:
                        return SYNC_REQUESTED
                    if self._can_take():
                        return self._cut()
                    if self._explorer_done:
                        return None
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RunError(
                            f"the explorer stalled: the trainer waited more than synchronizer.sync_timeout "
                            f"({self.timeout:.0f}s) for the experiences of step {step}; the explorer was "
                            f"{explorer_activity()}")
                    ready_in = self.batcher.next_ready_in() if self.batcher is not None else None
                    self._cond.wait(min(left, 5.0, ready_in if ready_in is not None else 5.0))
            finally:
                self._trainer_waiting = False

    def _cut(self) -> TrainBatch:
        if self.batcher is None:
            entry = self._entries.popleft()
            self._groups -= len(entry.batch.groups)
            self._cond.notify_all()
            b = entry.batch
            return TrainBatch(entry.rollouts, b, [b.weight_version] * len(entry.rollouts), b.explore_step,
                              b.stream_state)
        items = self.batcher.take(self.n) or []
        rollouts = [item["rollout"] for item in items]
        versions = [int(item["model_version"]) for item in items]
        since, self._since = self._since, []
        explored = _merge(since, rollouts, versions)
        held = [[dict(item) for item in group] for group in self.batcher.held()]
        self._groups = self.batcher.groups
        self._cond.notify_all()
        newest = max((int(item["explore_step"]) for item in items), default=0)
        uses = [int(item["use_count"]) for item in items] if self.batcher.pool is not None else None
        return TrainBatch(rollouts, explored, versions, newest, self._stream_state, held, uses)
