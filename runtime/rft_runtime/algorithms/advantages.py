"""Advantages: one scalar per experience, from the rewards of its task's group (and, for some, the batch).

Every function here takes the whole batch as plain `Sample`s (task, run, step, reward, token count,
info) and returns one advantage per sample, or None for a sample the function drops (grpo's
std_threshold). Every token of an experience's response that carries loss gets its experience's
advantage. Single-turn workflows give one sample per run (step 0); multi-turn ones one per turn.
The maths follows Trinity-RFT 0.6's advantage_fn/ (names, arguments and defaults are Trinity's).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rft_runtime.algorithms.errors import AlgorithmError
from rft_runtime.config.paths import JOB


@dataclass
class Sample:
    """One experience as an advantage function sees it."""

    task: Hashable
    run: Hashable
    reward: float
    step: int = 0
    n_tokens: int = 1
    mean_logprob: float = 0.0
    info: Mapping[str, Any] = field(default_factory=dict)
    # the sampler's logprob of every response token (per-token advantages: on_policy_distill, jsd)
    logprobs: Sequence[float] = ()


# one advantage per sample: a float for every token, a list with one per response token, or None (dropped)
Advantages = list[float | list[float] | None]


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def _std(xs: Sequence[float], unbiased: bool = True) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mean = _mean(xs)
    return math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1 if unbiased else n))


def _all_equal(xs: Sequence[float]) -> bool:
    # exactly 0 rather than rounding noise: the trainer skips zero-advantage rollouts
    return max(xs) == min(xs)


def _by(samples: Sequence[Sample], key: Callable[[Sample], Hashable]) -> dict[Hashable, list[int]]:
    out: dict[Hashable, list[int]] = {}
    for i, s in enumerate(samples):
        out.setdefault(key(s), []).append(i)
    return out


def _tasks(samples: Sequence[Sample]) -> dict[Hashable, list[int]]:
    return _by(samples, lambda s: s.task)


# ---------------------------------------------------------------- group functions on rewards


def _grpo_group(rewards: list[float], epsilon: float, std: float | None = None) -> list[float]:
    """(r - mean) / (std + epsilon); a group of one has mean 0 and std 1, as Trinity."""
    if len(rewards) == 1:
        return [rewards[0] / (1.0 + epsilon)]
    if _all_equal(rewards):
        return [0.0] * len(rewards)
    mean = _mean(rewards)
    std = _std(rewards) if std is None else std
    return [(r - mean) / (std + epsilon) for r in rewards]


def grpo(samples: Sequence[Sample], epsilon: float = 1e-6, std_threshold: float | None = None,
         duplicate_experiences: bool = False, rank_penalty: float | None = None,
         std_cal_level: str = "group") -> Advantages:
    """GRPO: A_i = (r_i - mean(r)) / (std(r) + epsilon) per task group, std unbiased.

    A group of one: A = r / (1 + epsilon). std_threshold drops a group whose std is <= it (and every
    group of one); std_cal_level "batch" divides by the batch's std; rank_penalty scales reward i by
    1 - rank_i / n * rank_penalty, rank_i the rank of its mean sampler logprob in the group.
    """
    if std_cal_level not in ("group", "batch"):
        raise AlgorithmError(f"grpo std_cal_level must be 'group' or 'batch', got {std_cal_level!r}")
    if duplicate_experiences:
        raise AlgorithmError("grpo duplicate_experiences is not supported on Tinker: the step trains on the "
                             "groups that remain after std_threshold; set it to false")
    out: Advantages = [None] * len(samples)
    batch_std = None
    if std_cal_level == "batch":
        batch_std = _std([s.reward for s in samples]) if len(samples) > 1 else 1.0
    for idx in _tasks(samples).values():
        rewards = [samples[i].reward for i in idx]
        if len(idx) > 1 and rank_penalty is not None:
            order = sorted(range(len(idx)), key=lambda j: samples[idx[j]].mean_logprob)
            rank = {j: pos / len(idx) for pos, j in enumerate(order)}
            rewards = [r * (1 - rank[j] * rank_penalty) for j, r in enumerate(rewards)]
        if std_threshold is not None and (len(idx) == 1 or _std(rewards) <= std_threshold):
            continue
        if len(idx) == 1:
            advs = _grpo_group(rewards, epsilon)
        elif _all_equal(rewards):
            advs = [0.0] * len(idx)
        else:
            mean = _mean(rewards)
            std = batch_std if batch_std is not None else _std(rewards)
            advs = [(r - mean) / (std + epsilon) for r in rewards]
        for i, a in zip(idx, advs, strict=True):
            out[i] = a
    return out


def opmd(samples: Sequence[Sample], opmd_baseline: str = "mean", tau: float = 1.0) -> Advantages:
    """OPMD: A_i = r_i - b, b = mean(r) ("mean") or tau * (logsumexp(r / tau) - log n) ("logavgexp",
    a soft maximum); a group of one has b = 0."""
    if opmd_baseline not in ("mean", "logavgexp"):
        raise AlgorithmError(f"opmd_baseline must be 'mean' or 'logavgexp', got {opmd_baseline!r}")
    if opmd_baseline == "logavgexp" and tau <= 0:
        raise AlgorithmError(f"opmd tau must be > 0 for the logavgexp baseline, got {tau}")
    out: Advantages = [None] * len(samples)
    for idx in _tasks(samples).values():
        rewards = [samples[i].reward for i in idx]
        n = len(rewards)
        if n == 1:
            baseline = 0.0
        elif _all_equal(rewards):
            baseline = rewards[0]
        elif opmd_baseline == "mean":
            baseline = _mean(rewards)
        else:
            top = max(r / tau for r in rewards)
            lse = top + math.log(math.fsum(math.exp(r / tau - top) for r in rewards))
            baseline = tau * (lse - math.log(n))
        for i, r in zip(idx, rewards, strict=True):
            out[i] = r - baseline
    return out


def rloo(samples: Sequence[Sample]) -> Advantages:
    """RLOO: A_i = r_i - mean of the group's other rewards; a group of one gets 0 (no other rollout)."""
    out: Advantages = [None] * len(samples)
    for idx in _tasks(samples).values():
        rewards = [samples[i].reward for i in idx]
        n = len(rewards)
        total = math.fsum(rewards)
        for i, r in zip(idx, rewards, strict=True):
            out[i] = 0.0 if n < 2 or _all_equal(rewards) else r - (total - r) / (n - 1)
    return out


