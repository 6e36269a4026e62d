"""Five fused pieces of the training forward, each an autograd Function with a hand-written backward.

Autograd over the plain ops keeps every intermediate for the backward (the normed input of each matmul, the
SiLU output and the gated product, three [tokens, vocab] tensors at the head), about 1.9 MB per token for
SmolLM2-135M; these keep what cannot be recomputed cheaply (0.9 MB per token, 0.6 MB with bfloat16 base
weights), so a forward_backward of twice the tokens or more fits the same memory, and they make fewer passes
over memory:

- NormLinear: rms_norm(h) @ W (+ bias) + LoRA; keeps h and the norm's scale, recomputes the normed input.
- Rotate: RoPE, whose backward is the rotation back.
- LinearResidual: h + x @ W (+ bias) + LoRA, the attention's output projection; keeps x only for LoRA.
- NormSwiGLU: the MLP, h + (silu(gate) * up) @ W_down (+ bias) + LoRA with [gate | up] = rms_norm(h) @ W_gate_up
  (+ bias) + LoRA; keeps h, the norm's scale and the gate/up product (in bfloat16 when the base weights are),
  recomputes the rest.
- NormHead: the final norm, the logits (+ LoRA) and each target's logprob; keeps the log-softmax alone (in
  bfloat16 with bfloat16 base weights) and turns it into the logits' gradient a block of rows at a time,
  skipping rows whose gradient is zero (prompt tokens, zero weights).

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

# rows of the [tokens, vocab] logits handled at a time in the head's forward (product, LoRA, log_softmax) and
# backward (the logits' gradient and its products): bounds their temporaries (for all 932 rows of a
# forward_backward the bfloat16 product alone is 87 MB) and is faster too. SmolLM2-135M on 2 cores, 932 rows: the
# forward's product 132 ms in one piece against 50 ms in blocks of 128, the backward's 119 ms against 65 ms in
# blocks of 256 (oneDNN's bfloat16 kernels slow down past a few hundred rows at these shapes).
HEAD_BLOCK = 128
HEAD_BACK_BLOCK = 256
# rows at a time of the MLP backward's `grad_gate_up @ W_gate_up^T` with bfloat16 weights ([tokens, 2 x
# intermediate] @ [2 x intermediate, hidden]): oneDNN runs this long-reduction product a third slower in one
# piece than in blocks of about 320 rows. SmolLM2-135M, 2 cores, [M, 3072] @ [3072, 576] medians: 3.10 -> 2.03 ms
# at 585 rows, 1.76 -> 1.43 ms at 354, 4.58 -> 3.10 ms at 932 (its other products gain nothing or lose).
MLP_BACK_BLOCK = 320


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


def mm_blocked(x: torch.Tensor, w: torch.Tensor, block: int) -> torch.Tensor:
    """mm(x, w), `block` rows of x at a time when w is bfloat16 (see MLP_BACK_BLOCK)."""
    if w.dtype == x.dtype or x.shape[0] <= block:
        return mm(x, w)
    out = torch.empty((x.shape[0], w.shape[1]), dtype=torch.float32, device=x.device)
    for i in range(0, x.shape[0], block):
        out[i:i + block] = mm(x[i:i + block], w)
    return out


def packed_product(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """x @ W read from W's oneDNN-packed copy (see Transformer), in the copy's dtype (x converted to it)."""
    return torch.ops.mkldnn._linear_pointwise(x.to(packed.dtype), packed, None, "none", [], "")


def _result_dtype(x: torch.Tensor) -> torch.dtype:
    """float32, or x's dtype where that is wider (float64 in the gradchecks)."""
    return torch.promote_types(x.dtype, torch.float32)


def _base(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
          packed: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w (+ bias), float32; with `packed` (w's oneDNN-packed copy, see Transformer), the product reads it."""
    if packed is not None:
        out = packed_product(x, packed).float()
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
    elif packed is not None:
        # the add widens the bfloat16 product itself: one op fewer than .float() then add_, the same sum
        out = torch.add(h, packed_product(x, packed))
    else:
        out = _base(x, w, None, packed).add_(h)
    if bias is not None:
        out += bias
    return out


def _raw_product(x: torch.Tensor, w: torch.Tensor, packed: torch.Tensor | None) -> torch.Tensor:
    """x @ w for a bfloat16 w as the bfloat16 product (x rounded to bfloat16, accumulated in float32)."""
    if packed is not None:
        return packed_product(x, packed)
    if w.is_contiguous():
        return torch.mm(x.to(w.dtype), w)
    return mm(x, w).to(w.dtype)  # mm's result is the bfloat16 product widened: the round trip is exact


def _gate_up(raw: torch.Tensor, bias: torch.Tensor | None, xa: torch.Tensor | None,
             b_t: torch.Tensor | None) -> torch.Tensor:
    """float32 raw (+ bias) + xa @ b_t: the ops NormSwiGLU's forward and backward both take, in this order."""
    out = raw.float()
    if bias is not None:
        out.add_(bias)
    if xa is not None:
        out.addmm_(xa, b_t)
    return out


def _rms(h: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(h) * weight, the per-row scale rstd), bit for bit what F.rms_norm and aten's _fused_rms_norm
    give on a CPU: the same arithmetic in the same order, without the composite's type checks and two copies
    (about 20 dispatched ops against 8). 2 cores: 177 against 220 us at [585, 576], a training chunk's rows;
    13 against 15 us at 8 rows, a decoding step's."""
    rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True).add_(eps))
    return torch.mul(h, rstd).mul_(weight), rstd


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


