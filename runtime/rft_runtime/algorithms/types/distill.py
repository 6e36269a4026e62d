"""Distillation from a teacher model, explorer.auxiliary_models[0]: per-token advantages from the teacher's
logprobs (the workflow's info["teacher_logprobs"], or fetched from the teacher's sampler)."""

from __future__ import annotations

from rft_runtime.algorithms.base import Algorithm, register


@register
class OnPolicyDistill(Algorithm):
    name = "on_policy_distill"
    advantage_fn = "on_policy_distill"
    kl_in_reward = True
    kl_loss_fn = "none"
    entropy_loss_fn = "none"


@register
class JSD(Algorithm):
    name = "jsd"
    advantage_fn = "jsd"
    kl_in_reward = True
    kl_loss_fn = "none"
    entropy_loss_fn = "none"