def reinforce(samples: Sequence[Sample]) -> Advantages:
    """REINFORCE: A_i = r_i (no baseline; topr's default)."""
    return [float(s.reward) for s in samples]


def reinforceplusplus(samples: Sequence[Sample], gamma: float = 1.0) -> Advantages:
    """REINFORCE++: the return r_i whitened over the batch's response tokens (Trinity's masked_whiten).

    gamma < 1 discounts by token position, which a per-experience advantage cannot express, so only
    gamma = 1 is accepted.
    """
    if gamma != 1.0:
        raise AlgorithmError(f"reinforceplusplus gamma must be 1.0 with outcome rewards, got {gamma}")
    return list(normalise_batch([s.reward for s in samples], [float(s.n_tokens) for s in samples]))


def asymre(samples: Sequence[Sample], baseline_shift: float = -0.1) -> Advantages:
    """AsymRE: A_i = r_i - (mean(r) + baseline_shift); a group of one has baseline 0."""
    out: Advantages = [None] * len(samples)
    for idx in _tasks(samples).values():
        rewards = [samples[i].reward for i in idx]
        baseline = 0.0 if len(idx) == 1 else _mean(rewards) + baseline_shift
        for i, r in zip(idx, rewards, strict=True):
            out[i] = r - baseline
    return out


