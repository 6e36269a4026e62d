"""The training forward's fused pieces: each gradient against autograd's (gradcheck, float64), with and
without LoRA, and the head's skipping of rows that send no gradient back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rft_runtime.engine import train_ops
from rft_runtime.engine.train_ops import LinearResidual, NormHead, NormLinear, NormSwiGLU, Rotate


def _t(*shape, grad=True):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_norm_linear_gradients(lora, bias):
    h, ln, w = _t(5, 6), _t(6, grad=False), _t(6, 7, grad=False)
    b = _t(7, grad=False) if bias else None
    a_t, b_t = (_t(6, 2), _t(2, 7)) if lora else (None, None)
    assert torch.autograd.gradcheck(lambda *x: NormLinear.apply(x[0], ln, 1e-5, w, b, *x[1:]),
                                    (h, a_t, b_t) if lora else (h, None, None))
    out = NormLinear.apply(h, ln, 1e-5, w, b, a_t, b_t)
    want = F.rms_norm(h, (6,), ln, 1e-5) @ w + (b if bias else 0) + ((F.rms_norm(h, (6,), ln, 1e-5) @ a_t @ b_t)
                                                                   if lora else 0)
    assert torch.allclose(out, want)


def test_rotate_gradients():
    # [B, T, heads, D] against cos / signed sin [B, T, 1, D]: the RoPE of Transformer._rotate
    x = _t(2, 5, 3, 8)
    angles = torch.rand(2, 5, 1, 4, dtype=torch.float64) * 6
    cos = torch.cat([angles.cos(), angles.cos()], -1)
    sin = torch.cat([-angles.sin(), angles.sin()], -1)
    assert torch.autograd.gradcheck(lambda v: Rotate.apply(v, cos, sin), (x,))
    x1, x2 = x[..., :4], x[..., 4:]
    want = torch.cat([x1 * angles.cos() - x2 * angles.sin(), x2 * angles.cos() + x1 * angles.sin()], -1)
    assert torch.allclose(Rotate.apply(x, cos, sin), want)


@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_residual_gradients(lora, bias):
    x, h, w = _t(5, 6), _t(5, 7), _t(6, 7, grad=False)
    b = _t(7, grad=False) if bias else None
    a_t, b_t = (_t(6, 2), _t(2, 7)) if lora else (None, None)
    assert torch.autograd.gradcheck(lambda *v: LinearResidual.apply(v[0], v[1], w, b, *v[2:]),
                                    (x, h, a_t, b_t) if lora else (x, h, None, None))
    want = h + x @ w + (b if bias else 0) + ((x @ a_t @ b_t) if lora else 0)
    assert torch.allclose(LinearResidual.apply(x, h, w, b, a_t, b_t), want)


def _mlp(h, ln, w_gu, bias_gu, a_gu, b_gu, w_d, bias_d, a_d, b_d):
    """The MLP NormSwiGLU computes, written with plain ops (autograd's reference)."""
    xn = F.rms_norm(h, (h.shape[-1],), ln, 1e-5)
    gate_up = xn @ w_gu + (bias_gu if bias_gu is not None else 0) + ((xn @ a_gu @ b_gu) if a_gu is not None else 0)
    gate, up = gate_up.chunk(2, dim=-1)
    act = F.silu(gate) * up
    return h + act @ w_d + (bias_d if bias_d is not None else 0) + ((act @ a_d @ b_d) if a_d is not None else 0)


@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_norm_swiglu_gradients(lora, bias):
    h, ln = _t(5, 3), _t(3, grad=False)
    w_gu, w_d = _t(3, 8, grad=False), _t(4, 3, grad=False)
    bias_gu, bias_d = (_t(8, grad=False), _t(3, grad=False)) if bias else (None, None)
    loras = (_t(3, 2), _t(2, 8), _t(4, 2), _t(2, 3)) if lora else (None,) * 4

    def mine(x, a_gu, b_gu, a_d, b_d):
        return NormSwiGLU.apply(x, ln, 1e-5, w_gu, bias_gu, a_gu, b_gu, w_d, bias_d, a_d, b_d)

    assert torch.autograd.gradcheck(mine, (h, *loras))
    want = _mlp(h, ln, w_gu, bias_gu, loras[0], loras[1], w_d, bias_d, loras[2], loras[3])
    assert torch.allclose(mine(h, *loras), want)


@pytest.mark.parametrize("blocks", ["one", "several"])
def test_norm_swiglu_with_bfloat16_weights_keeps_the_product_in_bfloat16_and_gives_the_float32_gradients(
        blocks, monkeypatch):
    # the bfloat16 route keeps the raw gate/up product and rebuilds gate/up in the backward: its gradients
    # must be those of the float32 model to bfloat16 rounding, for the input and every LoRA factor
    if blocks == "several":  # the backward's gate/up product in row blocks: 16, 16 and 8 of the 40 rows here
        monkeypatch.setattr(train_ops, "MLP_BACK_BLOCK", 16)
    gen = torch.Generator().manual_seed(0)

    h, ln = torch.randn(40, 64, generator=gen, requires_grad=True), torch.ones(64)
    w_gu, w_d = torch.randn(64, 256, generator=gen) * 0.1, torch.randn(128, 64, generator=gen) * 0.1
    bias_gu, bias_d = torch.randn(256, generator=gen) * 0.1, torch.randn(64, generator=gen) * 0.1
    loras = [(torch.randn(*s, generator=gen) * 0.1).requires_grad_() for s in ((64, 4), (4, 256), (128, 4), (4, 64))]
    results = {}
    for name, (wg, wd) in {"float32": (w_gu, w_d),
                           "bfloat16": (w_gu.t().contiguous().bfloat16().t(), w_d.t().contiguous().bfloat16().t())}.items():
        out = NormSwiGLU.apply(h, ln, 1e-5, wg, bias_gu, loras[0], loras[1], wd, bias_d, loras[2], loras[3])
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, 64)).sum(), [h, *loras])
        results[name] = (out.detach(), grads)
    assert torch.allclose(results["bfloat16"][0], results["float32"][0], atol=0.05, rtol=0.02)
    for g16, g32 in zip(results["bfloat16"][1], results["float32"][1], strict=True):
        assert (g16 - g32).norm() / g32.norm() < 0.02
    assert not torch.equal(results["bfloat16"][0], results["float32"][0])  # bfloat16 was really used


