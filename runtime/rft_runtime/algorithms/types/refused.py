"""Trinity's algorithm types that cannot train on Tinker, each with the reason and what to use instead."""

from __future__ import annotations

from rft_runtime.algorithms.base import Algorithm, register


@register
class PPO(Algorithm):
    name = "ppo"
    advantage_fn = "ppo"
    refusal = ("it trains a critic (value model) for GAE advantages, and Tinker trains only the policy's LoRA "
               "adapter; use grpo (a group baseline instead of a critic) or the veRL backend")


@register
class GRPOVerl(Algorithm):
    name = "grpo_verl"
    advantage_fn = "grpo_verl"
    refusal = "it is veRL's own batch-tensor GRPO implementation; use grpo (the same maths per task group)"
