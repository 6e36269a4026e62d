"""What an algorithm type is: one class per Trinity `algorithm_type`, registered by name, owning its parts
(Trinity's default_config: advantage function, policy loss, KL and entropy terms, sample strategy), the data
it learns from, and its own checks. The loop maps the data kind to a step builder; the loss plan
(algorithms.losses) assembles the parts. As Trinity's `@ALGORITHM_TYPE.register_module` classes:

    @register
    class GRPO(Algorithm):
        name = "grpo"
        advantage_fn = "grpo"

No torch here: the validator, the catalog and the operator read it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from rft_runtime.config.errors import ConfigIssue

# what a step trains on: the explorer's rollouts, or a dataset of responses (sft), of chosen/rejected
# pairs (dpo) or of raw text (cpt)
DataKind = Literal["rollouts", "sft", "dpo", "cpt"]
DATASET_KINDS: tuple[DataKind, ...] = ("sft", "dpo", "cpt")


class Algorithm:
    """An algorithm type: Trinity's default parts, its data, and what it checks beyond its parts' own rules."""

    name: ClassVar[str]
    data: ClassVar[DataKind] = "rollouts"
    advantage_fn: ClassVar[str | None] = None
    policy_loss_fn: ClassVar[str] = "ppo"
    kl_loss_fn: ClassVar[str] = "k2"
    entropy_loss_fn: ClassVar[str] = "default"
    sample_strategy: ClassVar[str] = "default"
    # multi-turn runs: the advantage broadcasts over the steps of a run (step_wise_grpo, gigpo)
    multi_step: ClassVar[bool] = False
    # Trinity computes its advantages in the trainer, where kl_penalty_fn turns into a KL penalty on the rewards;
    # for the others Trinity never reads kl_penalty_fn
    kl_in_reward: ClassVar[bool] = False
    # why Tinker cannot train it, with what to use instead (None: it trains)
    refusal: ClassVar[str | None] = None

    @classmethod
    def check(cls, cfg: Any, plan: Any) -> list[ConfigIssue]:
        """Problems of this algorithm in `cfg` (a JobConfig, or its algorithm section) that its parts'
        own checks do not see, each at its field; [] when it trains as configured. `plan` is the LossPlan
        its parts make (algorithms.losses, which imports this module)."""
        return []

    @classmethod
    def warnings(cls, cfg: Any, plan: Any) -> list[str]:
        """What the user should know about how this config trains (shown by `rft validate`)."""
        return []


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make `cls` the algorithm type named `cls.name`."""
    ALGORITHMS[cls.name] = cls
    return cls
