"""How many torch threads the compute thread uses, chosen by timing the work itself.

On idle cores two threads decode and train about twice as fast as one. On cores other processes keep busy,
every parallel op waits at a barrier for a thread the scheduler has set aside, and one thread is several
times faster (measured on the shared 2-core machine: 8 x 64 tokens took 27 s on two threads, 7.6 s on one,
at load 6; a decoding step 1.7 s against 0.13 s at load 4). No static setting fits both, and the load changes while an engine runs, so the tuner runs the
work on its current choice and, now and then, one unit on the other candidate: a candidate clearly faster
per unit becomes the choice. A probe that loses waits twice as long before the next (up to MAX_GAP units).

The units are decoding steps (one forward of every running row) and chunks of a forward_backward; each kind
keeps its own choice, since large training matmuls gain more from a second thread than decoding steps do.
RFT_ENGINE_THREADS fixes the count and turns the tuner off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger("rft.engine")
T = TypeVar("T")

# the first probe comes early: on a busy machine a unit on the wrong count can cost seconds (a SmolLM2 decoding
# step took 1.7 s on two threads at load 4, 0.13 s on one)
FIRST_GAP = 3
MAX_GAP = 256
# a probe must beat the current choice by this factor: thread counts that tie stay as they are
MARGIN = 0.85


class _Kind:
    """The state of one kind of work: its choice, its recent time per unit, and when to probe next."""

    def __init__(self, choice: int):
        self.choice = choice
        self.per_unit: dict[int, float] = {}
        self.gap = FIRST_GAP
        self.until_probe = FIRST_GAP


class ThreadTuner:
    """Runs units of work on the thread count that has been fastest lately (see the module docstring)."""

    def __init__(self, most: int, fixed: bool = True):
        self.kinds: dict[str, _Kind] = {}
        self.configure(most, fixed)

    def configure(self, most: int, fixed: bool) -> None:
        """Up to `most` threads; fixed: always `most`, no tuning (in-process use, RFT_ENGINE_THREADS)."""
        self.most = max(1, most)
        self.fixed = fixed or self.most == 1
        self.kinds.clear()
        torch.set_num_threads(self.most)

    def run(self, kind: str, fn: Callable[[], T], units: float = 1.0) -> T:
        """fn() on this kind's thread count, or (a probe) on the other; units: its size, to compare times."""
        if self.fixed:
            return fn()
        state = self.kinds.setdefault(kind, _Kind(self.most))
        state.until_probe -= 1
        probe = state.until_probe <= 0
        threads = (1 if state.choice != 1 else self.most) if probe else state.choice
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        out = fn()
        per_unit = (time.perf_counter() - started) / max(units, 1e-9)
        if not probe:
            old = state.per_unit.get(threads)
            state.per_unit[threads] = per_unit if old is None else 0.7 * old + 0.3 * per_unit
            return out
        current = state.per_unit.get(state.choice)
        if current is not None and per_unit < MARGIN * current:
            log.info("%s: %d torch threads now (%.1f ms a unit against %.1f ms on %d)", kind, threads,
                     1000 * per_unit, 1000 * current, state.choice)
            state.choice, state.gap = threads, FIRST_GAP
            state.per_unit[threads] = per_unit
        else:
            state.gap = min(2 * state.gap, MAX_GAP)
        state.until_probe = state.gap
        return out
