"""The built-in Tinker losses. Each returns the per-token loss of one datum; the datum's loss is its sum
(Tinker reports and differentiates sums, "loss:sum").

Notation for one datum of T target tokens: logp_t is the trained policy's log-probability of target token t
(differentiable), q_t the sampler's log-probability of it (loss_fn_inputs["logprobs"]), A_t the advantage,
w_t the weight, r_t = exp(logp_t - q_t) the importance ratio, sg() a stop-gradient, and [lo, hi] the
clip_low_threshold / clip_high_threshold of loss_fn_config (ratio bounds, default 0.8 and 1.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

DEFAULT_CLIP_LOW = 0.8
DEFAULT_CLIP_HIGH = 1.2


class LossInputError(ValueError):
    """A loss called with missing, mis-shaped or unknown inputs (the request is the caller's fault)."""


def cross_entropy(logp: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, Any]) -> torch.Tensor:
    """L = -sum_t w_t * logp_t  (w_t = 1 when no weights are given)."""
    weights = inputs.get("weights")
    if weights is None:
        weights = torch.ones_like(logp)
    return -(weights * logp)


def importance_sampling(logp: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, Any]) -> torch.Tensor:
    """L = -sum_t r_t * A_t,  r_t = exp(logp_t - q_t)  (REINFORCE with an importance weight)."""
    ratio = torch.exp(logp - inputs["logprobs"])
    return -(ratio * inputs["advantages"])


def _bounds(config: dict[str, Any]) -> tuple[float, float]:
    lo = float(config.get("clip_low_threshold", DEFAULT_CLIP_LOW))
    hi = float(config.get("clip_high_threshold", DEFAULT_CLIP_HIGH))
    if not 0.0 <= lo <= hi:
        raise LossInputError(f"need 0 <= clip_low_threshold <= clip_high_threshold, got {lo} and {hi}")
    return lo, hi


def ppo(logp: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, Any]) -> torch.Tensor:
    """L = -sum_t min(r_t * A_t, clip(r_t, lo, hi) * A_t)  (PPO's clipped surrogate, summed)."""
    lo, hi = _bounds(config)
    ratio = torch.exp(logp - inputs["logprobs"])
    adv = inputs["advantages"]
    return -torch.minimum(ratio * adv, ratio.clamp(lo, hi) * adv)


def cispo(logp: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, Any]) -> torch.Tensor:
    """L = -sum_t sg(clip(r_t, lo, hi)) * A_t * logp_t  (CISPO: clip the weight, keep every token's gradient)."""
    lo, hi = _bounds(config)
    weight = torch.exp(logp - inputs["logprobs"]).clamp(lo, hi).detach()
    return -(weight * inputs["advantages"] * logp)


LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]], torch.Tensor]

LOSSES: dict[str, tuple[LossFn, tuple[str, ...], tuple[str, ...]]] = {
    # name: (function, required inputs besides target_tokens, optional inputs)
    "cross_entropy": (cross_entropy, (), ("weights",)),
    "importance_sampling": (importance_sampling, ("logprobs", "advantages"), ()),
    "ppo": (ppo, ("logprobs", "advantages"), ()),
    "cispo": (cispo, ("logprobs", "advantages"), ()),
}


def check_loss(name: str, config: dict[str, Any] | None) -> None:
    """Raise LossInputError for an unknown loss name or an invalid loss_fn_config."""
    if name not in LOSSES:
        raise LossInputError(f"unknown loss_fn {name!r}; this engine supports {', '.join(LOSSES)}")
    if name in ("ppo", "cispo"):
        _bounds(config or {})


def check_inputs(name: str, n_tokens: int, inputs: dict[str, Any], index: int) -> None:
    """Raise LossInputError unless datum `index` carries every input the loss needs, each n_tokens long."""
    _, required, optional = LOSSES[name]
    if "target_tokens" not in inputs:
        raise LossInputError(f"datum {index}: loss_fn_inputs needs 'target_tokens'")
    for key in ("target_tokens", *required, *optional):
        if key not in inputs:
            if key in required:
                raise LossInputError(f"datum {index}: loss {name!r} needs loss_fn_inputs[{key!r}]")
            continue
        length = len(inputs[key])
        if length != n_tokens:
            raise LossInputError(
                f"datum {index}: loss_fn_inputs[{key!r}] has {length} entries but model_input has "
                f"{n_tokens} tokens; they must be equal"
            )


def token_losses(name: str, logp: torch.Tensor, inputs: dict[str, torch.Tensor], config: dict[str, Any]) -> torch.Tensor:
    """The per-token loss `name` of one datum (a [T] tensor; the datum's loss is its sum)."""
    return LOSSES[name][0](logp, inputs, config)