def rec(samples: Sequence[Sample], epsilon: float = 1e-6, std_normalize: bool = False,
        drop: str | None = None, seed: int = 0) -> Advantages:
    """REC: A_i = r_i - mean(r) (or / (std + epsilon), population std, with std_normalize).

    drop "balance" gives zero advantage to randomly chosen below-mean rollouts until there are no more of
    them than above-or-at-mean ones; the mean and std are then over the kept ones.
    """
    if drop not in (None, "balance"):
        raise AlgorithmError(f"rec drop must be null or 'balance', got {drop!r}")
    rng = random.Random(seed)
    out: Advantages = [None] * len(samples)
    for idx in _tasks(samples).values():
        rewards = [samples[i].reward for i in idx]
        n = len(rewards)
        keep = [True] * n
        if n > 1 and drop == "balance":
            mean = _mean(rewards)
            neg = [j for j, r in enumerate(rewards) if r < mean]
            extra = len(neg) - (n - len(neg))
            for j in rng.sample(neg, extra) if extra > 0 else []:
                keep[j] = False
        kept = [r for r, k in zip(rewards, keep, strict=True) if k]
        if len(kept) <= 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = _mean(kept), _std(kept, unbiased=False)
        for j, i in enumerate(idx):
            if not keep[j]:
                out[i] = 0.0
            elif std_normalize:
                out[i] = (rewards[j] - mean) / (std + epsilon)
            else:
                out[i] = rewards[j] - mean
    return out


def step_wise_grpo(samples: Sequence[Sample], epsilon: float = 1e-6, enable_step_norm: bool = False,
                   std_cal_level: str = "group", std_threshold: float | None = None) -> Advantages:
    """Step-wise GRPO (multi_step_grpo): GRPO over each run's last-step reward within its task, broadcast to
    every step of the run (divided by the run's step count with enable_step_norm)."""
    if std_cal_level not in ("group", "batch"):
        raise AlgorithmError(f"step_wise_grpo std_cal_level must be 'group' or 'batch', got {std_cal_level!r}")
    out: Advantages = [None] * len(samples)
    tasks = _tasks(samples)
    runs_of = {t: _by([samples[i] for i in idx], lambda s: s.run) for t, idx in tasks.items()}

    def last_reward(task: Hashable, members: list[int]) -> float:
        local = tasks[task]
        return max((samples[local[j]] for j in members), key=lambda s: s.step).reward

    batch_std = None
    if std_cal_level == "batch":
        lasts = [last_reward(t, m) for t, runs in runs_of.items() for m in runs.values()]
        batch_std = _std(lasts) if len(lasts) > 1 else 1.0
    for task, runs in runs_of.items():
        lasts = [last_reward(task, m) for m in runs.values()]
        std = _std(lasts) if len(lasts) > 1 else 1.0
        if std_threshold is not None and (len(lasts) == 1 or std <= std_threshold):
            continue
        if len(lasts) == 1:
            scores = [lasts[0] / (1.0 + epsilon)]
        else:
            mean = _mean(lasts)
            denom = batch_std if batch_std is not None else std
            scores = [0.0 if _all_equal(lasts) else (r - mean) / (denom + epsilon) for r in lasts]
        for members, score in zip(runs.values(), scores, strict=True):
            for j in members:
                out[tasks[task][j]] = score / len(members) if enable_step_norm else score
    return out


def gigpo(samples: Sequence[Sample], omega: float = 1.0, gamma: float = 1.0, fnorm: str = "none",
          epsilon: float = 1e-6, step_reward_key: str = "step_reward",
          env_state_hash_key: str = "env_state_hash") -> Advantages:
    """GiGPO: A = A_E + omega * A_S. A_E normalises each run's total reward within its task; A_S normalises
    the discounted return R_t of the steps that share an anchor state (info[env_state_hash_key]) across the
    batch (0 for an anchor seen once). Step rewards come from info[step_reward_key], else the run's last
    step carries its reward. fnorm "std" divides by the std, "none" by 1 (plus epsilon either way)."""
    if fnorm not in ("std", "none"):
        raise AlgorithmError(f"gigpo fnorm must be 'std' or 'none', got {fnorm!r}")

    def normalise(values: list[float]) -> list[float]:
        if len(values) == 1:
            return [values[0] / (1.0 + epsilon)]
        mean = _mean(values)
        denom = _std(values) if fnorm == "std" else 1.0
        return [(v - mean) / (denom + epsilon) for v in values]

    a_e = [0.0] * len(samples)
    ret = [0.0] * len(samples)
    for idx in _tasks(samples).values():
        runs = _by([samples[i] for i in idx], lambda s: s.run)
        totals = []
        for members in runs.values():
            steps = sorted((idx[j] for j in members), key=lambda i: samples[i].step)
            has_step = any(step_reward_key in samples[i].info for i in steps)
            rewards = [float(samples[i].info.get(step_reward_key, 0.0)) if has_step
                       else (samples[i].reward if k == len(steps) - 1 else 0.0) for k, i in enumerate(steps)]
            running = 0.0
            for k in range(len(steps) - 1, -1, -1):
                running = rewards[k] + gamma * running
                ret[steps[k]] = running
            totals.append((steps, math.fsum(rewards)))
        for (steps, _), score in zip(totals, normalise([t for _, t in totals]), strict=True):
            for i in steps:
                a_e[i] = score
    a_s = [0.0] * len(samples)
    anchors = _by(samples, lambda s: s.info.get(env_state_hash_key))
    for key, members in anchors.items():
        if key is None or len(members) < 2:
            continue
        for i, score in zip(members, normalise([ret[i] for i in members]), strict=True):
            a_s[i] = score
    return [e + omega * s for e, s in zip(a_e, a_s, strict=True)]


