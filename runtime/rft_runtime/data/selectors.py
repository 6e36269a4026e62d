"""Trinity-RFT 0.6's data selectors: which taskset rows each explore step reads.

A taskset whose `data_selector.selector_type` is set reads through a SelectorStream instead of the
default TaskStream (a seeded order reshuffled every epoch, with the remainder of each epoch left out).
As in Trinity's task scheduler, a selector stream is one run of `total_epochs x rows // batch_size` steps
(or total_steps) over which batches may straddle epochs:

- sequential: file order, wrapping around;
- shuffle: a permutation per epoch from numpy's generator seeded with seed + epoch;
- random: each batch drawn without replacement, seeded with seed + rows read so far;
- offline_easy2hard: rows sorted by their feature_keys columns, highest (easiest) first;
- difficulty_based: the rows whose predicted pass rate is nearest kwargs.target_reward (greedy when
  tau is 0, else sampled from softmax(score / tau)); predictions come from rft_runtime.data.difficulty,
  fed each step by the pass_rate_calculator experience operator.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from rft_runtime.data.difficulty import PassRateEstimator
from rft_runtime.data.errors import DataError
from rft_runtime.data.tasksets import Task

log = logging.getLogger(__name__)

SELECTORS = ("sequential", "shuffle", "random", "offline_easy2hard", "difficulty_based")


def _features(rows: list[dict[str, Any]], keys: list[str], selector: str) -> np.ndarray:
    if not keys:
        raise DataError(f"data_selector.selector_type {selector} orders rows by data_selector.feature_keys; "
                        "name the columns")
    table = []
    for index, row in enumerate(rows):
        values = []
        for key in keys:
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"row {index} (0-based) has no number in {key!r} (data_selector.feature_keys): "
                                f"{value!r}", row_index=index, key=key)
            values.append(float(value))
        table.append(values)
    return np.asarray(table, dtype=float)


class Selector:
    """Picks the row indices of the next batch; `position` counts the rows read so far (what resumes)."""

    def __init__(self, rows: list[dict[str, Any]], cfg: Any):
        self.n = len(rows)
        self.seed = int(cfg.seed)
        self.position = 0

    def indices(self, batch_size: int) -> list[int]:
        """The next batch's rows."""
        raise NotImplementedError

    def feedback(self, indices: list[int], values: list[float]) -> None:
        """Observed pass rates of rows just explored (only difficulty_based learns from them)."""

    def _wrap(self, order: Any, batch_size: int) -> list[int]:
        start = self.position % self.n
        end = start + batch_size
        self.position += batch_size
        if end <= self.n:
            return [int(i) for i in order[start:end]]
        return [int(i) for i in order[start:]] + [int(i) for i in order[:end - self.n]]


class SequentialSelector(Selector):
    """File order."""

    def indices(self, batch_size: int) -> list[int]:
        """The next batch_size rows, wrapping at the end of the file."""
        return self._wrap(range(self.n), batch_size)


class ShuffleSelector(Selector):
    """A new permutation every epoch."""

    def _order(self, epoch: int) -> list[int]:
        return np.random.default_rng(self.seed + epoch).permutation(self.n).tolist()

    def indices(self, batch_size: int) -> list[int]:
        """The next rows of this epoch's permutation, then the next epoch's."""
        epoch, start = divmod(self.position, self.n)
        end = start + batch_size
        self.position += batch_size
        order = self._order(epoch)
        if end <= self.n:
            return order[start:end]
        return order[start:] + self._order(epoch + 1)[:end - self.n]


class RandomSelector(Selector):
    """Each batch drawn afresh (rows may repeat across batches, never within one)."""

    def indices(self, batch_size: int) -> list[int]:
        """batch_size distinct rows at random."""
        rng = np.random.default_rng(self.seed + self.position)
        self.position += batch_size
        return [int(i) for i in rng.choice(self.n, batch_size, replace=False)]


class OfflineEasy2HardSelector(Selector):
    """Rows sorted once by their feature columns, highest first (ties: the later row first)."""

    def __init__(self, rows: list[dict[str, Any]], cfg: Any):
        super().__init__(rows, cfg)
        features = _features(rows, list(cfg.feature_keys), "offline_easy2hard")
        keyed = sorted([*map(float, features[i]), i] for i in range(self.n))[::-1]
        self.order = [int(k[-1]) for k in keyed]

    def indices(self, batch_size: int) -> list[int]:
        """The next rows from easiest to hardest, starting over after the hardest."""
        return self._wrap(self.order, batch_size)


