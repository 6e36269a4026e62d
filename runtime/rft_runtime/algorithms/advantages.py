"""Outcome advantages: one scalar per rollout, from the rewards of the task's group (and, for
reinforce++, the whole batch). Every token of a rollout's response gets its rollout's advantage."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


class AlgorithmError(ValueError):
    """An algorithm or algorithm argument this runtime cannot use; the message names it."""


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _all_equal(xs: Sequence[float]) -> bool:
    # exactly 0 rather than rounding noise / epsilon: the trainer skips zero-advantage rollouts
    return max(xs) == min(xs)


def grpo_advantages(rewards: Sequence[float], epsilon: float = 1e-6, std_normalize: bool = True) -> list[float]:
    """GRPO: A_i = (r_i - mean(r)) / (std(r) + epsilon), std unbiased (n - 1), as Trinity-RFT.

    A group of one has no baseline, so its advantage is 0 (Trinity uses mean 0, std 1, i.e. A = r, which
    pushes up whatever a lone sample did). Equal rewards give 0 for everyone: nothing to prefer.
    std_normalize=False gives A_i = r_i - mean(r) (Dr. GRPO).
    """
    n = len(rewards)
    if n < 2 or _all_equal(rewards):
        return [0.0] * n
    mean = _mean(rewards)
    if not std_normalize:
        return [r - mean for r in rewards]
    std = math.sqrt(math.fsum((r - mean) ** 2 for r in rewards) / (n - 1))
    return [(r - mean) / (std + epsilon) for r in rewards]


def opmd_advantages(rewards: Sequence[float], opmd_baseline: str = "mean", tau: float = 1.0) -> list[float]:
    """OPMD (Trinity-RFT's): A_i = r_i - b, where b = mean(r) for opmd_baseline "mean", or
    b = tau * (logsumexp(r / tau) - log n) for "logavgexp" (a soft maximum: tau -> 0 gives max(r),
    tau -> inf gives mean(r)). A group of one has b = 0, so A = r, as in Trinity.

    Trinity's OPMD loss is -A * logprob / (1 + tau); this runtime trains it with Tinker's ppo loss on A,
    dropping the constant 1 / (1 + tau): Adam's update is invariant to a constant loss scale (only
    gradient-norm clipping sees it).
    """
    n = len(rewards)
    if n == 0:
        return []
    if n == 1:
        return [float(rewards[0])]
    if _all_equal(rewards):
        return [0.0] * n
    if opmd_baseline == "mean":
        baseline = _mean(rewards)
    elif opmd_baseline == "logavgexp":
        if tau <= 0:
            raise AlgorithmError(f"opmd tau must be > 0 for the logavgexp baseline, got {tau}")
        top = max(r / tau for r in rewards)
        lse = top + math.log(math.fsum(math.exp(r / tau - top) for r in rewards))
        baseline = tau * (lse - math.log(n))
    else:
        raise AlgorithmError(f"opmd_baseline must be 'mean' or 'logavgexp', got {opmd_baseline!r}")
    return [r - baseline for r in rewards]


def rloo_advantages(rewards: Sequence[float]) -> list[float]:
    """RLOO: A_i = r_i - mean of the other rewards = n / (n - 1) * (r_i - mean(r)). A group of one
    has no other rollouts to compare with: 0."""
    n = len(rewards)
    if n < 2 or _all_equal(rewards):
        return [0.0] * n
    total = math.fsum(rewards)
    return [r - (total - r) / (n - 1) for r in rewards]


def reinforceplusplus_advantages(rewards: Sequence[float], gamma: float = 1.0,
                                 group_baseline: bool = False) -> list[float]:
    """REINFORCE++ before its batch step: the return of each rollout, r_i (gamma 1 on an outcome reward
    gives every token the final reward), or r_i - mean(r) with group_baseline=True (verl's
    "reinforce_plus_plus_baseline"). normalise_batch then whitens over the batch.

    Trinity-RFT's reinforceplusplus uses no group baseline (the default here). gamma < 1 discounts by
    token position, which a per-rollout advantage cannot express, so only gamma = 1 is accepted.
    """
    if gamma != 1.0:
        raise AlgorithmError(f"reinforceplusplus gamma must be 1.0 with outcome rewards, got {gamma}")
    if group_baseline and rewards:
        if _all_equal(rewards):
            return [0.0] * len(rewards)
        mean = _mean(rewards)
        return [r - mean for r in rewards]
    return [float(r) for r in rewards]


def normalise_batch(values: Sequence[float], weights: Sequence[float] | None = None,
                    eps: float = 1e-8) -> list[float]:
    """Batch whitening for reinforce++: (x - mean) / sqrt(var + eps), var unbiased, as Trinity's
    masked_whiten. With weights (each rollout's response token count) the mean and variance are over
    tokens, exactly Trinity's; without them, over rollouts. Fewer than two values: 0 (no spread to use)."""
    n = len(values)
    if weights is None:
        weights = [1.0] * n
    if len(weights) != n:
        raise AlgorithmError(f"normalise_batch got {n} values and {len(weights)} weights")
    total = math.fsum(weights)
    if n < 2 or total <= 1 or _all_equal(values):
        return [0.0] * n
    mean = math.fsum(w * x for w, x in zip(weights, values, strict=True)) / total
    var = math.fsum(w * (x - mean) ** 2 for w, x in zip(weights, values, strict=True)) / (total - 1)
    scale = 1.0 / math.sqrt(var + eps)
    return [(x - mean) * scale for x in values]


_ADVANTAGE_FNS: dict[str, Callable[..., list[float]]] = {
    "grpo": grpo_advantages,
    "opmd": opmd_advantages,
    "rloo": rloo_advantages,
    "reinforceplusplus": reinforceplusplus_advantages,
}
ADVANTAGE_ALGORITHMS = tuple(_ADVANTAGE_FNS)
# advantage_fn_args each function accepts (Trinity-RFT's names)
_ARGS = {"grpo": ("epsilon", "std_normalize"), "opmd": ("opmd_baseline", "tau"), "rloo": (),
         "reinforceplusplus": ("gamma", "group_baseline")}


def check_advantage_args(algorithm_type: str, args: dict[str, Any] | None) -> str:
    """Raise an AlgorithmError for an algorithm without group advantages or an advantage_fn_args key it
    does not take (call at load time to fail before any rollout); returns the algorithm name."""
    if algorithm_type not in _ADVANTAGE_FNS:
        raise AlgorithmError(f"no group advantage for algorithm {algorithm_type!r}; this runtime computes "
                             f"them for {', '.join(ADVANTAGE_ALGORITHMS)}")
    unknown = sorted(set(args or {}) - set(_ARGS[algorithm_type]))
    if unknown:
        allowed = ", ".join(_ARGS[algorithm_type]) or "none"
        raise AlgorithmError(f"algorithm.advantage_fn_args: {', '.join(unknown)} not used by "
                             f"{algorithm_type} (accepted: {allowed})")
    return algorithm_type


def compute_advantages(algorithm_type: str, group_rewards: Sequence[float],
                       args: dict[str, Any] | None = None) -> list[float]:
    """Advantages of one task's group of rollouts under `algorithm_type` (advantage_fn_args in `args`).

    For reinforceplusplus, pass the whole batch's results through normalise_batch afterwards.
    """
    fn = _ADVANTAGE_FNS[check_advantage_args(algorithm_type, args)]
    args = dict(args or {})
    rewards = [float(r) for r in group_rewards]
    bad = [r for r in rewards if not math.isfinite(r)]
    if bad:
        raise AlgorithmError(f"rewards must be finite numbers, got {bad[0]!r}")
    return fn(rewards, **args)
