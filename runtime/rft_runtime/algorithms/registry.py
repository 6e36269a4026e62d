"""The algorithm types: every file in algorithms/types registers its own (`@register`), so adding an
algorithm is one file there. The catalog, the validator, the loss plan and the loop read them from here.

No torch here.
"""

from __future__ import annotations

import importlib
import pkgutil

from rft_runtime.algorithms import types as _types
from rft_runtime.algorithms.base import ALGORITHMS, DATASET_KINDS, Algorithm, register
from rft_runtime.algorithms.errors import AlgorithmError
from rft_runtime.config.paths import JOB
from rft_runtime.config.trinity_facts import REGISTRIES

for _module in pkgutil.iter_modules(_types.__path__):
    importlib.import_module(f"{_types.__name__}.{_module.name}")

__all__ = ["ALGORITHMS", "Algorithm", "algorithm_spec", "dataset_algorithms", "register", "tinker_algorithms",
           "tinker_refusals"]


def _in_trinity_order(names: list[str]) -> tuple[str, ...]:
    # rollout algorithms before dataset ones, each in Trinity's registration order, then any only here
    order = {name: i for i, name in enumerate(REGISTRIES["algorithms"])}
    return tuple(sorted(names, key=lambda n: (ALGORITHMS[n].data != "rollouts", order.get(n, len(order)), n)))


def algorithm_spec(name: str) -> type[Algorithm]:
    """The algorithm type `name`; an AlgorithmError for a name no file in algorithms/types registers."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise AlgorithmError(f"unknown algorithm {name!r}; Trinity-RFT knows: {', '.join(_in_trinity_order(list(ALGORITHMS)))}",
                             JOB.algorithm.algorithm_type) from None


def tinker_algorithms() -> tuple[str, ...]:
    """The algorithm types this runtime trains on Tinker."""
    return _in_trinity_order([n for n, a in ALGORITHMS.items() if not a.refusal])


def tinker_refusals() -> dict[str, str]:
    """Algorithm type -> why it cannot run on Tinker (with an alternative)."""
    return {n: ALGORITHMS[n].refusal or "" for n in _in_trinity_order([n for n, a in ALGORITHMS.items() if a.refusal])}


def dataset_algorithms() -> tuple[str, ...]:
    """The algorithm types that learn from a fixed dataset (sft, dpo, cpt) rather than from rollouts."""
    return _in_trinity_order([n for n, a in ALGORITHMS.items() if a.data in DATASET_KINDS])
