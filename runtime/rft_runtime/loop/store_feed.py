"""Mode train on rollouts: the experiences another job (mode explore) writes, train_batch_size per step.

The other job may still be exploring: a step waits for enough experiences, polling the buffer every
second (Trinity's readers do the same), and gives up after experience_buffer.max_read_timeout seconds
without a new one. The stage ends when every writer has finished and less than a batch is left.

Replay: a sql buffer reuses rows itself (the least read first); a queue or file buffer goes through the
replay pool here, as Trinity's queue does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rft_runtime.buffers import Batcher, open_store
from rft_runtime.config import JobConfig
from rft_runtime.loop.batching import check_schedule, load_leftover, make_batcher, replay_on
from rft_runtime.loop.errors import RunError

log = logging.getLogger(__name__)

POLL_S = 1.0


class StoreFeed:
    """The experience buffer as a source of train batches (the mode-train stage's `stream`)."""

    def __init__(self, cfg: JobConfig, n: int):
        self.cfg = cfg
        self.n = n
        eb = cfg.buffer.trainer_input.experience_buffer
        self.store = open_store(eb, cfg.job_dir)
        self.timeout = float(eb.max_read_timeout)
        sql_replay = eb.storage_type == "sql"
        self.reuse = replay_on(cfg) and sql_replay
        self.batcher: Batcher | None = make_batcher(cfg) if replay_on(cfg) and not sql_replay else None
        self.total_steps = cfg.trainer.total_steps or cfg.buffer.total_steps or eb.total_steps
        check_schedule(cfg, self.total_steps)
        self.last_wait_s = 0.0
        self.stop_event = threading.Event()
        self._done_logged = False

    def _fill(self) -> None:
        # pull every experience written since into the replay pool, one group per task of an explore step
        assert self.batcher is not None
        waiting = self.store.count(unread=True)
        records = self.store.take(waiting, reuse=False) if waiting else None
        groups: dict[str, list[dict[str, Any]]] = {}
        for record in records or []:
            groups.setdefault(f"{record.get('task_id')}@{record.get('model_version')}", []).append(record)
        for group in groups.values():
            self.batcher.add(group)

    def _try(self) -> list[dict[str, Any]] | None:
        if self.batcher is None:
            return self.store.take(self.n, reuse=self.reuse and not self.store.writers_done())
        self._fill()
        return self.batcher.take(self.n)

    def take(self, step: int, waiting: Callable[[int], None] | None = None) -> list[dict[str, Any]] | None:
        """n experiences for train step `step`; None when the writers are done and fewer are left.
        `waiting(seen)` is told, each time it looks in vain, how many experiences the buffer holds."""
        start = time.monotonic()
        deadline = start + self.timeout
        seen = -1
        while True:
            total = self.store.count()
            got = self._try()
            if got is not None:
                self.last_wait_s = time.monotonic() - start
                return got
            if self.store.writers_done():
                if self.batcher is not None:
                    self.batcher.close()
                got = self._try()  # what was written just before the last writer finished
                self.last_wait_s = time.monotonic() - start
                return got
            have = self.store.count(unread=True) + (self.batcher.available if self.batcher is not None else 0)
            if have != seen:  # new experiences: the read timeout starts again
                seen, deadline = have, time.monotonic() + self.timeout
                log.info("train step %d waits for %d experiences in %s (%d there)", step, self.n,
                         self.store.describe(), have)
            if waiting is not None:
                waiting(total)
            if time.monotonic() > deadline:
                raise RunError(
                    f"no new experience reached {self.store.describe()} for buffer.trainer_input.experience_buffer"
                    f".max_read_timeout ({self.timeout:.0f}s) while train step {step} waited for {self.n} (it has "
                    f"{have}); is the mode-explore job that writes them running?")
            if self.stop_event.wait(POLL_S):
                return None

    def state_dict(self) -> dict[str, Any]:
        """The store's read position (a checkpoint adds what the replay pool holds)."""
        return {"store": self.store.state_dict()}

    def held(self) -> list[list[dict[str, Any]]] | None:
        """Groups read but not trained (replay pool), for the checkpoint."""
        return self.batcher.held() if self.batcher is not None else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a checkpoint's read position, with the replay pool it kept."""
        self.store.load_state_dict(state.get("store") or {})
        rel = state.get("rft_leftover")
        if rel and self.batcher is not None:
            for group in load_leftover(self.cfg.job_dir, rel):
                self.batcher.add(group)

    def close(self) -> None:
        """Release the store."""
        self.store.close()
