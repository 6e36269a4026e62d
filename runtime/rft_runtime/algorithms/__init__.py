"""RL maths on plain data: Trinity-RFT's algorithm types (one class each in algorithms/types, found by
registry), their parts (advantages, policy_losses) and the loss plan each config trains with (losses);
the torch terms of the loss are in algorithms.terms.

    from rft_runtime.algorithms import compute_advantages, loss_plan
    compute_advantages("grpo", [1.0, 0.0, 1.0, 0.0])   # one task's group -> [0.866, -0.866, ...]
    loss_plan(cfg).builtin                              # ("ppo", {"clip_low_threshold": 0.8, ...}) or None

No torch at import: the validator and the catalog read these.
"""

from rft_runtime.algorithms.advantages import (
    ADVANTAGE_ALGORITHMS,
    ADVANTAGE_FNS,
    ADVANTAGE_REFUSALS,
    Sample,
    batch_advantages,
    check_advantage_args,
    compute_advantages,
    normalise_batch,
    register_advantage,
)
from rft_runtime.algorithms.base import DATASET_KINDS, Algorithm, DataKind, register
from rft_runtime.algorithms.errors import AlgorithmError
from rft_runtime.algorithms.losses import (
    AGG_MODES,
    KL_FNS,
    POLICY_LOSSES,
    LossPlan,
    agg_scales,
    kl_coef,
    loss_plan,
    loss_spec,
    needs_custom_kl_loss,
)
from rft_runtime.algorithms.policy_losses import POLICY_LOSS_PARTS, PolicyLoss, register_policy_loss
from rft_runtime.algorithms.registry import ALGORITHMS, algorithm_spec

__all__ = [
    "AGG_MODES", "ALGORITHMS", "ADVANTAGE_ALGORITHMS", "ADVANTAGE_FNS", "ADVANTAGE_REFUSALS", "DATASET_KINDS",
    "KL_FNS", "POLICY_LOSSES", "POLICY_LOSS_PARTS", "Algorithm", "AlgorithmError", "DataKind", "LossPlan",
    "PolicyLoss", "Sample", "agg_scales", "algorithm_spec", "batch_advantages", "check_advantage_args",
    "compute_advantages", "kl_coef", "loss_plan", "loss_spec", "needs_custom_kl_loss", "normalise_batch",
    "register", "register_advantage", "register_policy_loss",
]
