"""The decoder the engine runs: a Llama-family model (llama, qwen2, qwen3, mistral) taken out of its Hugging
Face module once and run by a forward of our own.

Why not the Hugging Face module: on a CPU the model's matmuls are small, so per-op overhead decides the speed.
Here q/k/v and gate/up are one matmul each, weights are stored transposed ([in, out], the layout the BLAS
reads fastest for the few rows of a decoding step), a LoRA adapter costs two small matmuls per fused matmul
(lora.py), the residual adds ride on the matmuls (addmm), decoding writes into a preallocated KV cache, and
training computes the loss from the real tokens' logits only, with one fused cross-entropy.
`tests/engine/test_transformer.py` checks every architecture's logits against the Hugging Face module's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig

from rft_runtime.engine.errors import EngineError
from rft_runtime.engine.lora import Adapter, Target
from rft_runtime.engine.train_ops import (
    LinearResidual,
    NormHead,
    NormLinear,
    NormSwiGLU,
    Rotate,
    _rms,
    mm,
    packed_product,
)
from rft_runtime.engine.weights import Weights

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "mistral")
Pairs = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Layer:
    """One decoder layer's weights; matmul weights are [in, out]."""

    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None
    qk_norm: torch.Tensor | None  # qwen3: per-head RMSNorm weights of q and k, [heads + kv_heads, head_dim]
    window: int | None  # sliding-window attention: keys within this many positions
    # oneDNN-packed copies of the matmuls for decoding steps (see Transformer.__init__), else None
    qkv_packed: torch.Tensor | None = None
    gate_up_packed: torch.Tensor | None = None
    o_packed: torch.Tensor | None = None
    down_packed: torch.Tensor | None = None


@dataclass
class KVCache:
    """Keys and values of every layer for a batch of rows, [layers, rows, kv_heads, capacity, head_dim]; the
    first `length` positions are filled (rows are left-padded to a common length)."""

    k: torch.Tensor
    v: torch.Tensor
    length: int

    @property
    def capacity(self) -> int:
        """Positions the cache holds before it must grow."""
        return self.k.shape[3]


