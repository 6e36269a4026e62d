"""Checkpoints on disk: tinker://RUN/(weights|sampler_weights)/NAME is <state-dir>/RUN/KIND/NAME, holding
adapter.safetensors, meta.json and (for weights) optimizer.pt. They outlive the engine process."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rft_runtime.engine.errors import EngineError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def parse_tinker_path(path: str) -> tuple[str, str, str]:
    """tinker://MODEL_ID/(weights|sampler_weights)/NAME -> (model_id, kind, name), or EngineError."""
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise EngineError(f"not a tinker:// path: {path!r}")
    parts = path[len("tinker://"):].split("/")
    if len(parts) != 3 or parts[1] not in ("weights", "sampler_weights") or not NAME_RE.match(parts[2]):
        raise EngineError(f"malformed checkpoint path {path!r}: expected tinker://RUN/weights/NAME or "
                          "tinker://RUN/sampler_weights/NAME")
    if not parts[0] or "/" in parts[0] or parts[0] in (".", ".."):
        raise EngineError(f"malformed checkpoint path {path!r}")
    return parts[0], parts[1], parts[2]


def check_name(name: Any) -> str:
    """The name, or EngineError saying what a checkpoint name may hold."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise EngineError(f"checkpoint name {name!r} must be 1-128 letters, digits, '.', '_' or '-' "
                          "(starting with a letter or digit)")
    return name


class Checkpoints:
    """The checkpoints under one state dir."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        shutil.rmtree(self.snapshot_dir, ignore_errors=True)

    def path_of(self, model_id: str, kind: str, name: str) -> Path:
        """Where a checkpoint lives (whether or not it exists)."""
        return self.state_dir / model_id / kind / name

    def find(self, path: str, missing: str | None = None) -> tuple[Path, str]:
        """(directory, kind) of an existing tinker:// checkpoint, or a 404 EngineError (message `missing`)."""
        model_id, kind, name = parse_tinker_path(path)
        d = self.path_of(model_id, kind, name)
        if not (d / "meta.json").exists():
            raise EngineError(missing or f"no checkpoint at {path!r} in this engine's state dir {self.state_dir}",
                              status=404)
        return d, kind

    def write(self, model_id: str, name: str, kind: str, adapter: dict[str, torch.Tensor],
              optimizer: dict[str, Any] | None, meta: dict[str, Any], overwrite: bool = False) -> str:
        """Write one checkpoint whole (or not at all); returns its tinker:// path."""
        check_name(name)
        path = f"tinker://{model_id}/{kind}/{name}"
        d = self.path_of(model_id, kind, name)
        if d.exists():
            if not overwrite:
                raise EngineError(f"a checkpoint named {name!r} already exists for this training run ({path}); "
                                  "choose a new name", status=409)
            shutil.rmtree(d)
        tmp = d.with_name(f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().to("cpu").contiguous() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
        if kind == "weights" and optimizer is not None:
            torch.save(optimizer, tmp / "optimizer.pt")
        (tmp / "meta.json").write_text(json.dumps({**meta, "kind": kind, "model_id": model_id, "name": name,
                                                   "time": time.time()}, indent=1))
        tmp.rename(d)  # whole checkpoints only: a crash mid-save leaves no half-written name behind
        return path

    def read(self, path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path, str]:
        """(meta, adapter tensors, directory, kind) of a checkpoint."""
        d, kind = self.find(path)
        meta = json.loads((d / "meta.json").read_text())
        return meta, load_file(str(d / "adapter.safetensors")), d, kind

    def entries(self, model_id: str) -> list[dict[str, Any]]:
        """The checkpoints saved by training run model_id (from disk, so they survive restarts)."""
        out = []
        for kind, ctype in (("weights", "training"), ("sampler_weights", "sampler")):
            base = self.state_dir / model_id / kind
            if not base.is_dir():
                continue
            for d in sorted(base.iterdir()):
                if not (d / "meta.json").exists():
                    continue
                meta = json.loads((d / "meta.json").read_text())
                size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
                out.append({"checkpoint_id": f"{kind}/{d.name}", "checkpoint_type": ctype,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(meta.get("time", 0))),
                            "tinker_path": f"tinker://{model_id}/{kind}/{d.name}", "size_bytes": size,
                            "user_metadata": meta.get("user_metadata") or None})
        return out

    def write_snapshot(self, sampler_id: str, adapter: dict[str, torch.Tensor]) -> Path:
        """Keep a snapshot sampler's weights on disk (not in memory) while its session lives; returns the file."""
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        path = self.snapshot_dir / (sampler_id.replace("/", "_").replace(":", "_") + ".safetensors")
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in adapter.items()}, str(tmp))
        tmp.replace(path)
        return path

    @property
    def snapshot_dir(self) -> Path:
        """Where snapshot samplers' weights wait (emptied when an engine starts: no session outlives it)."""
        return self.state_dir / ".snapshots"

    def delete(self, path: str) -> None:
        """Remove a saved checkpoint (404 when there is none)."""
        model_id, kind, name = parse_tinker_path(path)
        d, _ = self.find(path, missing=f"no such checkpoint {kind}/{name} for training run {model_id}")
        shutil.rmtree(d)
