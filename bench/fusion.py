"""What fusing the engine's small ops would buy: one decoder layer of SmolLM2-135M's shapes, timed four ways.

    python bench/fusion.py [--iters 9] [--rounds 3] [--rank 16]

The engine runs eager PyTorch; its training layer is train_ops' autograd Functions (`NormLinear`, `Rotate`,
SDPA, `LinearResidual`, `NormSwiGLU`), its decoding step plain ops between oneDNN-packed bfloat16 products.
This times, on one layer with random weights (bfloat16 base, a float32 rank-16 LoRA on every product):

- training, forward + backward of 5 x 117 and 3 x 118 tokens (a 932-token forward_backward's two chunks):
  1. the engine's train_ops layer, eager;
  2. autograd over the same computation in plain ops, eager;
  3. (2) through `torch.compile` (inductor, dynamic shapes; needs a C++ compiler), with its compile time;
  4. (2) with bfloat16 activations (the residual stream stays float32), eager;
- decoding, the 30 layers of a step (each with weights of its own, so products stream them from memory as
  in the engine) at 8 rows against an 84-column KV cache, eager and through `torch.compile` (the packed
  product wrapped as a custom op, which inductor calls as it is). The embedding and the head are left out.

Rounds alternate the variants; it prints medians, each variant's ratio to the engine's own, and the largest
difference of the compiled outputs from eager (the same computation, rounded differently). Compile times
are cold: the run keeps its compiled kernels in a cache directory of its own. Figures from this
machine are in runtime/rft_runtime/engine/README.md (Speed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

# a cache of compiled kernels of its own, so the compile times are what a fresh process on a fresh machine (a new
# pod) pays; removed at the end
CACHE = tempfile.mkdtemp(prefix="rft-bench-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = CACHE

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rft_runtime.engine import train_ops as T  # noqa: E402
from rft_runtime.engine.memory import keep_freed  # noqa: E402

# SmolLM2-135M
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, EPS = 576, 9, 3, 64, 1536, 1e-5
BF16 = torch.bfloat16


@torch.library.custom_op("rft_bench::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """train_ops.packed_product as an op inductor calls without looking inside (it lowers oneDNN's linear only
    for weights that are constants of the graph)."""
    return T.packed_product(x, packed)


@packed_linear.register_fake
def _(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], packed.shape[0]), dtype=packed.dtype)


class Layer:
    """One layer's weights: bfloat16 base ([out, in], its [in, out] view and oneDNN-packed copy) and LoRA."""

    def __init__(self, rank: int):
        g = torch.Generator().manual_seed(0)
        outs = {"qkv": (HEADS + 2 * KV_HEADS) * HEAD_DIM, "o": HIDDEN, "gu": 2 * INTER, "down": HIDDEN}
        ins = {"qkv": HIDDEN, "o": HIDDEN, "gu": HIDDEN, "down": INTER}
        ranks = {"qkv": 3 * rank, "o": rank, "gu": 2 * rank, "down": rank}  # fused slots: one rank per part
        self.w = {k: (torch.randn(outs[k], ins[k], generator=g) * 0.02).to(BF16) for k in outs}
        self.packed = {k: torch.ops.mkldnn._reorder_linear_weight(w, 16) for k, w in self.w.items()}
        self.w_t = {k: w.t().contiguous() for k, w in self.w.items()}
        self.lora = {k: ((torch.randn(ins[k], ranks[k], generator=g) * 0.02).requires_grad_(),
                         (torch.randn(ranks[k], outs[k], generator=g) * 0.02).requires_grad_()) for k in outs}
        self.lora_bf16 = {k: (a.detach().to(BF16).requires_grad_(), b.detach().to(BF16).requires_grad_())
                          for k, (a, b) in self.lora.items()}
        self.ln1, self.ln2 = torch.rand(HIDDEN, generator=g) + 0.5, torch.rand(HIDDEN, generator=g) + 0.5


