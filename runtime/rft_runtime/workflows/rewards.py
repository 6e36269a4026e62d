"""Built-in reward functions. Each takes keyword arguments (response, truth, and its own options) and
returns a number or a dict of named parts whose sum is the reward (Trinity-RFT's convention)."""

from __future__ import annotations

from rft_runtime.workflows.answers import is_correct, well_formed


def accuracy_reward(response: str, truth: object) -> dict[str, float]:
    """{"accuracy": 1.0} when the answer (the <answer> block, else the whole response) equals the truth."""
    return {"accuracy": 1.0 if truth is not None and is_correct(response, truth) else 0.0}


def format_reward(response: str, format_score_coef: float = 0.1) -> dict[str, float]:
    """{"format_score": +coef} for exactly `<think>...</think> <answer>...</answer>`, else -coef."""
    return {"format_score": format_score_coef if well_formed(response) else -format_score_coef}


def math_reward(response: str, truth: object, format_score_coef: float = 0.1) -> dict[str, float]:
    """Reference math reward: accuracy (0 or 1) + format (+0.1 / -0.1); a right answer in shape is 1.1."""
    return {**accuracy_reward(response, truth), **format_reward(response, format_score_coef)}


def exact_match_reward(response: str, truth: object) -> dict[str, float]:
    """{"accuracy": 1.0} when the whole response, stripped, is the truth (also stripped)."""
    return {"accuracy": 1.0 if truth is not None and response.strip() == str(truth).strip() else 0.0}
