"""A checkpoint's tensors, read one at a time: safetensors files with plain reads, or (a directory without
them) the Hugging Face model's own loading.

Plain reads, not a memory map: a mapped checkpoint's pages count toward the process's resident memory while
it is mapped, so building the engine's own layouts from it peaked at twice the model's size (2.1 GB for
SmolLM2-135M); read tensor by tensor, the peak is the model plus one tensor.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from rft_runtime.engine.errors import EngineError

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


class Weights:
    """name -> float32 tensor for one model directory."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self.where: dict[str, tuple[Path, str, list[int], int, int]] = {}
        self._hf: dict[str, torch.Tensor] | None = None
        index = model_dir / "model.safetensors.index.json"
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else (
            ["model.safetensors"] if (model_dir / "model.safetensors").exists() else [])
        for name in files:
            self._read_header(model_dir / name)
        if not files:
            self._hf = _hf_state_dict(model_dir)

    def _read_header(self, path: Path) -> None:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in DTYPES:
                raise EngineError(f"{path}: tensor {name} has dtype {info['dtype']}, which the engine does not read "
                                  f"(it reads {', '.join(DTYPES)})")
            start, end = info["data_offsets"]
            self.where[name] = (path, info["dtype"], list(info["shape"]), 8 + size + start, end - start)

    def __contains__(self, name: str) -> bool:
        return name in (self._hf if self._hf is not None else self.where)

    def get(self, name: str) -> torch.Tensor:
        """The tensor as float32 (a new tensor: nothing keeps the file open or mapped)."""
        if self._hf is not None:
            return self._hf[name].detach().to(torch.float32).clone()
        if name not in self.where:
            raise EngineError(f"{self.model_dir}: no tensor {name!r} in the checkpoint (is it a complete "
                              "Llama-family model?)")
        path, dtype, shape, offset, nbytes = self.where[name]
        raw = torch.empty(nbytes, dtype=torch.uint8)
        with path.open("rb") as fh:
            fh.seek(offset)
            if fh.readinto(raw.numpy()) != nbytes:
                raise EngineError(f"{path}: the file ends inside tensor {name} (a partial download?)")
        return raw.view(DTYPES[dtype]).reshape(shape).to(torch.float32)


def _hf_state_dict(model_dir: Path) -> dict[str, Any]:
    """The state dict of a checkpoint in another format (pytorch_model.bin), through Hugging Face's loading."""
    from transformers import AutoModelForCausalLM  # only for checkpoints without safetensors files

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    state = dict(model.state_dict())
    if "lm_head.weight" in state and getattr(model.config, "tie_word_embeddings", False):
        del state["lm_head.weight"]
    return state
