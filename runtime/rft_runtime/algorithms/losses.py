"""Which Tinker built-in loss trains each algorithm, and when a custom (KL) loss is needed instead.

Tinker's `ppo` loss is the clipped surrogate per token,
    loss = -min(ratio * A, clip(ratio, clip_low_threshold, clip_high_threshold) * A),
    ratio = exp(logprob_new - logprob_sampled),
computed server-side in the forward-backward pass: one pass per step where Trinity's client-side loss
costs two. `cross_entropy` is -logprob of the target tokens (SFT).
"""

from __future__ import annotations

from typing import Any

from rft_runtime.algorithms.advantages import AlgorithmError

# Algorithms whose policy loss is PPO-clip on outcome advantages (opmd's own loss differs from it by a
# constant scale on-policy; see advantages.opmd_advantages).
PPO_LOSS_ALGORITHMS = ("grpo", "rloo", "reinforceplusplus", "opmd")
DEFAULT_CLIP_RANGE = 0.2


def _algorithm(cfg: Any) -> Any:
    # a JobConfig, or its `algorithm` section
    return getattr(cfg, "algorithm", cfg)


def kl_coef(cfg: Any) -> float:
    """The KL coefficient from algorithm.kl_loss_fn_args.kl_coef (0 when unset)."""
    args = getattr(_algorithm(cfg), "kl_loss_fn_args", None) or {}
    return float(args.get("kl_coef", 0.0) or 0.0)


def needs_custom_kl_loss(cfg: Any) -> bool:
    """True when the loss needs a KL term (kl_coef > 0) and so reference logprobs and a custom loss;
    Tinker's built-in losses have no KL term. SFT never takes one."""
    return _algorithm(cfg).algorithm_type != "sft" and kl_coef(cfg) > 0


def clip_range(cfg: Any) -> tuple[float, float]:
    """(low, high) clip epsilons from policy_loss_fn_args: clip_range_low / clip_range_high, each falling
    back to clip_range (0.2 by default), as Trinity-RFT's ppo policy loss."""
    args = getattr(_algorithm(cfg), "policy_loss_fn_args", None) or {}
    base = args.get("clip_range")
    base = DEFAULT_CLIP_RANGE if base is None else float(base)
    low = args.get("clip_range_low")
    high = args.get("clip_range_high")
    low = base if low is None else float(low)
    high = base if high is None else float(high)
    if not 0 <= low < 1:
        raise AlgorithmError(f"algorithm.policy_loss_fn_args.clip_range_low must be in [0, 1), got {low}")
    if high < 0:
        raise AlgorithmError(f"algorithm.policy_loss_fn_args.clip_range_high must be >= 0, got {high}")
    return low, high


def loss_spec(cfg: Any) -> tuple[str, dict[str, float] | None]:
    """(Tinker loss name, loss_fn_config) for the config's algorithm.

    grpo / rloo / reinforceplusplus / opmd -> ("ppo", {"clip_low_threshold": 1 - eps_low,
    "clip_high_threshold": 1 + eps_high}); sft -> ("cross_entropy", None). Trinity's dual clip
    (clip_ratio_c) has no counterpart in Tinker's ppo loss and is not applied.
    """
    algo = _algorithm(cfg).algorithm_type
    if algo in PPO_LOSS_ALGORITHMS:
        low, high = clip_range(cfg)
        return "ppo", {"clip_low_threshold": 1.0 - low, "clip_high_threshold": 1.0 + high}
    if algo == "sft":
        return "cross_entropy", None
    raise AlgorithmError(f"algorithm {algo!r} has no Tinker loss in this runtime; supported: "
                         f"{', '.join((*PPO_LOSS_ALGORITHMS, 'sft'))}")
