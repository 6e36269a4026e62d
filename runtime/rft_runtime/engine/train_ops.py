"""Five fused pieces of the training forward, each an autograd Function with a hand-written backward.

Autograd over the plain ops keeps every intermediate for the backward (the normed input of each matmul, the
SiLU output and the gated product, three [tokens, vocab] tensors at the head), about 1.9 MB per token for
SmolLM2-135M; these keep what cannot be recomputed cheaply (0.9 MB per token), so a forward_backward of
twice the tokens fits the same memory, and they make fewer passes over memory:

- NormLinear: rms_norm(h) @ W (+ bias) + LoRA; keeps h and the norm's scale, recomputes the normed input.
- Rotate: RoPE, whose backward is the rotation back.
- LinearResidual: h + x @ W (+ bias) + LoRA, the attention's output projection; keeps x only for LoRA.
- SwiGLUDown: h + (silu(gate) * up) @ W_down (+ bias) + LoRA; keeps the gate/up matmul's output only.
- NormHead: the final norm, the logits (+ LoRA) and each target's logprob; keeps the log-softmax alone and
  turns it into the logits' gradient in place, skipping rows whose gradient is zero (prompt tokens, zero weights).

With bfloat16 base weights (transformer.base_dtype) the forward's products read the oneDNN-packed copies the
engine keeps for decoding (`packed`), and the backward's W^T is a contiguous tensor (the engine stores W^T and
hands W over as its transposed view), so no product takes a transposed bfloat16 operand.

A LoRA pair is (A^T [in, r], scaling * B^T [r, out]) as lora.Adapter.pair gives it; tests/engine/
test_train_ops.py checks every gradient against autograd's with gradcheck.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# rows of the [tokens, vocab] logits handled at a time in the head: bounds the temporaries of log_softmax
HEAD_BLOCK = 128


def mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w as float32; a bfloat16 w (the frozen base weights, see transformer.base_dtype) multiplies x
    rounded to bfloat16, accumulating in float32, and the product comes back rounded to bfloat16."""
    if w.dtype == x.dtype:
        return torch.mm(x, w)
    if w.is_contiguous():
        return torch.mm(x.to(w.dtype), w).float()
    # w is a transposed view (the engine's weights are not: see the module docstring). oneDNN's bfloat16 product
    # with a transposed right-hand side dies of SIGFPE (an integer division by zero) for some shapes, e.g.
    # [32, 49152] @ [576, 49152]^T, a head's backward at a vocabulary of 49152 (torch 2.13, AMX). Both sides
    # contiguous do not, so this takes (w^T @ x^T)^T with x^T written out in bfloat16 (one copy, as the
    # conversion alone would be).
    xt = torch.empty((x.shape[1], x.shape[0]), dtype=w.dtype, device=x.device)
    xt.copy_(x.t())
    return torch.mm(w.t(), xt).t().float()


