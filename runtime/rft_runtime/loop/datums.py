"""Training examples in Tinker's shape, and the one client-side loss (KL) the built-in losses lack.

A sample of prompt + response becomes one Datum: the model reads tokens[:-1] and is scored on tokens[1:];
prompt positions carry zero weight / zero advantage, which Tinker's losses treat as masked. Token-mean
aggregation (Trinity's default) is done by scaling each token's weight or advantage by 1 / tokens in the
batch, so the server's summed loss is already the mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Tinker losses that read sampler logprobs and per-token advantages.
ADVANTAGE_LOSSES = ("ppo", "importance_sampling", "cispo", "dro", "stable_reinforce")


def _model_input(tokens: list[int]) -> Any:
    import tinker

    return tinker.ModelInput.from_ints(tokens)


def rl_datum(
    prompt_ids: list[int], response: list[int], logprobs: list[float], advantage: float, scale: float,
    ref_logprobs: list[float] | None = None, mask: list[int] | None = None,
) -> Any:
    """One rollout for an advantage loss: per-token sampler logprobs and (scaled) advantages.

    `mask` (one 0/1 per response token; all 1 when None) is the experience's action mask: tokens the model
    did not produce (tool output, an environment's reply) get zero advantage and zero weight, so they
    carry no loss.
    """
    import tinker

    tokens = prompt_ids + response
    n_prompt = len(prompt_ids) - 1
    keep = [1.0] * len(response) if mask is None else [float(m) for m in mask]
    inputs: dict[str, Any] = {
        "target_tokens": np.asarray(tokens[1:], dtype=np.int64),
        "logprobs": np.asarray([0.0] * n_prompt + list(logprobs), dtype=np.float32),
        "advantages": np.asarray([0.0] * n_prompt + [advantage * scale * k for k in keep], dtype=np.float32),
    }
    if ref_logprobs is not None:
        # the custom loss needs its own mask and the unscaled advantage; only target_tokens and weights
        # travel to the server, the rest stays on the client for the loss function
        inputs["weights"] = np.asarray([0.0] * n_prompt + [scale * k for k in keep], dtype=np.float32)
        inputs["advantages"] = np.asarray([0.0] * n_prompt + [advantage * k for k in keep], dtype=np.float32)
        inputs["ref_logprobs"] = np.asarray([0.0] * n_prompt + list(ref_logprobs), dtype=np.float32)
    return tinker.Datum(model_input=_model_input(tokens[:-1]), loss_fn_inputs=inputs)


def sft_datum(prompt_ids: list[int], response: list[int], scale: float) -> Any:
    """One prompt/response pair for cross_entropy: weight only on the response tokens."""
    import tinker

    tokens = prompt_ids + response
    n_prompt = len(prompt_ids) - 1
    inputs = {
        "target_tokens": np.asarray(tokens[1:], dtype=np.int64),
        "weights": np.asarray([0.0] * n_prompt + [scale] * len(response), dtype=np.float32),
    }
    return tinker.Datum(model_input=_model_input(tokens[:-1]), loss_fn_inputs=inputs)


def ppo_kl_loss(clip_low: float, clip_high: float, kl_coef: float):
    """PPO-clip plus kl_coef x k3 KL to the reference, for forward_backward_custom (one extra pass)."""
    import torch

    def loss_fn(data: list[Any], logprobs_list: list[Any]) -> tuple[Any, dict[str, float]]:
        total = torch.zeros(())
        kl_sum = 0.0
        weight_sum = 0.0
        for datum, logprobs in zip(data, logprobs_list, strict=True):
            inp = datum.loss_fn_inputs
            old = inp["logprobs"].to_torch()
            adv = inp["advantages"].to_torch()
            ref = inp["ref_logprobs"].to_torch()
            weight = inp["weights"].to_torch()
            ratio = torch.exp(logprobs - old)
            pg = -torch.minimum(ratio * adv, torch.clamp(ratio, clip_low, clip_high) * adv)
            delta = ref - logprobs
            # k3 estimator: unbiased and always >= 0 (Schulman), what Trinity calls low_var_kl
            kl = torch.exp(delta) - delta - 1.0
            total = total + ((pg + kl_coef * kl) * weight).sum()
            kl_sum += float((kl.detach() * weight).sum())
            weight_sum += float(weight.sum())
        return total, {"kl": kl_sum / weight_sum if weight_sum else 0.0}

    return loss_fn
