"""Algorithms over multi-turn runs: one experience per turn, the advantage broadcast over a run's steps."""

from __future__ import annotations

from rft_runtime.algorithms.base import Algorithm, register


@register
class MultiStepGRPO(Algorithm):
    name = "multi_step_grpo"
    advantage_fn = "step_wise_grpo"
    multi_step = True


@register
class GiGPO(Algorithm):
    name = "gigpo"
    advantage_fn = "gigpo"
    multi_step = True
