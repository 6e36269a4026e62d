"""Token sampling: temperature, top-k, top-p, stop strings or token ids, seeded generators.

The logprob reported for each sampled token is the model's own log-softmax (temperature 1, no top-k/top-p
truncation), the same number `forward` computes for that token, so importance ratios start at exactly 1.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SampleSpec:
    """What one sample request asks for, already validated."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    seed: int | None = None
    stop_tokens: set[int] = field(default_factory=set)
    stop_strings: list[str] = field(default_factory=list)


@dataclass
class SampledSeq:
    """One generated sequence: tokens, their logprobs, and why it ended ("stop" or "length")."""

    tokens: list[int]
    logprobs: list[float]
    stop_reason: str


class SamplingParamsError(ValueError):
    """Sampling parameters the engine cannot honour."""


def parse_spec(params: dict[str, Any], eos_ids: list[int], max_tokens_limit: int) -> SampleSpec:
    """Validate the SDK's sampling_params JSON; None for stop means stop at EOS, [] means never stop early."""
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        max_tokens = min(512, max_tokens_limit)
    max_tokens = int(max_tokens)
    if max_tokens < 1:
        raise SamplingParamsError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_tokens > max_tokens_limit:
        raise SamplingParamsError(f"max_tokens {max_tokens} exceeds the model's context ({max_tokens_limit})")
    temperature = float(params.get("temperature", 1.0) if params.get("temperature") is not None else 1.0)
    if temperature < 0:
        raise SamplingParamsError(f"temperature must be >= 0, got {temperature}")
    top_k = int(params.get("top_k", -1) if params.get("top_k") is not None else -1)
    if top_k == 0 or top_k < -1:
        raise SamplingParamsError(f"top_k must be -1 (no limit) or >= 1, got {top_k}")
    top_p = float(params.get("top_p", 1.0) if params.get("top_p") is not None else 1.0)
    if not 0.0 < top_p <= 1.0:
        raise SamplingParamsError(f"top_p must be in (0, 1], got {top_p}")
    seed = params.get("seed")
    spec = SampleSpec(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      seed=None if seed is None else int(seed))
    stop = params.get("stop")
    if stop is None:
        spec.stop_tokens = set(eos_ids)
    elif isinstance(stop, str):
        spec.stop_strings = [stop] if stop else []
    else:
        for item in stop:
            if isinstance(item, bool):
                raise SamplingParamsError(f"stop entries must be strings or token ids, got {item!r}")
            if isinstance(item, int):
                spec.stop_tokens.add(item)
            elif isinstance(item, str):
                if item:
                    spec.stop_strings.append(item)
            else:
                raise SamplingParamsError(f"stop entries must be strings or token ids, got {item!r}")
    return spec


def pick_tokens(logits: torch.Tensor, specs: list[SampleSpec],
                generators: list[torch.Generator]) -> tuple[list[int], list[float]]:
    """Draw the next token of every row of logits [R, V], each under its own spec (temperature, top-k, top-p;
    greedy at temperature 0), and return the tokens and their logprobs (the model's own, temperature 1).

    All rows are drawn in a few batched ops, yet each draw uses one uniform number from its row's own
    generator (inverse CDF), so a sequence's tokens depend only on its logits and seed, never on which other
    sequences share its decoding batch."""
    logits = logits.float()
    vocab = logits.shape[-1]
    if all(s.temperature != 0.0 and not 0 < s.top_k < vocab and s.top_p >= 1.0 for s in specs):
        # every row a plain draw (the common case): the same ops as below without selecting rows, and no
        # division where every temperature is 1 (exact either way)
        temps = [s.temperature for s in specs]
        scores = logits if all(t == 1.0 for t in temps) else logits / torch.tensor(temps, device=logits.device)[:, None]
        tokens = _draw(scores, generators)
    else:
        tokens = _pick_mixed(logits, specs, generators)
    logprobs = logits.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return tokens.tolist(), logprobs.tolist()


