"""SFT: cross-entropy on a dataset's responses (mode train)."""

from __future__ import annotations

from typing import Any

from rft_runtime.algorithms.base import Algorithm, register
from rft_runtime.config.errors import ConfigIssue
from rft_runtime.config.paths import JOB


def no_kl_term(name: str, plan: Any) -> list[ConfigIssue]:
    """A dataset algorithm without a reference model: a KL term cannot be trained (Trinity's has none)."""
    if plan.kl_coef:
        return [ConfigIssue(str(JOB.algorithm.kl_loss_fn),
                            f"{name} from a dataset trains no KL term; set kl_loss_fn: none")]
    return []


@register
class SFT(Algorithm):
    name = "sft"
    data = "sft"
    policy_loss_fn = "sft"
    kl_loss_fn = "none"
    entropy_loss_fn = "none"

    @classmethod
    def check(cls, cfg: Any, plan: Any) -> list[ConfigIssue]:
        """No KL term."""
        return no_kl_term("sft", plan)
