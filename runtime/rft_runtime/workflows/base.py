"""Errors and scores shared by workflows and reward functions."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any


class WorkflowError(ValueError):
    """A workflow or reward function that cannot be found, imported or used; the message says which."""


@dataclass
class Score:
    """A rollout's reward, and the named parts behind it (logged as metrics, e.g. accuracy)."""

    reward: float
    metrics: dict[str, float] = field(default_factory=dict)


def call_reward_fn(fn: Any, **available: Any) -> Any:
    """Call a reward function with the keyword arguments it declares (all of them if it takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(**available)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**available)
    return fn(**{k: v for k, v in available.items() if k in params})


def as_score(result: Any) -> Score:
    """A reward function's result as a Score: a number, a Score, or a dict whose values sum to the reward.

    The dict form is Trinity-RFT's: {"accuracy": 1.0, "format_score": 0.1} is a reward of 1.1.
    """
    if isinstance(result, Score):
        return result
    if isinstance(result, dict):
        metrics = {str(k): float(v) for k, v in result.items()}
        return Score(sum(metrics.values()), metrics)
    if isinstance(result, str) or not hasattr(result, "__float__"):
        raise WorkflowError(f"a reward function returned {result!r}; return a number, a Score, or a dict "
                            "of numbers")
    return Score(float(result))