def _draw(scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of scores [R, V] (-inf: never), by inverse CDF on one uniform number of its generator."""
    cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1, dtype=torch.float64)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    u = u.to(scores.device) * cdf[:, -1]
    return torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1).clamp(max=scores.shape[-1] - 1)


def _pick_mixed(logits: torch.Tensor, specs: list[SampleSpec], generators: list[torch.Generator]) -> torch.Tensor:
    """pick_tokens' tokens where rows differ: greedy rows, top-k and top-p truncation."""
    rows = logits.shape[0]
    tokens = torch.empty(rows, dtype=torch.long, device=logits.device)
    greedy = [i for i, s in enumerate(specs) if s.temperature == 0.0]
    drawn = [i for i, s in enumerate(specs) if s.temperature != 0.0]
    if greedy:
        idx = torch.tensor(greedy, device=logits.device)
        tokens[idx] = logits[idx].argmax(dim=-1)
    if drawn:
        idx = torch.tensor(drawn, device=logits.device)
        sub = [specs[i] for i in drawn]
        temps = torch.tensor([s.temperature for s in sub], device=logits.device)
        scores = logits[idx] / temps[:, None]
        vocab = scores.shape[-1]
        top_k = [s.top_k if 0 < s.top_k < vocab else 0 for s in sub]
        if any(top_k):
            kth_values = torch.topk(scores, max(top_k), dim=-1).values
            kth = torch.stack([kth_values[j, k - 1] if k else scores.new_tensor(float("-inf"))
                               for j, k in enumerate(top_k)])
            scores = scores.masked_fill(scores < kth[:, None], float("-inf"))
        if any(s.top_p < 1.0 for s in sub):
            # drop a token when the tokens ranked above it already cover top_p (the first always stays)
            top_p = torch.tensor([s.top_p if s.top_p < 1.0 else float("inf") for s in sub], device=logits.device)
            ordered, order = torch.sort(scores, descending=True, dim=-1)
            probs = torch.softmax(ordered, dim=-1)
            drop = probs.cumsum(dim=-1) - probs >= top_p[:, None]
            scores = torch.full_like(scores, float("-inf")).scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        tokens[idx] = _draw(scores, [generators[i] for i in drawn])
    return tokens


def sequence_generators(seed: int | None, n: int) -> list[torch.Generator]:
    """One generator per sample of a request: sample 0 is seeded with `seed` itself, sample i with a value
    derived from (seed, i), so a seeded request draws the same sequences alone or in any batch."""
    base = seed if seed is not None else int.from_bytes(os.urandom(7), "little")
    gens = []
    for i in range(n):
        value = base if i == 0 else int.from_bytes(
            hashlib.blake2b(f"{base}:{i}".encode(), digest_size=8).digest(), "little") >> 1
        g = torch.Generator(device="cpu")
        g.manual_seed(value)
        gens.append(g)
    return gens


@dataclass
class SampleJob:
    """One queued sample request as the batched decoder sees it; `result` / `error` are filled in."""

    sampler_id: str
    prompt: list[int]
    num_samples: int
    spec: SampleSpec
    prompt_logprobs: bool = False
    result: tuple[list[SampledSeq], list[float] | None] | None = None
    error: Exception | None = None
    prompt_lps: list[float] | None = None


class StopChecker:
    """Decides when a sequence has produced a stop token or a stop string."""

    def __init__(self, spec: SampleSpec, decode: Any):
        self.spec = spec
        self.decode = decode
        self.longest = max((len(s) for s in spec.stop_strings), default=0)

    def stopped(self, tokens: list[int]) -> bool:
        """True when the last token is a stop token or completes a stop string."""
        if tokens[-1] in self.spec.stop_tokens:
            return True
        if not self.spec.stop_strings:
            return False
        # a stop string may span tokens, but it must end in the newest one: look at a bounded tail only
        tail = self.decode(tokens[-(self.longest + 8):])
        last = self.decode(tokens[-1:])
        return any(_ends_within(tail, s, last) for s in self.spec.stop_strings)


def _ends_within(tail: str, stop: str, last: str) -> bool:
    """True when `stop` occurs in tail at a position that overlaps the newest token's text."""
    idx = tail.rfind(stop)
    return idx >= 0 and idx + len(stop) > len(tail) - len(last)