def _teacher(s: Sample, name: str) -> list[float]:
    teacher = s.info.get("teacher_logprobs")
    if teacher is None or len(teacher) != len(s.logprobs):
        got = "none" if teacher is None else f"{len(teacher)} for {len(s.logprobs)} response tokens"
        raise AlgorithmError(f"{name} needs the teacher's logprob of every response token "
                             f"(info['teacher_logprobs']), got {got}")
    return [float(x) for x in teacher]


def on_policy_distill(samples: Sequence[Sample], kl_coef: float = 1.0) -> Advantages:
    """On-policy distillation: per token, A_t = kl_coef * (teacher_t - old_t), the teacher's logprob minus
    the sampler's (a reverse-KL reward)."""
    return [[kl_coef * (t - o) for t, o in zip(_teacher(s, "on_policy_distill"), s.logprobs, strict=True)]
            for s in samples]


def jsd(samples: Sequence[Sample], lambda_coef: float = 0.5, kl_coef: float = 1.0, temperature: float = 1.0,
        chunk_size: int | None = None) -> Advantages:
    """JSD distillation: per token, A_t = -kl_coef * JSD_t from the sampled token's logprobs, s (student) and
    t (teacher), divided by temperature: lambda 0 gives s - t, 1 gives t - s, otherwise
    lambda (t - m) + (1 - lambda) (s - m), m = log(lambda e^t + (1 - lambda) e^s). chunk_size is a memory
    knob of Trinity's tensor version and changes nothing here."""
    if not 0 <= lambda_coef <= 1:
        raise AlgorithmError(f"jsd lambda_coef must be in [0, 1], got {lambda_coef}")
    if temperature <= 0:
        raise AlgorithmError(f"jsd temperature must be > 0, got {temperature}")
    out: Advantages = []
    for smp in samples:
        row = []
        for t, s in zip(_teacher(smp, "jsd"), smp.logprobs, strict=True):
            s, t = s / temperature, t / temperature
            if lambda_coef == 0:
                div = s - t
            elif lambda_coef == 1:
                div = t - s
            else:
                a, b = s + math.log1p(-lambda_coef), t + math.log(lambda_coef)
                top = max(a, b)
                m = top + math.log(math.exp(a - top) + math.exp(b - top))
                div = lambda_coef * (t - m) + (1 - lambda_coef) * (s - m)
            row.append(-kl_coef * div)
        out.append(row)
    return out


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


# Trinity's advantage_fn names -> (function, its arguments with Trinity's defaults)
ADVANTAGE_FNS: dict[str, tuple[Callable[..., Advantages], dict[str, Any]]] = {
    "grpo": (grpo, {"epsilon": 1e-6, "std_threshold": None, "duplicate_experiences": False,
                    "rank_penalty": None, "std_cal_level": "group"}),
    "opmd": (opmd, {"opmd_baseline": "mean", "tau": 1.0}),
    "rloo": (rloo, {}),
    "reinforce": (reinforce, {}),
    "reinforceplusplus": (reinforceplusplus, {"gamma": 1.0}),
    "asymre": (asymre, {"baseline_shift": -0.1}),
    "rec": (rec, {"epsilon": 1e-6, "std_normalize": False, "drop": None}),
    "step_wise_grpo": (step_wise_grpo, {"epsilon": 1e-6, "enable_step_norm": False, "std_cal_level": "group",
                                        "std_threshold": None}),
    "gigpo": (gigpo, {"omega": 1.0, "gamma": 1.0, "fnorm": "none", "epsilon": 1e-6,
                      "step_reward_key": "step_reward", "env_state_hash_key": "env_state_hash"}),
    "on_policy_distill": (on_policy_distill, {"kl_coef": 1.0}),
    "jsd": (jsd, {"lambda_coef": 0.5, "kl_coef": 1.0, "temperature": 1.0, "chunk_size": None}),
}
# advantage functions that give one advantage per token, from a teacher model's logprobs
TOKEN_ADVANTAGE_FNS = ("on_policy_distill", "jsd")
ADVANTAGE_ALGORITHMS = tuple(ADVANTAGE_FNS)


