"""One table of Trinity-RFT 0.6's algorithm types: what each is made of (Trinity's defaults) and, for the
ones that cannot run on Tinker, why and what to use instead. The catalog, the validator and the trainer
all read it, so adding an algorithm is one `register` call (plus its maths, if new).

    @register("grpo", advantage_fn="grpo", policy_loss_fn="ppo")

No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from rft_runtime.algorithms.advantages import AlgorithmError


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm type with Trinity's default parts; `refusal` set when Tinker cannot train it."""

    name: str
    advantage_fn: str | None = None
    policy_loss_fn: str = "ppo"
    kl_loss_fn: str = "k2"
    entropy_loss_fn: str = "default"
    sample_strategy: str = "default"
    # what it learns from: rollouts ("experience"), or a dataset ("sft", "cpt", "dpo")
    schema: str = "experience"
    refusal: str | None = None
    # multi-turn runs: the advantage broadcasts over the steps of a run (step_wise_grpo, gigpo)
    multi_step: bool = False


ALGORITHMS: dict[str, AlgorithmSpec] = {}


def register(name: str, **parts: object) -> AlgorithmSpec:
    """Add algorithm `name` (Trinity's registered name) with its parts; returns its spec."""
    spec = AlgorithmSpec(name=name, **parts)  # type: ignore[arg-type]
    ALGORITHMS[name] = spec
    return spec


# ---- trained on Tinker (parts are Trinity 0.6's default_config of each algorithm)
register("grpo", advantage_fn="grpo")
register("dapo", advantage_fn="grpo", kl_loss_fn="none")
register("reinforceplusplus", advantage_fn="reinforceplusplus")
register("rloo", advantage_fn="rloo")
register("opmd", advantage_fn="opmd", policy_loss_fn="opmd")
register("asymre", advantage_fn="asymre", policy_loss_fn="opmd", kl_loss_fn="none", entropy_loss_fn="none")
register("topr", advantage_fn="reinforce", policy_loss_fn="topr")
register("cispo", advantage_fn="grpo", policy_loss_fn="cispo")
register("gspo", advantage_fn="grpo", policy_loss_fn="gspo")
register("sapo", advantage_fn="grpo", policy_loss_fn="sapo")
register("sppo", advantage_fn="opmd", policy_loss_fn="sppo", kl_loss_fn="none", entropy_loss_fn="none")
register("rec", advantage_fn="rec", policy_loss_fn="rec")
register("raft", policy_loss_fn="sft", kl_loss_fn="none", entropy_loss_fn="none")
register("multi_step_grpo", advantage_fn="step_wise_grpo", multi_step=True)
register("gigpo", advantage_fn="gigpo", multi_step=True)
register("sft", policy_loss_fn="sft", kl_loss_fn="none", entropy_loss_fn="none", schema="sft")
# continued pre-training: cross-entropy on every token of raw text after the first (Trinity's prompt_length 1)
register("cpt", policy_loss_fn="sft", kl_loss_fn="none", entropy_loss_fn="none", schema="cpt")
# Trinity forces a k2 KL loss on dpo only so that its trainer computes reference logprobs; the DPO loss
# reads them itself here, so no KL term is added unless asked for
register("dpo", policy_loss_fn="dpo", kl_loss_fn="none", entropy_loss_fn="none", schema="dpo")
# the teacher is explorer.auxiliary_models[0]; its logprobs come from the workflow
# (info["teacher_logprobs"]) or, when it gives none, from the teacher's sampler here
register("on_policy_distill", advantage_fn="on_policy_distill", kl_loss_fn="none", entropy_loss_fn="none")
register("jsd", advantage_fn="jsd", kl_loss_fn="none", entropy_loss_fn="none")

# ---- refused on Tinker, each with the reason and an alternative
register("ppo", advantage_fn="ppo", schema="experience",
         refusal="it trains a critic (value model) for GAE advantages, and Tinker trains only the policy's LoRA "
                 "adapter; use grpo (a group baseline instead of a critic) or the veRL backend")
register("grpo_verl", advantage_fn="grpo_verl",
         refusal="it is veRL's own batch-tensor GRPO implementation; use grpo (the same maths per task group)")
register("mix", advantage_fn="grpo", policy_loss_fn="mix", sample_strategy="mix", entropy_loss_fn="mix")
register("mix_chord", advantage_fn="grpo", policy_loss_fn="mix_chord", sample_strategy="mix",
         entropy_loss_fn="mix",
         refusal="CHORD's weighting of the expert data (sft_is / sft_phi, its mu schedule) is not implemented on "
                 "Tinker yet; use mix (expert SFT data with a fixed mu), or the veRL backend")


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The spec of algorithm `name`; an AlgorithmError for a name Trinity does not register."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise AlgorithmError(f"unknown algorithm {name!r}; Trinity-RFT knows: {', '.join(ALGORITHMS)}") from None


def tinker_algorithms() -> tuple[str, ...]:
    """The algorithm types this runtime trains on Tinker."""
    return tuple(n for n, s in ALGORITHMS.items() if not s.refusal)


def tinker_refusals() -> dict[str, str]:
    """Algorithm type -> why it cannot run on Tinker (with an alternative)."""
    return {n: s.refusal for n, s in ALGORITHMS.items() if s.refusal}
