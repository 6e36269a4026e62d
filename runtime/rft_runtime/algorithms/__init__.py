"""RL maths on plain data: Trinity-RFT's algorithm types (registry), their advantages (advantages) and the
loss plan each config trains with (losses); the torch terms of the loss are in algorithms.terms.

    from rft_runtime.algorithms import compute_advantages, loss_plan
    compute_advantages("grpo", [1.0, 0.0, 1.0, 0.0])   # one task's group -> [0.866, -0.866, ...]
    loss_plan(cfg).builtin                              # ("ppo", {"clip_low_threshold": 0.8, ...}) or None

No torch at import: the validator and the catalog read these.
"""

from rft_runtime.algorithms.advantages import (
    ADVANTAGE_ALGORITHMS,
    ADVANTAGE_FNS,
    ADVANTAGE_REFUSALS,
    AlgorithmError,
    Sample,
    batch_advantages,
    check_advantage_args,
    compute_advantages,
    normalise_batch,
)
from rft_runtime.algorithms.losses import (
    AGG_MODES,
    KL_FNS,
    POLICY_LOSS_REFUSALS,
    POLICY_LOSSES,
    LossPlan,
    agg_scales,
    kl_coef,
    loss_plan,
    loss_spec,
    needs_custom_kl_loss,
)
from rft_runtime.algorithms.registry import ALGORITHMS, AlgorithmSpec, algorithm_spec, register

__all__ = [
    "AGG_MODES", "ALGORITHMS", "ADVANTAGE_ALGORITHMS", "ADVANTAGE_FNS", "ADVANTAGE_REFUSALS", "KL_FNS",
    "POLICY_LOSSES", "POLICY_LOSS_REFUSALS", "AlgorithmError", "AlgorithmSpec", "LossPlan", "Sample",
    "agg_scales", "algorithm_spec", "batch_advantages", "check_advantage_args", "compute_advantages", "kl_coef",
    "loss_plan", "loss_spec", "needs_custom_kl_loss", "normalise_batch", "register",
]
