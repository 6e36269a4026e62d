"""Names the config accepts, and which of them each backend can run.

Kept free of heavy imports: the validator, the operator and the CRD generator all read it. Trinity's names
come from `trinity_facts` (its registries, read from its source); the Tinker backend runs what this
runtime's own registries hold.
"""

from __future__ import annotations

import keyword

from rft_runtime.config.trinity_facts import REGISTRIES

MODES = ("both", "explore", "train", "bench", "serve", "colocate")
# What this runtime runs itself on the Tinker backend. The veRL backend hands the whole job to
# `trinity run`, so every Trinity mode is accepted there.
TINKER_MODES = ("both", "train")

# Every algorithm Trinity-RFT 0.6 registers: a veRL job may use any of them.
KNOWN_ALGORITHMS = REGISTRIES["algorithms"]
# Trinity 0.6 refuses rloo and reinforceplusplus on Tinker because it computes their advantages in the
# trainer. Both need only the group's (or batch's) rewards, so this runtime computes them where grpo's
# are and runs them on Tinker.
TINKER_ALGORITHMS = ("grpo", "opmd", "sft", "rloo", "reinforceplusplus")
# Algorithms that learn from a fixed dataset rather than from rollouts.
OFFLINE_ALGORITHMS = ("sft", "dpo", "cpt")

# Why each algorithm Trinity knows cannot run on Tinker here (shown to the user); the rest get a general
# reason. Deleting a name from here and adding it to TINKER_ALGORITHMS is how an algorithm comes to Tinker.
TINKER_REFUSALS = {
    "ppo": "it trains a critic (value model), and Tinker trains only the policy's LoRA adapter",
    "on_policy_distill": "it needs a teacher model's logprobs for every token, which this runtime does not fetch",
    "jsd": "it needs a teacher model's logprobs for every token, which this runtime does not fetch",
    "dpo": "it needs chosen/rejected pairs, which this runtime does not train on Tinker yet",
    "mix": "it mixes expert data into the policy loss, which this runtime does not do on Tinker",
    "mix_chord": "it mixes expert data into the policy loss, which this runtime does not do on Tinker",
    "grpo_verl": "it is veRL's own GRPO implementation; use grpo",
    "gspo": "its sequence-level ratio is not one of Tinker's built-in losses yet",
    "cispo": "this runtime does not map it to Tinker's cispo loss yet",
    "multi_step_grpo": "its step-wise advantages over multi-turn experiences are not implemented here",
}
TINKER_REFUSAL_DEFAULT = "its policy loss or advantages are not implemented for Tinker in this runtime"

MONITOR_TYPES = ("tensorboard", "wandb", "mlflow", "swanlab", "none")
SYNC_METHODS = ("nccl", "checkpoint", "memory")
SYNC_STYLES = ("fixed", "trainer_driven", "explorer_driven", "fully_async")
# On Tinker new weights reach the sampler as a sampler path handed over in memory: with `checkpoint` the
# explorer is given the saved sampler weights' path, with `memory` (Trinity's Tinker trainer) the same path
# is passed without a disk round trip, which is what this runtime always does. nccl becomes checkpoint.
TINKER_SYNC_METHODS = ("checkpoint", "memory")

# Trinity's registered workflow and reward names: a veRL job may use any of them.
TRINITY_WORKFLOWS = REGISTRIES["workflows"]
TRINITY_REWARD_FNS = REGISTRIES["reward_fns"]


def known_workflows() -> tuple[str, ...]:
    """Workflows this runtime runs on Tinker (its registry; another package may register more)."""
    from rft_runtime.workflows import known_workflows as registry

    return tuple(registry())


def known_reward_fns() -> tuple[str, ...]:
    """Reward functions this runtime runs on Tinker (its registry)."""
    from rft_runtime.workflows import known_reward_fns as registry

    return tuple(registry())


def split_import_path(name: str) -> tuple[str, str] | None:
    """(module, attribute) of `package.module:Name` or `package.module.Name` (split on the last dot, as
    Trinity does); None when `name` is not an import path."""
    if ":" in name:
        module, _, attr = name.partition(":")
    else:
        module, _, attr = name.rpartition(".")
    parts = module.split(".") if module else []
    ok = parts and all(p.isidentifier() and not keyword.iskeyword(p) for p in parts)
    return (module, attr) if ok and attr.isidentifier() else None


def is_import_path(name: str) -> bool:
    """True for `package.module:Name` and `package.module.Name` (the forms user code takes)."""
    return split_import_path(name) is not None