def _head_log_softmax(xn: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      packed: torch.Tensor | None, xa: torch.Tensor | None, b_t: torch.Tensor | None,
                      targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target) per row, log_softmax(xn @ weight (+ bias) + xa @ b_t) [rows, vocab]), HEAD_BLOCK rows at a
    time: each block's product, LoRA term and log_softmax are done before the next block starts. The target's
    logprob comes from the float32 block; the [rows, vocab] log-softmax the backward needs is kept in the base
    weights' dtype (bfloat16: half the bytes of the largest thing a forward keeps; the backward's product
    takes the logits' gradient in bfloat16 anyway)."""
    dtype = _result_dtype(xn)
    kept_dtype = weight.dtype if weight.dtype not in (torch.float32, torch.float64) else dtype
    kept = torch.empty((xn.shape[0], weight.shape[1]), dtype=kept_dtype, device=xn.device)
    logp = torch.empty(xn.shape[0], dtype=dtype, device=xn.device)
    for i in range(0, xn.shape[0], HEAD_BLOCK):
        rows = xn[i:i + HEAD_BLOCK]
        block = kept[i:i + HEAD_BLOCK] if kept_dtype == dtype else torch.empty((rows.shape[0], kept.shape[1]),
                                                                                dtype=dtype, device=xn.device)
        if packed is not None:
            block.copy_(packed_product(rows, packed))
            if bias is not None:
                block.add_(bias)
        elif weight.dtype == rows.dtype:
            if bias is None:
                torch.mm(rows, weight, out=block)
            else:
                torch.addmm(bias, rows, weight, out=block)
        else:
            block.copy_(_base(rows, weight, bias))
        if xa is not None:
            block.addmm_(xa[i:i + HEAD_BLOCK], b_t)
        logsm = torch.log_softmax(block, dim=-1)
        logp[i:i + HEAD_BLOCK] = logsm.gather(-1, targets[i:i + HEAD_BLOCK, None]).squeeze(-1)
        kept[i:i + HEAD_BLOCK].copy_(logsm)  # one pass: no float32 copy back into the block first
    return logp, kept


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


