"""LoRA adapters as plain tensors: A [rank, in] and B [out, rank] per covered linear layer.

The delta of a layer is scaling * B @ A with scaling = ALPHA / rank, as peft computes it (lora_alpha 32, no
dropout); A starts uniform in +-1/sqrt(in) (peft's kaiming-uniform default) from the adapter's seed and B at
zero. Checkpoints keep peft's parameter names with the adapter's name replaced by ADAPTER, so checkpoints of
earlier versions of this engine (which used peft) load unchanged.

The transformer applies an adapter unmerged: per fused base matmul ("slot", e.g. q/k/v as one), one product
with the slot's A matrices stacked and one with their B matrices as a block diagonal, so a slot costs two
small matmuls whatever its number of layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

ALPHA = 32
STATE_PREFIX = "base_model.model."


@dataclass
class LoraSpec:
    """What create_lora_training_client asked for."""

    rank: int
    seed: int
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = True


@dataclass(frozen=True)
class Target:
    """One linear layer an adapter may cover: its module path in the Hugging Face model and its shape."""

    path: str
    group: str  # attn, mlp or unembed
    slot: str  # the fused base matmul it belongs to
    fan_in: int
    fan_out: int


def state_key(path: str, which: str) -> str:
    """The checkpoint key of a layer's A or B matrix (peft's name, adapter name ADAPTER)."""
    return f"{STATE_PREFIX}{path}.lora_{which}.ADAPTER.weight"


class Adapter:
    """One adapter's tensors, keyed by module path, and the per-slot forms the transformer multiplies by."""

    def __init__(self, spec: LoraSpec, targets: list[Target]):
        self.spec = spec
        self.targets = targets
        self.scaling = ALPHA / spec.rank
        gen = torch.Generator(device="cpu")
        gen.manual_seed(spec.seed)
        self.a: dict[str, torch.nn.Parameter] = {}
        self.b: dict[str, torch.nn.Parameter] = {}
        for t in targets:  # module order, so the same seed always gives the same adapter
            bound = 1.0 / math.sqrt(t.fan_in)
            a = torch.empty(spec.rank, t.fan_in).uniform_(-bound, bound, generator=gen)
            self.a[t.path] = torch.nn.Parameter(a, requires_grad=False)
            self.b[t.path] = torch.nn.Parameter(torch.zeros(t.fan_out, spec.rank), requires_grad=False)
        self.slots: dict[str, list[Target]] = {}
        for t in targets:
            self.slots.setdefault(t.slot, []).append(t)
        self._frozen: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(checkpoint key, tensor) of every A and B matrix, in a fixed order."""
        out = [(state_key(p, "A"), a) for p, a in self.a.items()] + [(state_key(p, "B"), b) for p, b in self.b.items()]
        return sorted(out)

    def trainable(self) -> list[torch.nn.Parameter]:
        """The tensors an optimizer updates (gradients switched on)."""
        params = [p for _, p in self.named_parameters()]
        for p in params:
            p.requires_grad_(True)
        return params

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of every tensor, under its checkpoint key."""
        return {k: p.detach().clone() for k, p in self.named_parameters()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a checkpoint's tensors in; ValueError when its layers or shapes are not this adapter's."""
        mine = dict(self.named_parameters())
        if set(mine) != set(state) or any(mine[k].shape != state[k].shape for k in mine):
            raise ValueError("checkpoint does not match the adapter's layers (different LoRA settings?)")
        with torch.no_grad():
            for k, p in mine.items():
                p.copy_(state[k])
        self._frozen = None

    def pair(self, slot: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A^T stacked [in, k*rank], scaling * block-diagonal B^T [k*rank, out]) for one slot, built from the
        trainable tensors (gradients flow back to them); None when the adapter does not cover the slot."""
        targets = self.slots.get(slot)
        if not targets:
            return None
        if len(targets) == 1:
            t = targets[0]
            return self.a[t.path].t(), self.b[t.path].t() * self.scaling
        a_t = torch.cat([self.a[t.path] for t in targets]).t()
        b_t = torch.block_diag(*[self.b[t.path] for t in targets]).t() * self.scaling
        return a_t, b_t

    def frozen(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every slot's pair as contiguous constants, built once (for decoding: weights no longer change)."""
        if self._frozen is None:
            with torch.no_grad():
                self._frozen = {slot: tuple(x.contiguous() for x in self.pair(slot))  # type: ignore[misc]
                                for slot in self.slots}
        return self._frozen

    def freeze(self) -> Adapter:
        """Keep only the frozen pairs (a sampler's adapter: half the memory); returns self."""
        self.frozen()
        self.a.clear()
        self.b.clear()
        return self

    def nbytes(self) -> int:
        """Memory the adapter's tensors take."""
        tensors = [t for pair in (self._frozen or {}).values() for t in pair] + list(self.a.values()) + list(self.b.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def slot_names(self) -> Iterable[str]:
        """The slots this adapter covers."""
        return self.slots.keys()