@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize("blocks", ["one", "several"])
def test_norm_head_gradients_and_logprobs(lora, blocks, monkeypatch):
    if blocks == "several":  # the head works in blocks of rows: blocks of 2 and 4 of the 6 rows here
        monkeypatch.setattr(train_ops, "HEAD_BLOCK", 2)
        monkeypatch.setattr(train_ops, "HEAD_BACK_BLOCK", 4)
    h, ln, w = _t(6, 5), _t(5, grad=False), _t(5, 9, grad=False)
    a_t, b_t = (_t(5, 2), _t(2, 9)) if lora else (None, None)
    targets = torch.tensor([0, 3, 8, 2, 2, 5])
    logits = F.rms_norm(h, (5,), ln, 1e-5) @ w + ((F.rms_norm(h, (5,), ln, 1e-5) @ a_t @ b_t) if lora else 0)
    want = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(NormHead.apply(h, ln, 1e-5, w, None, a_t, b_t, targets), want)
    assert torch.autograd.gradcheck(lambda x, a, b: NormHead.apply(x, ln, 1e-5, w, None, a, b, targets),
                                    (h, a_t, b_t))
    # rows whose incoming gradient is zero are skipped, and the result is the same as autograd's
    weights = torch.tensor([0.0, 1.0, 0.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    params = [x for x in (h, a_t, b_t) if x is not None]
    mine = torch.autograd.grad((NormHead.apply(h, ln, 1e-5, w, None, a_t, b_t, targets) * weights).sum(), params)
    ref = torch.autograd.grad((want * weights).sum(), params)
    for m, r in zip(mine, ref, strict=True):
        assert torch.allclose(m, r)
    assert torch.equal(mine[0][0], torch.zeros(5, dtype=torch.float64))  # a skipped row gets no gradient


@pytest.mark.parametrize("layout", ["engine", "in-out"])
def test_bfloat16_base_weights_give_the_float32_gradients_to_bfloat16_rounding_at_a_real_vocabulary(layout):
    # 32 rows against a 49152-token head (SmolLM2's): oneDNN's bfloat16 product with a transposed weight died
    # of SIGFPE at this shape and killed the engine in the first GRPO step. The engine's layout (W^T stored,
    # W its transposed view) multiplies two contiguous operands; mm takes another route for a contiguous W
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(32, 64, generator=gen, requires_grad=True)
    ln = torch.ones(64)
    w32 = torch.randn(64, 49152, generator=gen) * 0.05
    targets = torch.randint(0, 49152, (32,), generator=gen)
    w16 = w32.t().contiguous().to(torch.bfloat16).t() if layout == "engine" else w32.to(torch.bfloat16)
    grads = {}
    for name, w in (("float32", w32), ("bfloat16", w16)):
        h.grad = None
        logp = NormHead.apply(h, ln, 1e-6, w, None, None, None, targets)
        logp.sum().backward()
        grads[name] = (logp.detach(), h.grad.clone())
    assert torch.allclose(grads["bfloat16"][0], grads["float32"][0], atol=0.05)
    assert torch.allclose(grads["bfloat16"][1], grads["float32"][1], atol=0.02, rtol=0.02)
    assert not torch.equal(grads["bfloat16"][1], grads["float32"][1])  # bfloat16 was really used
