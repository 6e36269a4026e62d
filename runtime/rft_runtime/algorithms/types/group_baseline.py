"""Algorithms that learn from rollouts with a group (or batch) baseline and a policy loss: only their parts
differ (Trinity 0.6's default_config of each)."""

from __future__ import annotations

from typing import Any

from rft_runtime.algorithms.base import Algorithm, register


@register
class GRPO(Algorithm):
    """Group relative policy optimisation: (r - mean) / std within each task's group, PPO-clip."""

    name = "grpo"
    advantage_fn = "grpo"

    @classmethod
    def warnings(cls, cfg: Any, plan: Any) -> list[str]:
        """A group of one has no baseline."""
        if getattr(cfg, "mode", "both") == "both" and cfg.algorithm.repeat_times == 1:
            return ["algorithm.repeat_times is 1: grpo compares rollouts of the same task, and a group of one has "
                    "no baseline (its advantage is its reward, as in Trinity); use repeat_times >= 2"]
        return []


@register
class DAPO(Algorithm):
    name = "dapo"
    advantage_fn = "grpo"
    kl_loss_fn = "none"


@register
class ReinforcePlusPlus(Algorithm):
    name = "reinforceplusplus"
    advantage_fn = "reinforceplusplus"
    kl_in_reward = True


@register
class RLOO(Algorithm):
    name = "rloo"
    advantage_fn = "rloo"
    kl_in_reward = True


@register
class OPMD(Algorithm):
    name = "opmd"
    advantage_fn = "opmd"
    policy_loss_fn = "opmd"


@register
class AsymRE(Algorithm):
    name = "asymre"
    advantage_fn = "asymre"
    policy_loss_fn = "opmd"
    kl_loss_fn = "none"
    entropy_loss_fn = "none"


@register
class TOPR(Algorithm):
    name = "topr"
    advantage_fn = "reinforce"
    policy_loss_fn = "topr"


@register
class CISPO(Algorithm):
    name = "cispo"
    advantage_fn = "grpo"
    policy_loss_fn = "cispo"


@register
class GSPO(Algorithm):
    name = "gspo"
    advantage_fn = "grpo"
    policy_loss_fn = "gspo"


@register
class SAPO(Algorithm):
    name = "sapo"
    advantage_fn = "grpo"
    policy_loss_fn = "sapo"


@register
class SPPO(Algorithm):
    name = "sppo"
    advantage_fn = "opmd"
    policy_loss_fn = "sppo"
    kl_loss_fn = "none"
    entropy_loss_fn = "none"


@register
class REC(Algorithm):
    name = "rec"
    advantage_fn = "rec"
    policy_loss_fn = "rec"
