"""Trinity-RFT 0.6's experience operators, over one explore step's rollouts grouped by task.

An operator takes the step's groups (one list of rollouts per task, as the explorer made them) and returns
the groups that go on and a dict of metrics, as Trinity's `ExperienceOperator.process` does with its flat
list (its filters group by task id themselves). A rollout here is the loop's `Rollout`: `reward`, `metrics`
(what the workflow reported), `info`, `mask` (None: every response token trains), `tokens`, `task_index`
(the row of the taskset) and `failed` (its reward function raised).

Operators are built by name from `data_processor.experience_pipeline.operators` (OPERATORS); each checks
its arguments when built, so a typo fails before the first step instead of inside it.
"""

from __future__ import annotations

import inspect
import math
import statistics
from collections.abc import Callable
from typing import Any

from rft_runtime.data.errors import DataError
from rft_runtime.data.juicer import DataJuicerOperator, args_problem

Groups = list[list[Any]]
# the key under which pass_rate_calculator hands the selectors their feedback (Trinity's SELECTOR_METRIC)
SELECTOR_METRIC = "selector_metric"


def _mean_max_min(prefix: str, rows: list[dict[str, float]]) -> dict[str, float]:
    """{prefix}/{name}/mean, max and min over a list of metric dicts (Trinity's aggregate_metrics)."""
    out: dict[str, float] = {}
    for name in sorted({k for r in rows for k in r}):
        vals = [r[name] for r in rows if name in r]
        out.update({f"{prefix}/{name}/mean": statistics.fmean(vals), f"{prefix}/{name}/max": max(vals),
                    f"{prefix}/{name}/min": min(vals)})
    return out


class RewardFilter:
    """Keep the rollouts whose reward is at least `threshold`."""

    def __init__(self, threshold: float = 0.0):
        self.threshold = float(threshold)

    def process(self, groups: Groups) -> tuple[Groups, dict[str, float]]:
        """Drop each rollout under the threshold."""
        before = sum(len(g) for g in groups)
        kept = [[r for r in g if r.reward >= self.threshold] for g in groups]
        kept = [g for g in kept if g]
        return kept, {"filtered_count": float(before - sum(len(g) for g in kept))}


class RewardStdFilter:
    """Keep the task groups whose rewards spread more than `threshold` (population std); a group of one
    rollout has no spread and is dropped, as in Trinity."""

    def __init__(self, threshold: float = 0.0):
        self.threshold = float(threshold)

    def process(self, groups: Groups) -> tuple[Groups, dict[str, float]]:
        """Drop whole groups whose reward std is at or under the threshold."""
        before = sum(len(g) for g in groups)
        kept, stats = [], []
        for group in groups:
            if len(group) < 2:
                continue
            rewards = [r.reward for r in group]
            std = statistics.pstdev(rewards)
            stats.append({"reward_mean": statistics.fmean(rewards), "reward_std": std})
            if std > self.threshold:
                kept.append(group)
        metrics = {"operator_filtered_count": float(before - sum(len(g) for g in kept))}
        metrics.update(_mean_max_min("origin_group_advantages", stats))
        return kept, metrics


class DapoDynamicSampling:
    """DAPO's dynamic sampling: keep a task group only when some but not all of its rollouts are correct.

    Correct means the workflow's `metric_key` metric (else the reward) is above `correct_threshold`.
    """

    def __init__(self, metric_key: str = "accuracy", correct_threshold: float = 0.0):
        self.metric_key = metric_key
        self.correct_threshold = float(correct_threshold)

    def _correct(self, rollout: Any) -> bool:
        score = rollout.metrics.get(self.metric_key, rollout.reward)
        return float(score) > self.correct_threshold

    def process(self, groups: Groups) -> tuple[Groups, dict[str, float]]:
        """Drop the groups that are all correct or all wrong (and groups of one)."""
        before = sum(len(g) for g in groups)
        kept = []
        all_correct = all_wrong = 0
        for group in groups:
            if len(group) < 2:
                continue
            right = sum(1 for r in group if self._correct(r))
            if right == 0:
                all_wrong += len(group)
            elif right == len(group):
                all_correct += len(group)
            else:
                kept.append(group)
        return kept, {"filtered_count": float(before - sum(len(g) for g in kept)),
                      "dropped_all_correct": float(all_correct), "dropped_all_wrong": float(all_wrong)}


class MaskResponseTruncated:
    """DAPO's overlong filtering: a rollout whose workflow marked it truncate_status "response_truncated"
    keeps its place in the batch but none of its tokens carry loss."""

    def process(self, groups: Groups) -> tuple[Groups, dict[str, float]]:
        """Zero the loss mask of truncated responses."""
        masked = 0
        for group in groups:
            for r in group:
                if r.info.get("truncate_status") == "response_truncated":
                    r.mask = [0] * len(r.tokens)
                    masked += 1
        return groups, {"masked_truncated_count": float(masked)}


class InvalidRewardFilter:
    """Drop rollouts without a usable reward: NaN or infinite, or (this runtime keeps them as failed
    reward-0 rollouts) whose reward function raised."""

    def process(self, groups: Groups) -> tuple[Groups, dict[str, float]]:
        """Drop the rollouts whose reward is not a finite number."""
        before = sum(len(g) for g in groups)
        kept = [[r for r in g if not r.failed and math.isfinite(r.reward)] for g in groups]
        kept = [g for g in kept if g]
        return kept, {"filtered_count": float(before - sum(len(g) for g in kept))}