def rope(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin ([-sin | +sin], as the engine keeps them) for positions [T], shaped [1, T, 1, D]."""
    inv = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
    ang = torch.outer(positions.float(), inv)
    ang = torch.cat([ang, ang], -1)
    sign = torch.cat([-torch.ones(HEAD_DIM // 2), torch.ones(HEAD_DIM // 2)])
    return ang.cos()[None, :, None], (ang.sin() * sign)[None, :, None]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, t = q.shape[0], q.shape[1]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                         enable_gqa=True)
    return out.transpose(1, 2).reshape(b * t, HEADS * HEAD_DIM)


def engine_layer(L: Layer, h: torch.Tensor, b: int, t: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The engine's training layer (Transformer.logprobs' loop body)."""
    qkv = T.NormLinear.apply(h, L.ln1, EPS, L.w["qkv"].t(), None, *L.lora["qkv"], L.packed["qkv"])
    qk, v = qkv.split([(HEADS + KV_HEADS) * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    q, k = T.Rotate.apply(qk.reshape(b, t, HEADS + KV_HEADS, HEAD_DIM), cos, sin).split([HEADS, KV_HEADS], dim=-2)
    attn = attend(q, k, v.reshape(b, t, KV_HEADS, HEAD_DIM).contiguous())
    h = T.LinearResidual.apply(attn, h, L.w["o"].t(), None, *L.lora["o"], L.packed["o"])
    return T.NormSwiGLU.apply(h, L.ln2, EPS, L.w["gu"].t(), None, *L.lora["gu"], L.w["down"].t(), None,
                              *L.lora["down"], L.packed["gu"], L.packed["down"])


def plain_layer(L: Layer, h: torch.Tensor, b: int, t: int, cos: torch.Tensor, sin: torch.Tensor,
                low: bool = False) -> torch.Tensor:
    """The same layer in plain ops for autograd (and torch.compile); `low`: bfloat16 activations."""
    lora = L.lora_bf16 if low else L.lora

    def lin(x: torch.Tensor, k: str) -> torch.Tensor:
        a, bb = lora[k]
        if low:
            return torch.mm(x, L.w_t[k]) + (x @ a) @ bb
        return torch.mm(x.to(BF16), L.w_t[k]).float() + (x @ a) @ bb

    def norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = F.rms_norm(x, (HIDDEN,), w, EPS)
        return out.to(BF16) if low else out

    c, s = (cos.to(BF16), sin.to(BF16)) if low else (cos, sin)
    qk, v = lin(norm(h, L.ln1), "qkv").split([(HEADS + KV_HEADS) * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    qk = qk.reshape(b, t, HEADS + KV_HEADS, HEAD_DIM)
    q, k = (qk * c + torch.roll(qk, HEAD_DIM // 2, -1) * s).split([HEADS, KV_HEADS], dim=-2)
    h = h + lin(attend(q, k, v.reshape(b, t, KV_HEADS, HEAD_DIM)), "o")
    gate, up = lin(norm(h, L.ln2), "gu").chunk(2, dim=-1)
    return h + lin(F.silu(gate) * up, "down")


def decode_layer(h: torch.Tensor, ln1: torch.Tensor, ln2: torch.Tensor, p_qkv: torch.Tensor, p_o: torch.Tensor,
                 p_gu: torch.Tensor, p_down: torch.Tensor, qa: torch.Tensor, qb: torch.Tensor, oa: torch.Tensor,
                 ob: torch.Tensor, ga: torch.Tensor, gb: torch.Tensor, da: torch.Tensor, db: torch.Tensor,
                 k_col: torch.Tensor, v_col: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, product: Callable[..., torch.Tensor]) -> torch.Tensor:
    """One layer of Transformer.step (8 rows, no mask): q/k/v, RoPE, the cache write, attention over the cache,
    the output projection and the MLP, each product with its LoRA term."""
    r, qk_width = h.shape[0], (HEADS + KV_HEADS) * HEAD_DIM
    x = T._rms(h, ln1, EPS)[0]
    qkv = product(x, p_qkv).float().addmm_(x @ qa, qb)
    qk = qkv[:, :qk_width].view(r, HEADS + KV_HEADS, HEAD_DIM)
    qk = torch.addcmul(qk * cos, torch.roll(qk, HEAD_DIM // 2, -1), sin)
    k_col.copy_(qk[:, HEADS:])
    v_col.copy_(qkv[:, qk_width:].view(r, KV_HEADS, HEAD_DIM))
    qg = torch.mul(qk[:, :HEADS], HEAD_DIM ** -0.5).view(r * KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
    attn = torch.bmm(torch.softmax(torch.bmm(qg, keys.transpose(1, 2)), dim=-1), values).view(r, HIDDEN)
    h = torch.add(h, product(attn, p_o)).addmm_(attn @ oa, ob)
    x = T._rms(h, ln2, EPS)[0]
    gate, up = product(x, p_gu).float().addmm_(x @ ga, gb).chunk(2, dim=-1)
    act = F.silu(gate).mul_(up)
    return torch.add(h, product(act, p_down)).addmm_(act @ da, db)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def report(title: str, times: dict[str, list[float]], base: str) -> None:
    print(f"\n{title}")
    ref = statistics.median(times[base])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<44}{1000 * med:9.2f} ms   {med / ref:5.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=9, help="timed calls per variant per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, the variants alternating within each")
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    keep_freed()  # as the engine process does: freed memory is reused, not page-faulted back in
    torch.manual_seed(0)
    L = Layer(args.rank)
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        print("no C++ compiler on PATH: the torch.compile variants are left out")

    # ---- training
    def fb(layer_fn: Callable[..., torch.Tensor], b: int, t: int) -> Callable[[], object]:
        cos, sin = rope(torch.arange(t))
        h = torch.randn(b * t, HIDDEN, requires_grad=True)
        g = torch.randn(b * t, HIDDEN) * 0.01

        params = [p for pair in (*L.lora.values(), *L.lora_bf16.values()) for p in pair]

        def run() -> None:
            for p in (h, *params):
                p.grad = None  # as after the engine's optim_step: no accumulation into earlier gradients
            layer_fn(L, h, b, t, cos, sin).backward(g)
        return run

    variants: dict[str, Callable[..., torch.Tensor]] = {
        "engine (train_ops), eager": engine_layer,
        "autograd over plain ops, eager": plain_layer,
        "plain ops, bfloat16 activations, eager": lambda *a: plain_layer(*a, low=True),
    }
    if compiler:
        compiled = torch.compile(plain_layer, dynamic=True)
        t0 = time.perf_counter()
        for b, t in ((5, 117), (3, 118)):
            fb(compiled, b, t)()
        print(f"torch.compile of the training layer, both shapes: {time.perf_counter() - t0:.1f} s to compile")
        variants["plain ops through torch.compile"] = compiled
        cos, sin = rope(torch.arange(117))
        h = torch.randn(5 * 117, HIDDEN)
        with torch.no_grad():
            diff = (compiled(L, h, 5, 117, cos, sin) - plain_layer(L, h, 5, 117, cos, sin)).abs().max().item()
        print(f"  largest |compiled - eager| of the layer's output: {diff:.3g}")
    for b, t in ((5, 117), (3, 118)):
        runs = {name: fb(fn, b, t) for name, fn in variants.items()}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for rnd in range(args.rounds):
            order = list(runs.items())
            for name, run in order if rnd % 2 == 0 else reversed(order):
                run()  # warm
                times[name] += [timed(run) for _ in range(args.iters)]
        report(f"training layer, forward + backward, {b} x {t} tokens (medians; ratio to the engine's)", times,
               "engine (train_ops), eager")

    # ---- decoding: a whole step's 30 layers, each with weights of its own, so that every product streams its
    # weights from memory as in the engine (one layer looped on its own would find them in the caches)
    rows, n, depth = 8, 84, 30
    cos, sin = rope(torch.full((rows,), n - 1))
    cos, sin = cos[0], sin[0]  # [rows, 1, D]
    stack = []
    for i in range(depth):
        g = torch.Generator().manual_seed(i + 1)
        packed = [torch.ops.mkldnn._reorder_linear_weight(w.clone().normal_(0, 0.02, generator=g).to(BF16), 16)
                  for w in (L.w["qkv"].float(), L.w["o"].float(), L.w["gu"].float(), L.w["down"].float())]
        lora = [t.detach().clone().normal_(0, 0.02, generator=g) for k in ("qkv", "o", "gu", "down")
                for t in L.lora[k]]
        ck, cv = torch.randn(rows * KV_HEADS, n, HEAD_DIM), torch.randn(rows * KV_HEADS, n, HEAD_DIM)
        cols = (ck[:, n - 1].view(rows, KV_HEADS, HEAD_DIM), cv[:, n - 1].view(rows, KV_HEADS, HEAD_DIM))
        stack.append((L.ln1, L.ln2, *packed, *lora, *cols, ck, cv, cos, sin))
    h8 = torch.randn(rows, HIDDEN)

    def step(layer_fn: Callable[..., torch.Tensor], product: Callable[..., torch.Tensor]) -> torch.Tensor:
        h = h8
        for weights in stack:
            h = layer_fn(h, *weights, product)
        return h

    steps: dict[str, Callable[[], object]] = {"engine's step ops, eager": lambda: step(decode_layer, T.packed_product)}
    if compiler:
        cdec = torch.compile(decode_layer, dynamic=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            out_c = step(cdec, packed_linear)
        print(f"\ntorch.compile of a decoding step's layer: {time.perf_counter() - t0:.1f} s to compile")
        with torch.no_grad():
            diff = (out_c - step(decode_layer, T.packed_product)).abs().max().item()
        print(f"  largest |compiled - eager| after {depth} layers: {diff:.3g}")
        steps["the same ops through torch.compile"] = lambda: step(cdec, packed_linear)
    times = {name: [] for name in steps}
    with torch.no_grad():
        for rnd in range(args.rounds):
            order = list(steps.items())
            for name, run in order if rnd % 2 == 0 else reversed(order):
                run()
                times[name] += [timed(run) for _ in range(3 * args.iters)]
    report(f"decoding, the layers of one step ({depth}, weights of their own), {rows} rows, {n}-column cache "
           "(medians)", times, "engine's step ops, eager")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        shutil.rmtree(CACHE, ignore_errors=True)
