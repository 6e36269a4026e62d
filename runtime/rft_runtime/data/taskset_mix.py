"""Several tasksets trained on together (buffer.explorer_input.tasksets), as Trinity-RFT 0.6's TasksetScheduler
mixes them.

Every epoch of the mix is a list holding each taskset's id once per row (a taskset of 30 rows and one of 10:
30 zeros and 10 ones), shuffled with numpy's generator seeded with the epoch number alone. Step s takes
positions s x batch_size .. (s + 1) x batch_size - 1 of the epochs' lists laid end to end, so a batch may
straddle two epochs. It holds as many tasks of each taskset as its id appears there; each taskset's own
selector picks which rows (its data_selector, or, when none is set, this runtime's default: a permutation
per pass seeded with explorer.rollout_model.seed). The tasks come grouped by taskset, in the order their ids
first appear in the step's slice. The mix runs buffer.total_steps steps, else total_epochs x (all rows) //
batch_size. A checkpoint keeps the step and each selector's position, so a resumed job takes the same
batches; a taskset's difficulty estimates (difficulty_based) start over, as in Trinity.
"""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace
from typing import Any

import numpy as np

from rft_runtime.data.errors import DataError
from rft_runtime.data.selectors import Selector, make_selector
from rft_runtime.data.tasksets import Task

log = logging.getLogger(__name__)


def default_selector(seed: int) -> Any:
    """This runtime's order for a taskset that sets no selector: a new permutation each pass, seeded."""
    return SimpleNamespace(selector_type="shuffle", seed=int(seed), feature_keys=[], kwargs={})


class TasksetMix:
    """The batches of several tasksets mixed as Trinity's TasksetScheduler mixes them (a TaskStream's
    interface: iteration, step, total_steps, state_dict / load_state_dict, feedback)."""

    def __init__(self, parts: list[tuple[list[dict[str, Any]], Any]], batch_size: int, total_epochs: int = 1,
                 total_steps: int | None = None, seed: int = 0, names: list[str] | None = None):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.names = names or [f"tasksets[{i}]" for i in range(len(parts))]
        self.parts = [rows for rows, _ in parts]
        self.selector_cfgs = [sel if sel is not None else default_selector(seed) for _, sel in parts]
        for name, rows, sel in zip(self.names, self.parts, self.selector_cfgs, strict=True):
            if not rows:
                raise DataError(f"{name} has no rows")
            if sel.selector_type == "random" and len(rows) < batch_size:
                raise DataError(f"{name}: the random selector draws up to {batch_size} distinct rows a step from "
                                f"its {len(rows)}")
        self.selectors: list[Selector] = [make_selector(rows, sel)
                                          for rows, sel in zip(self.parts, self.selector_cfgs, strict=True)]
        self.base = [i for i, rows in enumerate(self.parts) for _ in rows]
        self.batch_size = int(batch_size)
        self.total_steps = int(total_steps) if total_steps else int(total_epochs or 1) * len(self.base) // batch_size
        self._step = 0
        self._orders: dict[int, list[int]] = {}

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every taskset's rows, one after the other (the checks made before the first step read them)."""
        return [row for rows in self.parts for row in rows]

    def __len__(self) -> int:
        return self.total_steps

    @property
    def step(self) -> int:
        """Batches handed out so far."""
        return self._step

    def order(self, epoch: int) -> list[int]:
        """The taskset ids of epoch `epoch`, in the order its positions take them (Trinity's build_orders)."""
        if epoch not in self._orders:
            ids = list(self.base)
            np.random.default_rng(epoch).shuffle(ids)
            # a step straddles at most two epochs: older orders are not needed again
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = ids
        return self._orders[epoch]

    def counts(self, step: int) -> Counter[int]:
        """How many tasks of each taskset step `step` (0-based) holds, in the order their ids first appear."""
        n = len(self.base)
        start = step * self.batch_size
        return Counter(self.order(pos // n)[pos % n] for pos in range(start, start + self.batch_size))

    def __iter__(self) -> TasksetMix:
        return self

    def __next__(self) -> list[Task]:
        if self._step >= self.total_steps:
            raise StopIteration
        batch = []
        for which, count in self.counts(self._step).items():
            selector, rows = self.selectors[which], self.parts[which]
            epoch = selector.position // len(rows)
            batch += [Task(int(i), rows[int(i)], epoch, which) for i in selector.indices(count)]
        self._step += 1
        return batch

    def feedback(self, indices: list[int], values: list[float], taskset: int = 0) -> None:
        """Observed pass rates of a taskset's rows, for its selector (difficulty_based learns from them)."""
        self.selectors[taskset].feedback(indices, values)

    def state_dict(self) -> dict[str, Any]:
        """The step and each taskset's selector position."""
        return {"step": self._step, "batch_size": self.batch_size,
                "tasksets": [{"position": sel.position, "selector": cfg.selector_type, "num_rows": len(rows)}
                             for sel, cfg, rows in zip(self.selectors, self.selector_cfgs, self.parts, strict=True)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches `state` had handed out."""
        saved = state.get("tasksets")
        if not isinstance(saved, list) or len(saved) != len(self.selectors):
            log.warning("the checkpoint's taskset position is not one of these %d tasksets: they start from their "
                        "first rows, at step %d", len(self.selectors), int(state.get("step", 0)) + 1)
            saved = [{} for _ in self.selectors]
        changed = [self.names[i] for i, (s, rows) in enumerate(zip(saved, self.parts, strict=True))
                   if s.get("num_rows") not in (None, len(rows))]
        if changed or state.get("batch_size") not in (None, self.batch_size):
            log.warning("the tasksets changed since the checkpoint (%s): resuming at step %d of the new mix, so some "
                        "tasks may repeat or be skipped", ", ".join(changed) or "batch_size",
                        int(state.get("step", 0)) + 1)
        self._step = min(int(state.get("step", 0)), self.total_steps)
        for sel, s in zip(self.selectors, saved, strict=True):
            sel.position = int(s.get("position", 0))
