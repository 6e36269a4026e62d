"""Names the config accepts, and which of them each backend can run.

Kept free of heavy imports: the validator, the operator and the CRD generator all read it. Trinity's names
come from `trinity_facts` (its registries, read from its source); the Tinker backend runs what this
runtime's own registries hold.
"""

from __future__ import annotations

from rft_runtime.algorithms import registry as _registry
from rft_runtime.config.trinity_facts import REGISTRIES

# one rule for what names user code, shared with the workflow registry (re-exported for the validator)
from rft_runtime.import_paths import is_import_path, split_import_path  # noqa: F401
from rft_runtime.workflows import known_reward_fns as _registered_reward_fns
from rft_runtime.workflows import known_workflows as _registered_workflows

MODES = ("both", "explore", "train", "bench", "serve", "colocate")
# What this runtime runs itself on the Tinker backend. The veRL backend hands the whole job to
# `trinity run`, so every Trinity mode is accepted there.
TINKER_MODES = ("both", "train", "explore", "bench", "serve")

# Every algorithm Trinity-RFT 0.6 registers: a veRL job may use any of them.
KNOWN_ALGORITHMS = REGISTRIES["algorithms"]
# What trains on Tinker, and why the rest cannot, come from the algorithm types (rft_runtime.algorithms.types,
# one class each, read by rft_runtime.algorithms.registry).
TINKER_ALGORITHMS = _registry.tinker_algorithms()
# Algorithms that learn from a fixed dataset rather than from rollouts (their data kind).
OFFLINE_ALGORITHMS = _registry.dataset_algorithms()
# Why each algorithm Trinity knows cannot run on Tinker here, with what to use instead (shown to the user).
TINKER_REFUSALS = _registry.tinker_refusals()
TINKER_REFUSAL_DEFAULT = "no file in rft_runtime/algorithms/types registers it"

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
    return tuple(_registered_workflows())


def known_reward_fns() -> tuple[str, ...]:
    """Reward functions this runtime runs on Tinker (its registry)."""
    return tuple(_registered_reward_fns())
