"""RAFT: cross-entropy on the rollouts themselves (Trinity keeps the rewarded ones through its workflow)."""

from __future__ import annotations

from rft_runtime.algorithms.base import Algorithm, register


@register
class RAFT(Algorithm):
    name = "raft"
    policy_loss_fn = "sft"
    kl_loss_fn = "none"
    entropy_loss_fn = "none"
