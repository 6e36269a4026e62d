"""MIX and CHORD: every RL step adds expert SFT rows (sample_strategy mix) that the loss weighs against the
rollouts; CHORD schedules the weight mu and can reweight the expert tokens (sft_phi)."""

from __future__ import annotations

from rft_runtime.algorithms.base import Algorithm, register


@register
class MIX(Algorithm):
    name = "mix"
    advantage_fn = "grpo"
    policy_loss_fn = "mix"
    sample_strategy = "mix"
    entropy_loss_fn = "mix"


@register
class MIXChord(Algorithm):
    name = "mix_chord"
    advantage_fn = "grpo"
    policy_loss_fn = "mix_chord"
    sample_strategy = "mix"
    entropy_loss_fn = "mix"
