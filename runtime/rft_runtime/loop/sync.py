"""The synchronizer: which sampler weights the explorer may use for which step.

Weight version v means "the weights after v train steps of this stage". In mode both, with one explore
batch per train step, rollouts for explore step k need version >= required_version(k): with sync_offset 0
that is k - 1 (strictly on-policy), with offset 1 it is k - 2, so sampling step k overlaps training step
k - 1. With sync_interval n, sampler weights only exist for multiples of n, so the requirement rounds down
to one. (The Exchange applies it in one process; PublishedWeights below serves a mode-explore job.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rft_runtime.loop import published
from rft_runtime.loop.errors import RunError

POLL_S = 1.0  # how often another process's files are read again (Trinity's synchronizer reads them as often)


def required_version(explore_step: int, sync_offset: int, sync_interval: int, start_version: int = 0) -> int:
    """Oldest weight version the explorer may sample 1-based `explore_step` with."""
    behind = explore_step - 1 - sync_offset
    if behind <= start_version:
        return start_version
    return max(start_version, (behind // sync_interval) * sync_interval)


class PublishedWeights:
    """The weights a trainer in another process publishes in the job directory, for a mode-explore job.

    At each sync point (every explorer_sync_interval explore steps after sync_offset) the explorer takes the
    newest weights; with sync_style fixed or trainer_driven it first waits for weights newer than its own
    while that trainer is training or has not yet looked at the experiences written since (not while it
    waits for more than there are, or has stopped), as Trinity's explorer waits on its synchronizer. fully_async takes the newest weights every step, explorer_driven at
    its sync points, neither waiting.
    """

    def __init__(self, cfg: Any, job_dir: Path, stop_event: threading.Event | None = None,
                 buffer_count: Callable[[], int] | None = None):
        sync = cfg.synchronizer
        self.style = sync.sync_style
        self.offset = sync.sync_offset
        self.interval = sync.explorer_sync_interval or sync.sync_interval
        self.timeout = float(sync.sync_timeout)
        self.job_dir = job_dir
        self.stop_event = stop_event or threading.Event()
        self.buffer_count = buffer_count  # experiences in the buffer the trainer reads
        self.version, self.path = published.latest(job_dir)

    def latest(self) -> tuple[int, str | None]:
        """The newest weights published (kept as this explorer's from now on)."""
        version, path = published.latest(self.job_dir)
        if version > self.version and path:
            self.version, self.path = version, path
        return self.version, self.path

    def weights_for(self, step: int, first_step: int,
                    activity: Callable[[], str] | None = None) -> tuple[int, str | None]:
        """The weights to sample explore step `step` with."""
        prev = step - 1
        sync_point = prev >= first_step and prev > self.offset and (prev - self.offset) % self.interval == 0
        if self.style == "fully_async" or (sync_point and self.style == "explorer_driven"):
            return self.latest()
        if not sync_point:
            return self.version, self.path
        current = self.version
        deadline = time.monotonic() + self.timeout
        written = self.buffer_count() if self.buffer_count is not None else None
        while self.latest()[0] <= current:
            state = published.status(self.job_dir)
            if state.get("status") not in (published.TRAINING, published.WAITING):
                break  # no trainer, or it has stopped: no new weights will come
            if state.get("status") == published.WAITING and (written is None or (state.get("seen") or 0) >= written):
                break  # it has seen everything written and still waits for more: it cannot make new weights
            if time.monotonic() > deadline:
                raise RunError(
                    f"the trainer stalled: the explorer waited more than synchronizer.sync_timeout "
                    f"({self.timeout:.0f}s) for weights newer than those of step {current} to sample step {step}; "
                    f"the train job in {self.job_dir} says it is {state.get('status')} at step {state.get('step')}")
            if self.stop_event.wait(POLL_S):
                break
        return self.version, self.path