_SHAPING_OPS: dict[str, Callable[[float, float], float]] = {
    "ADD": lambda reward, x: reward + x,
    "SUB": lambda reward, x: reward - x,
    "MUL": lambda reward, x: reward * x,
    # a zero divisor leaves the reward as it is, as in Trinity
    "DIV": lambda reward, x: reward / x if x != 0 else reward,
}


class RewardShapingMapper:
    """Reshape each reward with stats the workflow (or a data_juicer operator) put in the rollout's info:
    for each {stats_key, op_type ADD|SUB|MUL|DIV, weight}, reward <op>= weight x info[stats_key]; a rollout
    without that stat is left as it is."""

    def __init__(self, reward_shaping_configs: list[dict[str, Any]] | None = None):
        self.configs = list(reward_shaping_configs or [])
        for i, conf in enumerate(self.configs):
            if not isinstance(conf, dict):
                raise DataError(f"reward_shaping_configs[{i}] must be a mapping of stats_key, op_type, weight")
            op = conf.get("op_type", "ADD")
            if op not in _SHAPING_OPS:
                raise DataError(f"reward_shaping_configs[{i}].op_type {op!r} is not one of "
                                f"{', '.join(_SHAPING_OPS)}")

    def process(self, groups: Groups) -> tuple[Groups, dict[str, float]]:
        """Apply every shaping rule in order to each rollout's reward."""
        diffs = []
        for group in groups:
            for r in group:
                before = r.reward
                for conf in self.configs:
                    key = conf.get("stats_key")
                    if key is None or key not in r.info:
                        continue
                    r.reward = _SHAPING_OPS[conf.get("op_type", "ADD")](
                        r.reward, float(conf.get("weight", 1.0)) * float(r.info[key]))
                diffs.append(r.reward - before)
        if not diffs:
            return groups, {"reward_diff/mean": 0.0, "reward_diff/min": 0.0, "reward_diff/max": 0.0}
        return groups, {"reward_diff/mean": statistics.fmean(diffs), "reward_diff/min": min(diffs),
                        "reward_diff/max": max(diffs)}


class PassRateCalculator:
    """Each task's mean reward (its pass rate) as feedback for the taskset's selector (difficulty_based
    learns from it), plus the shares of tasks in Trinity's pass-rate bands."""

    def __init__(self, **_: Any):
        pass

    def process(self, groups: Groups) -> tuple[Groups, dict[str, Any]]:
        """Pass the rollouts on unchanged; report per-task pass rates."""
        rewards: dict[tuple[int, int], list[float]] = {}
        for group in groups:
            for r in group:
                rewards.setdefault((int(getattr(r, "taskset", 0)), int(r.task_index)), []).append(r.reward)
        rates = [statistics.fmean(v) for v in rewards.values()]
        # Trinity's SELECTOR_METRIC: per taskset id, its rows' indices and pass rates
        feedback: dict[int, dict[str, list[Any]]] = {}
        for (taskset, index), rate in zip(rewards, rates, strict=True):
            part = feedback.setdefault(taskset, {"indices": [], "values": []})
            part["indices"].append(index)
            part["values"].append(rate)
        metrics: dict[str, Any] = {SELECTOR_METRIC: feedback}
        if rates:
            low, high = 1 / 16 + 1e-3, 15 / 16 - 1e-3

            def share(test: Callable[[float], bool]) -> float:
                return statistics.fmean(1.0 if test(p) else 0.0 for p in rates)

            metrics.update({
                "selection/valid_ratio": share(lambda p: 0 < p < 1),
                "selection/strict_valid_ratio": share(lambda p: low < p < high),
                "selection/<1_ratio": share(lambda p: p < 1),
                "selection/>0_ratio": share(lambda p: p > 0),
                "selection/<15_16_ratio": share(lambda p: p < high),
                "selection/>1_16_ratio": share(lambda p: p > low),
            })
        return groups, metrics


def _data_juicer(**args: Any) -> Any:
    return DataJuicerOperator(**args)


# Trinity 0.6.0's registered experience operators, by name
OPERATORS: dict[str, Callable[..., Any]] = {
    "reward_filter": RewardFilter,
    "reward_std_filter": RewardStdFilter,
    "dapo_dynamic_sampling": DapoDynamicSampling,
    "mask_response_truncated": MaskResponseTruncated,
    "invalid_reward_filter": InvalidRewardFilter,
    "reward_shaping_mapper": RewardShapingMapper,
    "pass_rate_calculator": PassRateCalculator,
    "data_juicer": _data_juicer,
}


def operator_problem(name: str, args: dict[str, Any]) -> str | None:
    """Why the operator `name` cannot be built with `args` (None when it can), without building it."""
    if name not in OPERATORS:
        return f"unknown experience operator {name!r}; Trinity-RFT's: {', '.join(OPERATORS)}"
    if name == "data_juicer":
        return args_problem(args)
    try:
        inspect.signature(OPERATORS[name]).bind(**args)
    except TypeError as exc:
        return f"{name} does not take these args: {exc}"
    return None


def build_operator(name: str, args: dict[str, Any], **runtime: Any) -> Any:
    """The operator `name` built with the user's `args` (a DataError naming what is wrong otherwise) plus
    what the runtime hands it (data_juicer's work_dir)."""
    problem = operator_problem(name, args)
    if problem is not None:
        raise DataError(problem)
    return OPERATORS[name](**args, **runtime)
