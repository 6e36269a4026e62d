"""The synchronizer: which sampler weights the explorer may use for which step.

Weight version v means "the weights after v train steps of this stage". Rollouts for explore step k need
version >= required_version(k): with sync_offset 0 that is k - 1 (strictly on-policy), with offset 1 it is
k - 2, so sampling step k overlaps training step k - 1. With sync_interval n, sampler weights only exist
for multiples of n, so the requirement rounds down to one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rft_runtime.loop.errors import RunError


def required_version(explore_step: int, sync_offset: int, sync_interval: int, start_version: int = 0) -> int:
    """Oldest weight version the explorer may sample 1-based `explore_step` with."""
    behind = explore_step - 1 - sync_offset
    if behind <= start_version:
        return start_version
    return max(start_version, (behind // sync_interval) * sync_interval)


class WeightBoard:
    """Where the trainer publishes sampler weights and the explorer waits for them."""

    def __init__(self, version: int, path: str | None):
        self._cond = threading.Condition()
        self.version = version
        self.path = path
        self.closed = False

    def publish(self, version: int, path: str) -> None:
        """Announce sampler weights for `version`."""
        with self._cond:
            self.version, self.path = version, path
            self._cond.notify_all()

    def close(self) -> None:
        """Wake a waiting explorer so it can stop."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, version: int, timeout: float, step: int,
                 trainer_activity: Callable[[], str] | None = None) -> tuple[int, str | None]:
        """Block until weights of at least `version` exist; a wait past `timeout` means the trainer stalled."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.version < version and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    doing = f"; the trainer was {trainer_activity()}" if trainer_activity else ""
                    raise RunError(
                        f"the trainer stalled: the explorer waited more than synchronizer.sync_timeout "
                        f"({timeout:.0f}s) for the weights of train step {version} to sample step {step} "
                        f"(latest weights: step {self.version}){doing}"
                    )
                self._cond.wait(min(left, 1.0))
            return self.version, self.path
