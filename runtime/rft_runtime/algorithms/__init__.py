"""RL maths on plain numbers: advantages from a group's rewards, and which Tinker loss each algorithm uses.

    from rft_runtime.algorithms import compute_advantages, normalise_batch, loss_spec, needs_custom_kl_loss
    compute_advantages("grpo", [1.0, 0.0, 1.0, 0.0], {})   # one task's group -> [0.866, -0.866, ...]
    loss_spec(cfg)  # ("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})

No torch: these run in the explorer and trainer threads on lists of floats.
"""

from rft_runtime.algorithms.advantages import (
    ADVANTAGE_ALGORITHMS,
    AlgorithmError,
    check_advantage_args,
    compute_advantages,
    grpo_advantages,
    normalise_batch,
    opmd_advantages,
    reinforceplusplus_advantages,
    rloo_advantages,
)
from rft_runtime.algorithms.losses import kl_coef, loss_spec, needs_custom_kl_loss

__all__ = [
    "ADVANTAGE_ALGORITHMS",
    "AlgorithmError",
    "check_advantage_args",
    "compute_advantages",
    "grpo_advantages",
    "kl_coef",
    "loss_spec",
    "needs_custom_kl_loss",
    "normalise_batch",
    "opmd_advantages",
    "reinforceplusplus_advantages",
    "rloo_advantages",
]
