"""Names the config accepts, and which of them each backend can run.

Kept free of heavy imports: the validator, the operator and the CRD generator all read it.
"""

from __future__ import annotations

MODES = ("both", "explore", "train", "bench", "serve", "colocate")
# What this runtime runs itself on the Tinker backend. The veRL backend hands the whole job to
# `trinity run`, so every Trinity mode is accepted there.
TINKER_MODES = ("both", "train")

# Algorithms Trinity-RFT knows. ppo needs a critic and on_policy_distill a teacher model: neither exists
# behind the Tinker API, so they stay refused there.
KNOWN_ALGORITHMS = (
    "ppo",
    "grpo",
    "opmd",
    "sft",
    "dpo",
    "mix",
    "rloo",
    "reinforceplusplus",
    "on_policy_distill",
    "jsd",
    "grpo_verl",
    "gspo",
    "cispo",
)
# Trinity 0.6 refuses rloo and reinforceplusplus on Tinker because it computes their advantages in the
# trainer. Both need only the group's (or batch's) rewards, so this runtime computes them where grpo's
# are and runs them on Tinker.
TINKER_ALGORITHMS = ("grpo", "opmd", "sft", "rloo", "reinforceplusplus")
# Algorithms that learn from a fixed dataset rather than from rollouts.
OFFLINE_ALGORITHMS = ("sft", "dpo")

MONITOR_TYPES = ("tensorboard", "wandb", "mlflow", "swanlab", "none")
SYNC_METHODS = ("nccl", "checkpoint", "memory")
SYNC_STYLES = ("fixed", "trainer_driven", "explorer_driven", "fully_async")
# On Tinker, weights only reach the sampler through saved sampler weights.
TINKER_SYNC_METHODS = ("checkpoint",)

# Workflows this runtime ships. Anything else must be an import path `package.module:Name`.
BUILTIN_WORKFLOWS = ("math_workflow", "simple_workflow")


def known_workflows() -> tuple[str, ...]:
    """Registered workflow names (the runtime's registry when importable, else the built-ins)."""
    try:
        from rft_runtime.workflows import known_workflows as registry
    except ImportError:
        return BUILTIN_WORKFLOWS
    return tuple(registry())


def is_import_path(name: str) -> bool:
    """True for `package.module:Name`, or Trinity's `package.module.Name` (split at the last dot)."""
    module, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    return bool(sep and module and attr and all(p.isidentifier() for p in module.split(".")) and attr.isidentifier())