def _pair(pairs: Pairs, slot: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return pairs.get(slot) or (None, None)


def _fused(weights: list[torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[out, in] weights side by side as one [in, sum(out)] weight: contiguous in float32 (the layout the BLAS
    reads fastest for the few rows of a decoding step), else the transposed view of a contiguous
    [sum(out), in] tensor (see Transformer.__init__)."""
    return _layout(torch.cat(weights) if len(weights) > 1 else weights[0], device, dtype)


def _layout(w_out_in: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """An [out, in] weight as the engine keeps it, an [in, out] tensor (see _fused)."""
    if dtype == torch.float32:
        return w_out_in.to(device, dtype).t().contiguous()
    return w_out_in.to(device, dtype).contiguous().t()


class Rotary:
    """RoPE as the config names it: inverse frequencies from transformers' own table of RoPE variants, without
    importing the model's modeling module (137 MB of resident memory for what is a few lines)."""

    def __init__(self, cfg: Any, device: torch.device):
        # with the first model: the module builds transformers' RoPE table
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        params = getattr(cfg, "rope_parameters", None) or {"rope_type": "default",
                                                            "rope_theta": getattr(cfg, "rope_theta", 10000.0)}
        rope_type = params.get("rope_type", "default")
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if rope_type == "default":
            inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
            self.scaling = 1.0
        elif rope_type == "longrope":  # switches factors by sequence length: a variant none of ours uses
            raise EngineError(f"rope_type {rope_type!r} is not supported by the local engine")
        else:
            # "dynamic" changes its frequencies only past max_position_embeddings, which the engine never reaches
            inv_freq, self.scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg, device)
        self.inv_freq = inv_freq.to(device=device, dtype=torch.float32)

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [..., head_dim] for positions [...]."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.scaling, emb.sin() * self.scaling


BASE_DTYPE_ENV = "RFT_ENGINE_BASE_DTYPE"


# models smaller than this keep float32 weights by default: their products are too small for bfloat16 to pay
# (the tiny quickstart model: 80 s in bfloat16 against 66 s in float32)
BF16_MIN_PARAMS = 20_000_000


def base_dtype(device: torch.device, params: int) -> torch.dtype:
    """The dtype the frozen base model's matmul weights are kept and multiplied in: RFT_ENGINE_BASE_DTYPE
    (float32 or bfloat16), else bfloat16 for a model of at least BF16_MIN_PARAMS weights on a CPU that
    multiplies it natively (AVX512-BF16 / AMX), and float32 otherwise (CUDA included: untested here)."""
    choice = os.environ.get(BASE_DTYPE_ENV, "").strip().lower() or "auto"
    if choice not in ("auto", "float32", "bfloat16"):
        raise EngineError(f"{BASE_DTYPE_ENV}={choice!r}: use auto, float32 or bfloat16")
    if choice == "auto":
        native = device.type == "cpu" and bool(torch.backends.mkldnn.is_available()
                                                and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return torch.bfloat16 if native and params >= BF16_MIN_PARAMS else torch.float32
    return torch.bfloat16 if choice == "bfloat16" else torch.float32


def config_params(cfg: Any) -> int:
    """The matmul weights a Llama-family config describes (embedding counted once), before loading them."""
    hidden, layers = int(cfg.hidden_size), int(cfg.num_hidden_layers)
    heads = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    per_layer = hidden * (2 * heads + 2 * kv) * head_dim + 3 * hidden * int(cfg.intermediate_size)
    return int(cfg.vocab_size) * hidden + layers * per_layer


class Transformer:
    """The weights of one causal LM and the three passes over them: training forward, prefill, decode step."""

    def __init__(self, model_dir: Path, device: torch.device):
        cfg = AutoConfig.from_pretrained(str(model_dir))
        arch = getattr(cfg, "model_type", "unknown")
        if arch not in SUPPORTED_ARCHS:
            raise EngineError(f"{model_dir}: model_type {arch!r} is not supported by the local engine "
                              f"(supported: {', '.join(SUPPORTED_ARCHS)})")
        act = getattr(cfg, "hidden_act", "silu")
        if act != "silu":
            raise EngineError(f"{model_dir}: hidden_act {act!r} is not supported by the local engine (only silu)")
        self.config = cfg
        self.arch = arch
        self.device = device
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.hidden = cfg.hidden_size
        self.eps = float(cfg.rms_norm_eps)
        self.vocab = cfg.vocab_size
        self.rotary = Rotary(cfg, device)
        # A decoding step multiplies a few rows by every weight, so its speed is the speed the weights stream
        # from memory. oneDNN's packed layout streams the wide ones (q/k/v, gate/up, lm_head) 1.6-1.7x faster
        # than the BLAS reads [in, out] (8 rows, one thread; training-sized matmuls gain nothing), so decoding
        # keeps packed copies of those: 390 MB more for SmolLM2-135M. CPU builds with oneDNN only.
        self.pack = (device.type == "cpu" and torch.backends.mkldnn.is_available()
                     and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
        # On a CPU with native bfloat16 (AVX512-BF16 / AMX) the frozen base weights are kept in bfloat16 and
        # multiplied in it (accumulated in float32, the product rounded to bfloat16): half the bytes a decoding
        # step streams, 3-5x the matmul rate of float32 for training-sized products, half the memory.
        # Activations, norms, attention, the KV cache, the LoRA weights and their products, gradients and the
        # optimizer stay float32; a base matmul's input and output are rounded to bfloat16, as mixed-precision
        # training on a GPU does. RFT_ENGINE_BASE_DTYPE=float32 keeps
        # everything in float32. With bfloat16, o and down are packed for decoding too, the training forward's
        # products read the packed copies as well, and the plain weights are stored as W^T [out, in] (what the
        # backward multiplies by: grad @ W^T with both operands contiguous) and handed around as their
        # transposed views W [in, out]; oneDNN's bfloat16 product with a transposed operand was 1.5-2.4x slower
        # through a copy, and without one it dies of SIGFPE at some shapes (train_ops.mm).
        self.base_dtype = base_dtype(device, config_params(cfg))
        weights = Weights(Path(model_dir))
        self.targets: list[Target] = []
        self.layers = [self._take_layer(i, weights, cfg) for i in range(cfg.num_hidden_layers)]
        tied = "lm_head.weight" not in weights or bool(getattr(cfg, "tie_word_embeddings", False))
        head = weights.get("model.embed_tokens.weight" if tied else "lm_head.weight")
        self.lm_head = _layout(head, device, self.base_dtype)  # [hidden, vocab]
        del head
        self.lm_head_bias = weights.get("lm_head.bias").to(device) if "lm_head.bias" in weights else None
        self.embed = self.lm_head.t() if tied else weights.get("model.embed_tokens.weight").to(device, self.base_dtype)
        # the training forward reads the packed copies (bfloat16: the plain weights are transposed views)
        self.train_packed = self.pack and self.base_dtype != torch.float32
        self.norm = weights.get("model.norm.weight").to(device)
        self.lm_head_packed = self._packed(self.lm_head)
        self.targets.append(Target("lm_head", "unembed", "lm_head", self.hidden, self.vocab))
        self.groups: dict[str, list[str]] = {"attn": [], "mlp": [], "unembed": []}
        for t in self.targets:
            self.groups[t.group].append(t.path)
        rot = torch.ones(self.head_dim, device=device)
        rot[: self.head_dim // 2] = -1
        self._rot_sign = rot

    def _take_layer(self, i: int, weights: Weights, cfg: Any) -> Layer:
        prefix = f"model.layers.{i}"
        dev = self.device

        def linears(names: list[str], group: str, slot: str) -> tuple[torch.Tensor, torch.Tensor | None]:
            """The named [out, in] weights fused into one [in, sum(out)] weight, and their biases."""
            ws = [weights.get(f"{prefix}.{n}.weight") for n in names]
            for n, w in zip(names, ws, strict=True):
                self.targets.append(Target(f"{prefix}.{n}", group, slot, w.shape[1], w.shape[0]))
            bias = None
            if any(f"{prefix}.{n}.bias" in weights for n in names):
                bias = torch.cat([weights.get(f"{prefix}.{n}.bias") if f"{prefix}.{n}.bias" in weights
                                  else torch.zeros(w.shape[0]) for n, w in zip(names, ws, strict=True)]).to(dev)
            return _fused(ws, dev, self.base_dtype), bias

        qkv, qkv_bias = linears(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "attn", f"{i}.qkv")
        o, o_bias = linears(["self_attn.o_proj"], "attn", f"{i}.o")
        gate_up, gate_up_bias = linears(["mlp.gate_proj", "mlp.up_proj"], "mlp", f"{i}.gate_up")
        down, down_bias = linears(["mlp.down_proj"], "mlp", f"{i}.down")
        qk_norm = None
        if f"{prefix}.self_attn.q_norm.weight" in weights:
            qk_norm = torch.cat([weights.get(f"{prefix}.self_attn.q_norm.weight").expand(self.heads, -1),
                                 weights.get(f"{prefix}.self_attn.k_norm.weight").expand(self.kv_heads, -1)])
            qk_norm = qk_norm.contiguous().to(dev)
        window = getattr(cfg, "sliding_window", None)
        if self.arch != "mistral":  # qwen2/qwen3: only the layers their layer_types mark as sliding
            layer_types = getattr(cfg, "layer_types", None) or []
            window = window if i < len(layer_types) and layer_types[i] == "sliding_attention" else None
        return Layer(
            ln1=weights.get(f"{prefix}.input_layernorm.weight").to(dev),
            ln2=weights.get(f"{prefix}.post_attention_layernorm.weight").to(dev),
            qkv=qkv, qkv_bias=qkv_bias, o=o, o_bias=o_bias, gate_up=gate_up, gate_up_bias=gate_up_bias,
            down=down, down_bias=down_bias, qk_norm=qk_norm, window=int(window) if window else None,
            qkv_packed=self._packed(qkv), gate_up_packed=self._packed(gate_up),
            o_packed=self._packed(o) if self.base_dtype != torch.float32 else None,
            down_packed=self._packed(down) if self.base_dtype != torch.float32 else None,
        )

    def _packed(self, weight: torch.Tensor) -> torch.Tensor | None:
        """The oneDNN-packed copy of an [in, out] weight for decoding, or None without oneDNN."""
        if not self.pack:
            return None
        return torch.ops.mkldnn._reorder_linear_weight(weight.t().contiguous(), 16)

    def parameter_count(self) -> int:
        """Weights in the model (the tied embedding counted once)."""
        n = self.lm_head.numel() + self.norm.numel()
        if self.embed.data_ptr() != self.lm_head.data_ptr():
            n += self.embed.numel()
        for layer in self.layers:
            n += sum(x.numel() for x in (layer.ln1, layer.ln2, layer.qkv, layer.o, layer.gate_up, layer.down))
        return n

    # ------------------------------------------------------------------ building blocks

    @staticmethod
    def _linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                pair: tuple[torch.Tensor, torch.Tensor] | None, residual: torch.Tensor | None = None,
                packed: torch.Tensor | None = None) -> torch.Tensor:
        """x @ w (+ bias) (+ residual) + x @ A^T @ (s B)^T; the additions ride on addmm. With `packed` (no
        gradient), the base product comes from the oneDNN-packed copy of w (float32 or bfloat16; the result
        is float32)."""
        if packed is not None:
            if packed.dtype == x.dtype:
                out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
                if residual is not None:
                    out.add_(residual)
            else:
                raw = packed_product(x, packed)
                if bias is None and residual is not None:
                    out = torch.add(residual, raw)  # widened by the add itself: one op fewer, the same sum
                else:
                    out = raw.float()
                    if bias is not None:
                        out.add_(bias)
                    if residual is not None:
                        out.add_(residual)
            if pair is not None:
                out.addmm_(torch.mm(x, pair[0]), pair[1])
            return out
        if w.dtype != x.dtype:
            out = mm(x, w)
            if residual is not None:
                out = out + residual
            if bias is not None:
                out = out + bias
        elif residual is not None:
            out = torch.addmm(residual, x, w)
            if bias is not None:
                out = out + bias
        elif bias is not None:
            out = torch.addmm(bias, x, w)
        else:
            out = torch.mm(x, w)
        if pair is not None:
            out = torch.addmm(out, torch.mm(x, pair[0]), pair[1])
        return out

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for positions [..., T] (the model's own rotary module, so every RoPE variant
        the config names is honoured), shaped to broadcast over heads."""
        cos, sin = self.rotary(positions)
        return cos.unsqueeze(-2), (sin * self._rot_sign).unsqueeze(-2)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x * cos + rotate_half(x) * sin, with rotate_half = roll by half times [-1.., +1..]; decoding calls the
        # ops directly (an autograd Function's call costs more than they do at one token)
        if torch.is_grad_enabled():
            return Rotate.apply(x, cos, sin)
        return torch.addcmul(x * cos, torch.roll(x, self.head_dim // 2, -1), sin)

    def _qkv(self, layer: Layer, h: torch.Tensor, shape: tuple[int, ...], cos: torch.Tensor, sin: torch.Tensor,
             pair: Any, packed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [*, heads, D], k and v [*, kv_heads, D] of the normed hidden states, rotated."""
        x = _rms(h, layer.ln1, self.eps)[0]
        return self._heads(layer, self._linear(x, layer.qkv, layer.qkv_bias, pair, packed=packed), shape, cos, sin)

    def _heads(self, layer: Layer, qkv: torch.Tensor, shape: tuple[int, ...], cos: torch.Tensor,
               sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k (rotated) and v out of the fused q/k/v matmul's output."""
        # split, not slices: the backward of a split is one concatenation, that of each slice a zero-filled copy
        qk, v = qkv.split([(self.heads + self.kv_heads) * self.head_dim, self.kv_heads * self.head_dim], dim=-1)
        qk = qk.reshape(*shape, self.heads + self.kv_heads, self.head_dim)
        if layer.qk_norm is not None:
            qk = F.rms_norm(qk, (self.head_dim,), None, self.eps) * layer.qk_norm
        q, k = self._rotate(qk, cos, sin).split([self.heads, self.kv_heads], dim=-2)
        # a copy of v (small): attention keeps v for its backward, and a view would keep all of q/k/v alive
        return q, k, v.reshape(*shape, self.kv_heads, self.head_dim).contiguous()

    def _mlp(self, layer: Layer, h: torch.Tensor, pairs: Pairs, i: int, packed: bool = False) -> torch.Tensor:
        x = _rms(h, layer.ln2, self.eps)[0]
        gate_up = self._linear(x, layer.gate_up, layer.gate_up_bias, pairs.get(f"{i}.gate_up"),
                               packed=layer.gate_up_packed if packed else None)
        gate, up = gate_up.chunk(2, dim=-1)
        return self._linear(F.silu(gate).mul_(up), layer.down, layer.down_bias, pairs.get(f"{i}.down"), residual=h,
                            packed=layer.down_packed if packed else None)

    def _logits(self, h: torch.Tensor, pairs: Pairs, packed: bool = False) -> torch.Tensor:
        x = _rms(h, self.norm, self.eps)[0]
        return self._linear(x, self.lm_head, self.lm_head_bias, pairs.get("lm_head"),
                            packed=self.lm_head_packed if packed else None)

    def _mask(self, key_valid: torch.Tensor | None, t: int, window: int | None) -> torch.Tensor | None:
        """Boolean [B or 1, 1, T, T] attention mask (True = attend) for a prefill: causal, within the window,
        not onto padding; None when plain causal attention is exact."""
        if key_valid is None and (window is None or window >= t):
            return None
        idx = torch.arange(t, device=self.device)
        allowed = idx[None, :] <= idx[:, None]
        if window is not None and window < t:
            allowed = allowed & (idx[None, :] > idx[:, None] - window)
        mask = allowed[None, None]
        if key_valid is not None:
            # a padding query attends to itself only, so its (unused) softmax has no empty row
            mask = (mask & key_valid[:, None, None, :]) | torch.eye(t, dtype=torch.bool, device=self.device)
        return mask

    def _attend_full(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention over whole sequences: q [B, T, H, D], k/v [B, T, KV, D] -> [B*T, H*D]."""
        b, t = q.shape[0], q.shape[1]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        # grouped-query attention inside the kernel: no repeated keys and values kept for the backward
        gqa = self.heads != self.kv_heads
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return out.transpose(1, 2).reshape(b * t, self.heads * self.head_dim)

    # ------------------------------------------------------------------ passes

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, pairs: Pairs, key_valid: torch.Tensor | None,
                 keep: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden states [B*T, hidden] after the last layer (a prefill: no gradient); `keep` collects each
        layer's (k, v). The products read the decoding copies, as decoding steps do: a bfloat16 product of plain
        weights rounds differently on one thread than on two for some shapes (e.g. [30, 576] @ [576, 960]), and
        the thread tuner may change the count between two requests, so a seeded request sampled twice gave
        other tokens; the oneDNN-packed products give the same bits on any thread count."""
        b, t = ids.shape
        h = F.embedding(ids, self.embed).float().reshape(b * t, self.hidden)
        cos, sin = self._rope(positions)
        masks: dict[int | None, torch.Tensor | None] = {}
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, h, (b, t), cos, sin, pairs.get(f"{i}.qkv"), layer.qkv_packed)
            if keep is not None:
                keep.append(k)
                keep.append(v)
            if layer.window not in masks:
                masks[layer.window] = self._mask(key_valid, t, layer.window)
            attn = self._attend_full(q, k, v, masks[layer.window])
            h = self._linear(attn, layer.o, layer.o_bias, pairs.get(f"{i}.o"), residual=h, packed=layer.o_packed)
            h = self._mlp(layer, h, pairs, i, packed=True)
        return h

    def activation_bytes(self) -> int:
        """Memory one token of a forward_backward keeps for its backward (train_ops keeps per layer the
        input, the rotated q/k, v, the attention's output, the mid-layer state and the gate/up product; then
        the log-softmax over the vocabulary; the gate/up product and the log-softmax in the base weights' dtype)."""
        qk, v = (self.heads + self.kv_heads) * self.head_dim, self.kv_heads * self.head_dim
        low = self.base_dtype.itemsize
        per_layer = 4 * (3 * self.hidden + qk + v) + low * 2 * self.layers[0].down.shape[0]
        return len(self.layers) * per_layer + low * self.vocab + 4 * self.hidden

    def logprobs(self, tokens: list[list[int]], targets: list[list[int]], adapter: Adapter | None) -> list[torch.Tensor]:
        """Per sequence, log p(target_t | tokens_<=t) (differentiable w.r.t. the adapter when grad is on).

        Sequences are right-padded: attention is causal, so no real token sees a pad, and without a mask
        the attention takes its fused causal path. Logits are computed for real positions only, by the fused
        pieces of train_ops (which keep less for the backward than autograd over the plain ops would)."""
        lengths = [len(t) for t in tokens]
        width = max(lengths)
        ids = torch.zeros((len(tokens), width), dtype=torch.long)
        tgt = torch.zeros((len(tokens), width), dtype=torch.long)
        real = torch.zeros((len(tokens), width), dtype=torch.bool)
        for i, (t, y) in enumerate(zip(tokens, targets, strict=True)):
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            tgt[i, : len(y)] = torch.tensor(y, dtype=torch.long)
            real[i, : len(t)] = True
        ids, tgt, real = ids.to(self.device), tgt.to(self.device), real.to(self.device)
        positions = torch.arange(width, device=self.device).expand(len(tokens), width)
        pairs = self._pairs(adapter, frozen=False)
        b, t = ids.shape
        h = F.embedding(ids, self.embed).float().reshape(b * t, self.hidden)
        cos, sin = self._rope(positions)
        masks: dict[int | None, torch.Tensor | None] = {}
        pk = self.train_packed
        for i, layer in enumerate(self.layers):
            qkv = NormLinear.apply(h, layer.ln1, self.eps, layer.qkv, layer.qkv_bias, *_pair(pairs, f"{i}.qkv"),
                                   layer.qkv_packed if pk else None)
            q, k, v = self._heads(layer, qkv, (b, t), cos, sin)
            if layer.window not in masks:
                masks[layer.window] = self._mask(None, t, layer.window)
            attn = self._attend_full(q, k, v, masks[layer.window])
            h = LinearResidual.apply(attn, h, layer.o, layer.o_bias, *_pair(pairs, f"{i}.o"),
                                     layer.o_packed if pk else None)
            h = NormSwiGLU.apply(h, layer.ln2, self.eps, layer.gate_up, layer.gate_up_bias,
                                 *_pair(pairs, f"{i}.gate_up"), layer.down, layer.down_bias, *_pair(pairs, f"{i}.down"),
                                 layer.gate_up_packed if pk else None, layer.down_packed if pk else None)
        flat = real.reshape(-1)
        logp = NormHead.apply(h[flat], self.norm, self.eps, self.lm_head, self.lm_head_bias,
                              *_pair(pairs, "lm_head"), tgt.reshape(-1)[flat], self.lm_head_packed if pk else None)
        return list(torch.split(logp, lengths))

    @staticmethod
    def _pairs(adapter: Adapter | None, frozen: bool) -> Pairs:
        if adapter is None:
            return {}
        if frozen:
            return adapter.frozen()
        return {slot: pair for slot in adapter.slot_names if (pair := adapter.pair(slot)) is not None}

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, key_valid: torch.Tensor, adapter: Adapter | None,
                all_logits: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Left-padded prompts [B, T] (key_valid marks real tokens) -> (logits [B, T or 1, vocab], per layer
        k and v [B, T, kv_heads, D] in turn)."""
        b, t = ids.shape
        positions = (key_valid.long().cumsum(-1) - 1).clamp(min=0)
        padded = bool((~key_valid).any())
        keep: list[torch.Tensor] = []
        pairs = self._pairs(adapter, frozen=True)
        h = self._forward(ids, positions, pairs, key_valid if padded else None, keep)
        h = h.view(b, t, self.hidden)
        if not all_logits:
            h = h[:, -1:]
        logits = self._logits(h.reshape(-1, self.hidden), pairs, packed=True).view(b, -1, self.vocab)
        return logits, keep

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, valid: torch.Tensor,
             adapter: Adapter | None) -> torch.Tensor:
        """One new token per row [R] at positions [R]; writes its keys and values at column cache.length
        (then advanced) and returns the next logits [R, vocab]. valid [R, capacity] marks the columns each row
        may attend to (its own tokens, not left padding)."""
        r = tokens.shape[0]
        n = cache.length
        kvh, d = self.kv_heads, self.head_dim
        pairs = self._pairs(adapter, frozen=True)
        h = F.embedding(tokens, self.embed).float()
        cos, sin = self._rope(positions.view(r, 1))
        cos, sin = cos[:, 0], sin[:, 0]
        group = self.heads // kvh
        scale = d ** -0.5
        # Per layer, the cache column this token's k and v go to and the keys and values attention reads: views
        # made here, for all layers at once (indexing the cache in each layer took 12 ops a layer, and v a copy of
        # its own). Cheap as such ops look, between a step's products they run cold, since every weight streams
        # through the caches each step: a view op took 15-30 us there against 2-4 us in a loop of its own. (The
        # cache is contiguous: new_cache, DecodeBatch's row selection, merge and resize all make it so.) For the
        # same reason the step takes q, k and v from the product with slices here rather than through _qkv and
        # _heads, whose split suits the training backward: calling those made the step 1.5% slower.
        layers, cap = len(self.layers), cache.capacity
        k_col, v_col = cache.k[:, :, :, n].unbind(0), cache.v[:, :, :, n].unbind(0)
        keys = cache.k.view(layers, r * kvh, cap, d)[:, :, : n + 1].unbind(0)
        values = cache.v.view(layers, r * kvh, cap, d)[:, :, : n + 1].unbind(0)
        qk_width = (self.heads + kvh) * d
        biases: dict[int | None, torch.Tensor | None] = {}
        for i, layer in enumerate(self.layers):
            x = _rms(h, layer.ln1, self.eps)[0]
            qkv = self._linear(x, layer.qkv, layer.qkv_bias, pairs.get(f"{i}.qkv"), packed=layer.qkv_packed)
            qk = qkv[:, :qk_width].view(r, self.heads + kvh, d)
            if layer.qk_norm is not None:
                qk = F.rms_norm(qk, (d,), None, self.eps) * layer.qk_norm
            qk = self._rotate(qk, cos, sin)
            k_col[i].copy_(qk[:, self.heads:])
            v_col[i].copy_(qkv[:, qk_width:].view(r, kvh, d))  # v straight from the product: no copy of its own
            if layer.window not in biases:
                allowed = valid[:, : n + 1]
                if layer.window is not None and layer.window < n + 1:
                    allowed = allowed.clone()
                    allowed[:, : n + 1 - layer.window] = False
                bias = None  # every row sees every column (no padding, no window): no mask to add
                if not bool(allowed.all()):
                    bias = torch.zeros(allowed.shape, device=self.device).masked_fill_(~allowed, float("-inf"))
                    bias = bias[:, None, :].expand(r, kvh, n + 1).reshape(r * kvh, 1, n + 1)
                biases[layer.window] = bias
            # q's heads are a strided view: the scaling writes the contiguous copy the grouping needs anyway
            qg = torch.mul(qk[:, : self.heads], scale).view(r * kvh, group, d)
            bias = biases[layer.window]
            if bias is None:
                scores = torch.bmm(qg, keys[i].transpose(1, 2))
            else:
                scores = torch.baddbmm(bias, qg, keys[i].transpose(1, 2))
            attn = torch.bmm(torch.softmax(scores, dim=-1), values[i]).view(r, self.heads * d)
            h = self._linear(attn, layer.o, layer.o_bias, pairs.get(f"{i}.o"), residual=h, packed=layer.o_packed)
            h = self._mlp(layer, h, pairs, i, packed=True)
        cache.length = n + 1
        return self._logits(h, pairs, packed=True)

    def new_cache(self, rows: int, capacity: int) -> KVCache:
        """An empty cache for `rows` rows and `capacity` positions."""
        shape = (len(self.layers), rows, self.kv_heads, capacity, self.head_dim)
        return KVCache(torch.zeros(shape, device=self.device), torch.zeros(shape, device=self.device), 0)