class NormSwiGLU(torch.autograd.Function):
    """The MLP with its residual add: h + (silu(gate) * up) @ w_down (+ bias) + LoRA, where [gate | up] =
    rms_norm(h) * ln @ w_gate_up (+ bias) + LoRA. With bfloat16 base weights it keeps the gate/up product as
    the bfloat16 the matmul gave (half the bytes of the float32 gate/up, the largest thing a layer keeps) and
    the backward adds the bias and LoRA term back with the forward's own ops, so it sees the same bits."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, ln: torch.Tensor, eps: float, w_gu: torch.Tensor,
                bias_gu: torch.Tensor | None, a_gu: torch.Tensor | None, b_gu: torch.Tensor | None,
                w_down: torch.Tensor, bias_down: torch.Tensor | None, a_down: torch.Tensor | None,
                b_down: torch.Tensor | None, packed_gu: torch.Tensor | None = None,
                packed_down: torch.Tensor | None = None) -> torch.Tensor:
        xn, rstd = _rms(h, ln, eps)
        xa_gu = torch.mm(xn, a_gu) if a_gu is not None else None
        lowp = w_gu.dtype not in (torch.float32, torch.float64)
        if lowp:
            kept = _raw_product(xn, w_gu, packed_gu)
            gate_up = _gate_up(kept, bias_gu, xa_gu, b_gu)
        else:
            gate_up = _base(xn, w_gu, bias_gu)
            if xa_gu is not None:
                gate_up.addmm_(xa_gu, b_gu)
            kept = gate_up
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate).mul_(up)
        out = _base_residual(h, act, w_down, bias_down, packed_down)
        xa_down = None
        if a_down is not None:
            xa_down = torch.mm(act, a_down)
            out.addmm_(xa_down, b_down)
        ctx.save_for_backward(h, rstd, ln, w_gu, bias_gu, a_gu, b_gu, xa_gu, kept, w_down, a_down, b_down, xa_down)
        ctx.eps, ctx.lowp = eps, lowp
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        h, rstd, ln, w_gu, bias_gu, a_gu, b_gu, xa_gu, kept, w_down, a_down, b_down, xa_down = ctx.saved_tensors
        need = ctx.needs_input_grad
        gate_up = _gate_up(kept, bias_gu, xa_gu, b_gu) if ctx.lowp else kept
        gate, up = gate_up.chunk(2, dim=-1)
        silu = F.silu(gate)
        grad_act = mm(grad, w_down.t())
        grad_a_down = grad_b_down = None
        if a_down is not None:
            grad_a_down, grad_b_down = _lora_backward(grad, lambda s=silu, u=up: s * u, xa_down, a_down, b_down, grad_act,
                                                      (need[9], need[10]))
        width = gate.shape[-1]
        grad_gate_up = torch.empty_like(gate_up)
        torch.mul(grad_act, silu, out=grad_gate_up[:, width:])
        # silu_backward into a contiguous result, then one copy: written straight into the strided half it
        # ran several times slower (1.3-1.9 ms against 0.2 ms at [350, 1536])
        grad_gate_up[:, :width].copy_(torch.ops.aten.silu_backward(grad_act.mul_(up), gate))
        del gate_up, gate, up, silu, grad_act
        grad_xn = mm_blocked(grad_gate_up, w_gu.t(), MLP_BACK_BLOCK)
        grad_a_gu = grad_b_gu = None
        if a_gu is not None:
            grad_a_gu, grad_b_gu = _lora_backward(grad_gate_up, lambda: _rms(h, ln, ctx.eps)[0], xa_gu, a_gu, b_gu,
                                                  grad_xn, (need[5], need[6]))
        grad_h = _rms_backward(grad_xn, h, rstd, ln).add_(grad) if need[0] else None
        return (grad_h, None, None, None, None, grad_a_gu, grad_b_gu, None, None, grad_a_down, grad_b_down,
                None, None)


class NormHead(torch.autograd.Function):
    """log p(target) under logits = rms_norm(h) * ln @ weight (+ bias) + (xn @ a_t) @ b_t, one per row."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, ln: torch.Tensor, eps: float, weight: torch.Tensor,
                bias: torch.Tensor | None, a_t: torch.Tensor | None, b_t: torch.Tensor | None,
                targets: torch.Tensor, packed: torch.Tensor | None = None) -> torch.Tensor:
        xn, rstd = _rms(h, ln, eps)
        xa = torch.mm(xn, a_t) if a_t is not None else None
        logp, kept = _head_log_softmax(xn, weight, bias, packed, xa, b_t, targets)
        ctx.save_for_backward(h, rstd, ln, weight, a_t, b_t, xa, targets)
        ctx.kept = kept  # consumed by the backward
        ctx.eps, ctx.bias, ctx.packed = eps, bias, packed
        return logp

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        h, rstd, ln, weight, a_t, b_t, xa, targets = ctx.saved_tensors
        kept, ctx.kept = ctx.kept, None
        if kept is None:  # a second backward through the same graph (retain_graph): compute it again
            kept = _head_log_softmax(_rms(h, ln, ctx.eps)[0], weight, ctx.bias, ctx.packed, xa, b_t, targets)[1]
        # prompt tokens and zero weights send nothing back: only the other rows are worked on
        rows = grad.nonzero().squeeze(-1)
        dtype = _result_dtype(h)
        grad_xn = torch.empty((rows.shape[0], h.shape[1]), dtype=dtype, device=h.device)
        grad_xa = torch.empty((rows.shape[0], a_t.shape[1]), dtype=dtype, device=h.device) if a_t is not None else None
        grad_b = torch.zeros_like(b_t) if a_t is not None and ctx.needs_input_grad[6] else None
        w_t = weight.t()
        for i in range(0, rows.shape[0], HEAD_BACK_BLOCK):
            idx = rows[i:i + HEAD_BACK_BLOCK]
            g = grad[idx]
            # d logp / d logits = onehot(target) - softmax(logits), times each row's incoming gradient
            block = kept[idx].to(dtype).exp_().mul_(-g[:, None])
            block.scatter_add_(-1, targets[idx, None], g[:, None])
            grad_xn[i:i + HEAD_BACK_BLOCK] = mm(block, w_t)
            if a_t is not None:
                torch.mm(block, b_t.t(), out=grad_xa[i:i + HEAD_BACK_BLOCK])
                if grad_b is not None:
                    grad_b.addmm_(xa[idx].t(), block)
            del block
        del kept
        grad_a = None
        if a_t is not None:
            grad_xn.addmm_(grad_xa, a_t.t())
            if ctx.needs_input_grad[5]:
                grad_a = torch.mm(_rms(h[rows], ln, ctx.eps)[0].t(), grad_xa)
        grad_h = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.zeros_like(h)
            grad_h[rows] = _rms_backward(grad_xn, h[rows], rstd[rows], ln)
        return grad_h, None, None, None, None, grad_a, grad_b, None, None