def register_advantage(name: str, fn: Callable[..., Advantages], defaults: dict[str, Any]) -> None:
    """Make `name` an advantage_fn the config accepts: fn(samples, **args) with Trinity-style defaults."""
    ADVANTAGE_FNS[name] = (fn, dict(defaults))

# Trinity advantage functions that cannot run here, and why (with what to use instead)
ADVANTAGE_REFUSALS = {
    "ppo": "GAE needs a critic's value estimates, and Tinker trains only the policy's LoRA adapter; use grpo",
    "grpo_verl": "it is veRL's own batch-tensor GRPO; use grpo (the same maths per task group)",
    "opmd_verl": "it is veRL's own batch-tensor OPMD; use opmd",
    "asymre_verl": "it is veRL's own batch-tensor AsymRE; use asymre",
    "remax": "its baseline is the reward of a greedy rollout per prompt, which this runtime does not sample; "
             "use rloo or grpo",
    "clipb": "it needs per-token entropies of the whole vocabulary, which Tinker does not return; use grpo",
    "clipv": "it needs a critic's values, which Tinker cannot train; use grpo",
}


def check_advantage_args(name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The advantage function's arguments with Trinity's defaults filled in; an AlgorithmError names an
    unknown function or argument (call at load time, before any rollout)."""
    if name not in ADVANTAGE_FNS:
        why = ADVANTAGE_REFUSALS.get(name)
        if why:
            raise AlgorithmError(f"{name!r} cannot run on Tinker: {why}", JOB.algorithm.advantage_fn)
        raise AlgorithmError(f"unknown advantage_fn {name!r}; this runtime computes {', '.join(ADVANTAGE_FNS)}",
                             JOB.algorithm.advantage_fn)
    defaults = ADVANTAGE_FNS[name][1]
    unknown = sorted(set(args or {}) - set(defaults))
    if unknown:
        raise AlgorithmError(f"{', '.join(unknown)} not used by {name} (accepted: {', '.join(defaults) or 'none'})",
                             JOB.algorithm.advantage_fn_args)
    merged = dict(defaults)
    merged.update({k: v for k, v in (args or {}).items()})
    # validate the values now: run the function on a trivial batch
    probe = {"teacher_logprobs": [-1.0]}
    try:
        ADVANTAGE_FNS[name][0]([Sample("t", 0, 0.0, info=probe, logprobs=[-1.0]),
                                Sample("t", 1, 1.0, info=probe, logprobs=[-2.0])], **merged)
    except AlgorithmError as exc:
        raise exc.at(JOB.algorithm.advantage_fn_args) from None
    return merged


def batch_advantages(name: str, samples: Sequence[Sample], args: Mapping[str, Any] | None = None) -> Advantages:
    """One advantage per sample (None: dropped) from advantage function `name` with Trinity's arguments."""
    merged = check_advantage_args(name, args)
    bad = [s.reward for s in samples if not math.isfinite(s.reward)]
    if bad:
        raise AlgorithmError(f"rewards must be finite numbers, got {bad[0]!r}")
    if not samples:
        return []
    return ADVANTAGE_FNS[name][0](list(samples), **merged)


def compute_advantages(name: str, group_rewards: Sequence[float],
                       args: Mapping[str, Any] | None = None) -> Advantages:
    """Advantages of one task's group of single-turn rollouts (a batch of one group)."""
    samples = [Sample("task", i, float(r)) for i, r in enumerate(group_rewards)]
    return batch_advantages(name, samples, args)
