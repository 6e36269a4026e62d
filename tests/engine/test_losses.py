"""The loss formulas against numbers worked out by hand on a three-token example."""

from __future__ import annotations

import math

import pytest
import torch

from rft_runtime.engine import losses

# logp (trained policy), q (sampler) and A per token; ratios r = exp(logp - q) = [e^0.5, 1, e^-0.5]
LOGP = [-1.0, -2.0, -0.5]
Q = [-1.5, -2.0, 0.0]
ADV = [1.0, -2.0, 3.0]
R = [math.exp(0.5), 1.0, math.exp(-0.5)]


def _run(name: str, config: dict | None = None, weights: list[float] | None = None) -> tuple[float, list[float]]:
    logp = torch.tensor(LOGP, requires_grad=True)
    inputs = {"logprobs": torch.tensor(Q), "advantages": torch.tensor(ADV)}
    if weights is not None:
        inputs = {"weights": torch.tensor(weights)}
    loss = losses.token_losses(name, logp, inputs, config or {}).sum()
    loss.backward()
    return float(loss.detach()), logp.grad.tolist()


def test_cross_entropy_is_the_weighted_negative_logprob_sum():
    loss, grad = _run("cross_entropy", weights=[1.0, 0.0, 2.0])
    assert loss == pytest.approx(1.0 + 0.0 + 1.0)  # -(1*-1 + 0*-2 + 2*-0.5)
    assert grad == pytest.approx([-1.0, 0.0, -2.0])


def test_importance_sampling_weights_each_advantage_by_the_ratio():
    loss, grad = _run("importance_sampling")
    assert loss == pytest.approx(-(R[0] * 1 + R[1] * -2 + R[2] * 3))
    # d/dlogp of -r*A is -r*A
    assert grad == pytest.approx([-R[0] * 1, -R[1] * -2, -R[2] * 3])


def test_ppo_clips_the_ratio_only_where_that_lowers_the_objective():
    loss, grad = _run("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})
    # token 0: r=1.6487, A=1 -> min(1.6487, 1.2) = 1.2, clipped, no gradient
    # token 1: r=1, A=-2 -> -2, inside the range, gradient -r*A = 2
    # token 2: r=0.6065, A=3 -> min(1.8196, 0.8*3=2.4) = 1.8196, unclipped, gradient -r*A
    assert loss == pytest.approx(-(1.2 - 2.0 + R[2] * 3))
    assert grad == pytest.approx([0.0, 2.0, -R[2] * 3])


def test_ppo_defaults_are_0_8_and_1_2():
    assert _run("ppo") == _run("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})


def test_cispo_clips_the_weight_but_keeps_every_gradient():
    loss, grad = _run("cispo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})
    w = [1.2, 1.0, 0.8]  # clip(r, 0.8, 1.2)
    assert loss == pytest.approx(-sum(wi * a * lp for wi, a, lp in zip(w, ADV, LOGP, strict=True)))
    assert grad == pytest.approx([-wi * a for wi, a in zip(w, ADV, strict=True)])


def test_zero_advantage_masks_a_token():
    logp = torch.tensor([-1.0, -1.0], requires_grad=True)
    inputs = {"logprobs": torch.tensor([-3.0, -3.0]), "advantages": torch.tensor([0.0, 1.0])}
    for name in ("importance_sampling", "ppo", "cispo"):
        per_token = losses.token_losses(name, logp, inputs, {})
        assert float(per_token[0].detach()) == 0.0


def test_unknown_loss_and_bad_clip_bounds_are_refused():
    with pytest.raises(losses.LossInputError, match="unknown loss_fn 'dpo'"):
        losses.check_loss("dpo", {})
    with pytest.raises(losses.LossInputError, match="clip_low_threshold"):
        losses.check_loss("ppo", {"clip_low_threshold": 1.5, "clip_high_threshold": 1.2})


def test_inputs_of_the_wrong_length_are_refused():
    with pytest.raises(losses.LossInputError, match="has 2 entries but model_input has 3"):
        losses.check_inputs("cross_entropy", 3, {"target_tokens": [1, 2, 3], "weights": [1, 1]}, 0)
    with pytest.raises(losses.LossInputError, match="needs loss_fn_inputs\\['advantages'\\]"):
        losses.check_inputs("ppo", 2, {"target_tokens": [1, 2], "logprobs": [0, 0]}, 0)