def _base(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
          packed: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w (+ bias), float32; with `packed` (w's oneDNN-packed copy, see Transformer), the product reads it."""
    if packed is not None:
        out = torch.ops.mkldnn._linear_pointwise(x.to(packed.dtype), packed, None, "none", [], "").float()
        return out if bias is None else out.add_(bias)
    if w.dtype == x.dtype:
        return torch.mm(x, w) if bias is None else torch.addmm(bias, x, w)
    out = mm(x, w)
    return out if bias is None else out.add_(bias)


def _base_residual(h: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                   packed: torch.Tensor | None) -> torch.Tensor:
    """h + x @ w (+ bias), float32 (the add rides on addmm when x and w are both float32)."""
    if packed is None and w.dtype == x.dtype:
        out = torch.addmm(h, x, w)
    else:
        out = _base(x, w, None, packed).add_(h)
    if bias is not None:
        out += bias
    return out


def _rms(h: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(h) * weight, the per-row scale rstd)."""
    return torch.ops.aten._fused_rms_norm(h, [h.shape[-1]], weight, eps)


def _rms_backward(grad: torch.Tensor, h: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """d/dh of rms_norm(h) * weight: rstd * g' - h * rstd^3 * mean(g' * h), g' = grad * weight."""
    gw = grad * weight
    coef = (gw * h).sum(-1, keepdim=True).mul_(rstd.pow(3)).div_(h.shape[-1])
    return torch.addcmul(gw.mul_(rstd), h, coef, value=-1)


def _lora_backward(grad: torch.Tensor, x: Any, xa: torch.Tensor, a_t: torch.Tensor, b_t: torch.Tensor,
                   grad_x: torch.Tensor, need: tuple[bool, bool]) -> tuple[Any, Any]:
    """Adds the LoRA path's share to grad_x in place; returns the gradients of a_t and b_t (x: a tensor or a
    function that recomputes it, called only when a_t's gradient is wanted)."""
    grad_xa = torch.mm(grad, b_t.t())
    grad_x.addmm_(grad_xa, a_t.t())
    grad_a = torch.mm((x() if callable(x) else x).t(), grad_xa) if need[0] else None
    grad_b = torch.mm(xa.t(), grad) if need[1] else None
    return grad_a, grad_b


def _log_softmax_(logits: torch.Tensor) -> None:
    """logits <- log_softmax(logits) over the last dimension, a block of rows at a time (bounded temporaries)."""
    for i in range(0, logits.shape[0], HEAD_BLOCK):
        block = logits[i:i + HEAD_BLOCK]
        block.copy_(torch.log_softmax(block, dim=-1))


class Rotate(torch.autograd.Function):
    """RoPE: x * cos + roll(x, D/2) * sin, with sin already signed ([-sin | +sin], see Transformer._rope). The
    backward is the rotation back, g * cos + roll(g * sin, D/2) = g * cos + roll(g, D/2) * roll(sin, D/2):
    three ops where autograd over the forward's ops takes five."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        ctx.save_for_backward(cos, sin)
        return torch.addcmul(x * cos, torch.roll(x, half, -1), sin)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        cos, sin = ctx.saved_tensors
        half = grad.shape[-1] // 2
        return torch.addcmul(grad * cos, torch.roll(grad, half, -1), torch.roll(sin, half, -1)), None, None


class NormLinear(torch.autograd.Function):
    """rms_norm(h) * ln @ weight (+ bias) + (xn @ a_t) @ b_t (packed: weight's oneDNN-packed copy, read by the
    forward's product)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, ln: torch.Tensor, eps: float, weight: torch.Tensor,
                bias: torch.Tensor | None, a_t: torch.Tensor | None, b_t: torch.Tensor | None,
                packed: torch.Tensor | None = None) -> torch.Tensor:
        xn, rstd = _rms(h, ln, eps)
        out = _base(xn, weight, bias, packed)
        xa = None
        if a_t is not None:
            xa = torch.mm(xn, a_t)
            out.addmm_(xa, b_t)
        ctx.save_for_backward(h, rstd, ln, weight, a_t, b_t, xa)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        h, rstd, ln, weight, a_t, b_t, xa = ctx.saved_tensors
        grad_xn = mm(grad, weight.t())
        grad_a = grad_b = None
        if a_t is not None:
            grad_a, grad_b = _lora_backward(grad, lambda: _rms(h, ln, ctx.eps)[0], xa, a_t, b_t, grad_xn,
                                            (ctx.needs_input_grad[5], ctx.needs_input_grad[6]))
        grad_h = _rms_backward(grad_xn, h, rstd, ln) if ctx.needs_input_grad[0] else None
        return grad_h, None, None, None, None, grad_a, grad_b, None


class LinearResidual(torch.autograd.Function):
    """h + x @ weight (+ bias) + (x @ a_t) @ b_t: the attention's output projection with the residual add."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                a_t: torch.Tensor | None, b_t: torch.Tensor | None,
                packed: torch.Tensor | None = None) -> torch.Tensor:
        out = _base_residual(h, x, weight, bias, packed)
        xa = None
        if a_t is not None:
            xa = torch.mm(x, a_t)
            out.addmm_(xa, b_t)
        ctx.save_for_backward(x if a_t is not None else None, weight, a_t, b_t, xa)  # x: for A's gradient
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, a_t, b_t, xa = ctx.saved_tensors
        grad_x = mm(grad, weight.t())
        grad_a = grad_b = None
        if a_t is not None:
            grad_a, grad_b = _lora_backward(grad, x, xa, a_t, b_t, grad_x,
                                            (ctx.needs_input_grad[4], ctx.needs_input_grad[5]))
        return (grad_x if ctx.needs_input_grad[0] else None, grad if ctx.needs_input_grad[1] else None,
                None, None, grad_a, grad_b, None)


class SwiGLUDown(torch.autograd.Function):
    """h + (silu(gate) * up) @ weight (+ bias) + (act @ a_t) @ b_t, with gate_up = [gate | up]."""

    @staticmethod
    def forward(ctx: Any, gate_up: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                a_t: torch.Tensor | None, b_t: torch.Tensor | None,
                packed: torch.Tensor | None = None) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate).mul_(up)
        out = _base_residual(h, act, weight, bias, packed)
        xa = None
        if a_t is not None:
            xa = torch.mm(act, a_t)
            out.addmm_(xa, b_t)
        ctx.save_for_backward(gate_up, weight, a_t, b_t, xa)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        gate_up, weight, a_t, b_t, xa = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        silu = F.silu(gate)
        grad_act = mm(grad, weight.t())
        grad_a = grad_b = None
        if a_t is not None:
            grad_a, grad_b = _lora_backward(grad, lambda: silu * up, xa, a_t, b_t, grad_act,
                                            (ctx.needs_input_grad[4], ctx.needs_input_grad[5]))
        grad_gate_up = None
        if ctx.needs_input_grad[0]:
            width = gate.shape[-1]
            grad_gate_up = torch.empty_like(gate_up)
            torch.mul(grad_act, silu, out=grad_gate_up[:, width:])
            # silu_backward into a contiguous result, then one copy: written straight into the strided half it
            # ran several times slower (1.3-1.9 ms against 0.2 ms at [350, 1536])
            grad_gate_up[:, :width].copy_(torch.ops.aten.silu_backward(grad_act.mul_(up), gate))
        return grad_gate_up, grad if ctx.needs_input_grad[1] else None, None, None, grad_a, grad_b, None


class NormHead(torch.autograd.Function):
    """log p(target) under logits = rms_norm(h) * ln @ weight (+ bias) + (xn @ a_t) @ b_t, one per row."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, ln: torch.Tensor, eps: float, weight: torch.Tensor,
                bias: torch.Tensor | None, a_t: torch.Tensor | None, b_t: torch.Tensor | None,
                targets: torch.Tensor, packed: torch.Tensor | None = None) -> torch.Tensor:
        xn, rstd = _rms(h, ln, eps)
        logits = _base(xn, weight, bias, packed)
        xa = None
        if a_t is not None:
            xa = torch.mm(xn, a_t)
            logits.addmm_(xa, b_t)
        _log_softmax_(logits)
        logp = logits.gather(-1, targets[:, None]).squeeze(-1)
        ctx.save_for_backward(h, rstd, ln, weight, a_t, b_t, xa, targets)
        ctx.logp = logits  # consumed by the backward, which turns it into the logits' gradient in place
        ctx.eps, ctx.bias, ctx.packed = eps, bias, packed
        return logp

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        h, rstd, ln, weight, a_t, b_t, xa, targets = ctx.saved_tensors
        logp, ctx.logp = ctx.logp, None
        if logp is None:  # a second backward through the same graph (retain_graph): compute them again
            xn = _rms(h, ln, ctx.eps)[0]
            logp = _base(xn, weight, ctx.bias, ctx.packed)
            if a_t is not None:
                logp.addmm_(xa, b_t)
            _log_softmax_(logp)
        rows = grad.nonzero().squeeze(-1)
        if rows.numel() < grad.shape[0]:  # prompt tokens and zero weights send nothing back
            logp, grad, targets = logp[rows], grad[rows], targets[rows]
            xa = xa[rows] if xa is not None else None
        # d logp / d logits = onehot(target) - softmax(logits), times each row's incoming gradient
        for i in range(0, logp.shape[0], HEAD_BLOCK):
            logp[i:i + HEAD_BLOCK].exp_().mul_(-grad[i:i + HEAD_BLOCK, None])
        logp.scatter_add_(-1, targets[:, None], grad[:, None])
        grad_logits = logp
        grad_xn = mm(grad_logits, weight.t())
        grad_a = grad_b = None
        if a_t is not None:
            hr = h[rows] if rows.numel() < h.shape[0] else h
            grad_a, grad_b = _lora_backward(grad_logits, lambda: _rms(hr, ln, ctx.eps)[0], xa, a_t, b_t, grad_xn,
                                            (ctx.needs_input_grad[5], ctx.needs_input_grad[6]))
        grad_h = None
        if ctx.needs_input_grad[0]:
            if rows.numel() < h.shape[0]:
                grad_h = torch.zeros_like(h)
                grad_h[rows] = _rms_backward(grad_xn, h[rows], rstd[rows], ln)
            else:
                grad_h = _rms_backward(grad_xn, h, rstd, ln)
        return grad_h, None, None, None, None, grad_a, grad_b, None, None