class DifficultyBasedSelector(Selector):
    """Rows whose predicted pass rate is nearest the target, the predictions learned as training goes."""

    def __init__(self, rows: list[dict[str, Any]], cfg: Any):
        super().__init__(rows, cfg)
        keys = list(cfg.feature_keys)
        if len(keys) != 2:
            raise DataError(f"data_selector.selector_type difficulty_based needs exactly two feature_keys (two "
                            f"reference pass rates per task); got {len(keys)}")
        kw = dict(cfg.kwargs or {})
        self.estimator = PassRateEstimator(_features(rows, keys, "difficulty_based"), m=kw.get("m", 16),
                                           lamb=kw.get("lamb", 0.2), rho=kw.get("rho", 0.2),
                                           adaptive_rho=kw.get("adaptive_rho", False))
        self.sample = bool(kw.get("do_sample", False))
        self.target = float(kw.get("target_reward", 1.0))
        self.tau = float(kw.get("tau", 1.0))

    def feedback(self, indices: list[int], values: list[float]) -> None:
        """Update every row's estimate with the pass rates just observed."""
        if indices:
            self.estimator.update(indices, values)

    def indices(self, batch_size: int) -> list[int]:
        """Greedy (tau 0) or softmax-sampled rows by closeness of the predicted pass rate to the target."""
        rng = np.random.default_rng(self.seed + self.position)
        scores = -np.abs(self.target - self.estimator.predict(rng, self.sample))
        self.position += batch_size
        if self.tau == 0:
            return [int(i) for i in np.argsort(-scores, kind="stable")[:batch_size]]
        logits = scores / self.tau
        probs = np.exp(logits - logits.max())
        return [int(i) for i in rng.choice(self.n, batch_size, replace=False, p=probs / probs.sum())]


_CLASSES: dict[str, type[Selector]] = {
    "sequential": SequentialSelector, "shuffle": ShuffleSelector, "random": RandomSelector,
    "offline_easy2hard": OfflineEasy2HardSelector, "difficulty_based": DifficultyBasedSelector,
}


def make_selector(rows: list[dict[str, Any]], cfg: Any) -> Selector:
    """The selector data_selector names (a DataError for an unknown name or unusable feature columns)."""
    name = cfg.selector_type
    if name not in _CLASSES:
        raise DataError(f"unknown data_selector.selector_type {name!r}; Trinity-RFT's: {', '.join(SELECTORS)}")
    return _CLASSES[name](rows, cfg)


class SelectorStream:
    """Batches of tasks chosen by a selector: TaskStream's interface plus feedback()."""

    def __init__(self, rows: list[dict[str, Any]], batch_size: int, selector_cfg: Any, total_epochs: int = 1,
                 total_steps: int | None = None):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if selector_cfg.selector_type == "random" and batch_size > len(rows):
            raise DataError(f"the random selector draws {batch_size} distinct rows per batch from {len(rows)}")
        self.rows = rows
        self.batch_size = int(batch_size)
        self.selector_cfg = selector_cfg
        self.selector = make_selector(rows, selector_cfg)
        self.total_steps = int(total_steps) if total_steps else int(total_epochs or 1) * len(rows) // batch_size
        self._step = 0

    def __len__(self) -> int:
        return self.total_steps

    @property
    def step(self) -> int:
        """Batches handed out so far."""
        return self._step

    def __iter__(self) -> SelectorStream:
        return self

    def __next__(self) -> list[Task]:
        if self._step >= self.total_steps:
            raise StopIteration
        epoch = self.selector.position // len(self.rows)
        picked = self.selector.indices(self.batch_size)
        self._step += 1
        return [Task(i, self.rows[i], epoch) for i in picked]

    def feedback(self, indices: list[int], values: list[float], taskset: int = 0) -> None:
        """Observed pass rates of rows of the last batches, for selectors that learn from them (one taskset:
        `taskset` is 0)."""
        self.selector.feedback(indices, values)

    def state_dict(self) -> dict[str, Any]:
        """The position; as in Trinity, a difficulty_based selector's estimates start over on resume."""
        return {"step": self._step, "position": self.selector.position, "selector": self.selector_cfg.selector_type,
                "num_rows": len(self.rows), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches `state` had handed out."""
        if state.get("selector") not in (None, self.selector_cfg.selector_type):
            log.warning("the taskset's selector changed since the checkpoint (%s -> %s): resuming at batch %d of "
                        "the new selection", state.get("selector"), self.selector_cfg.selector_type,
                        int(state.get("step", 0)) + 1)
        self._step = min(int(state.get("step", 0)), self.total_steps)
        self.selector.position = int(state.get("position", self._step * self.batch_size))


def chosen_selector(taskset: Any) -> Any:
    """The taskset's data_selector when the user set its selector_type (task_selector is Trinity's older
    name), else None: the runtime's default order."""
    for field in ("task_selector", "data_selector"):
        sel = getattr(taskset, field, None)
        if sel is not None and "selector_type" in sel.model_fields_set:
            return sel
    return None
