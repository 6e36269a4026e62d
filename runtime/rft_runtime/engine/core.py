"""The model side of the engine: one base model, one LoRA adapter per training run and per sampler.

Engine loads the model and holds the four parts that do the work: training runs
(training.py), checkpoints on disk (checkpoints.py), samplers and their batched decoding (samplers.py,
decode.py), all over one Transformer (transformer.py). Its own methods are the ones that cross parts: saving
and loading a run, snapshots, a session's end.

Every method here runs on the server's single compute thread, so nothing needs a lock; the HTTP side only
validates requests and queues work.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig

from rft_runtime.engine import memory
from rft_runtime.engine.checkpoints import Checkpoints, check_name
from rft_runtime.engine.errors import EngineError
from rft_runtime.engine.lora import Adapter, LoraSpec
from rft_runtime.engine.samplers import Sampler, Samplers
from rft_runtime.engine.threads import ThreadTuner
from rft_runtime.engine.training import TrainingRuns, TrainRun
from rft_runtime.engine.transformer import Transformer

__all__ = ["Engine", "EngineError", "LoraSpec", "tokenizer_safe_name"]


def tokenizer_safe_name(path: str) -> str:
    """The same directory under a name the SDK's get_tokenizer() does not rewrite: it takes any name with
    exactly two slashes for org/model/variant and cuts it (/tmp/model would become "/tmp"), so such a path
    gets a "/./" that changes nothing on disk."""
    if path.count("/") == 2:
        head, _, tail = path.rpartition("/")
        return f"{head}/./{tail}"
    return path


class Engine:
    """Loads the model once and serves every training run and sampler from it."""

    def __init__(self, model_dir: str | Path, state_dir: str | Path, device: str | None = None,
                 max_rank: int = 128):
        self.model_dir = Path(model_dir).expanduser().resolve()
        if not (self.model_dir / "config.json").exists():
            raise EngineError(f"{self.model_dir} is not a model directory (no config.json); "
                              "make one with `rft engine make-model DIR`")
        state = Path(state_dir).expanduser().resolve()
        state.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.max_rank = max_rank
        self._tokenizer: Any = None
        self.tf = Transformer(self.model_dir, self.device)
        self.arch = self.tf.arch
        self.vocab_size = self.tf.vocab
        self.max_context = int(getattr(self.tf.config, "max_position_embeddings", 2048) or 2048)
        try:
            eos = GenerationConfig.from_pretrained(str(self.model_dir)).eos_token_id
        except OSError:  # no generation_config.json
            eos = None
        eos = eos if eos is not None else getattr(self.tf.config, "eos_token_id", None)
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        memory.release()  # what the load freed (its transposing copies)
        self.eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        self.model_name = str(self.model_dir)
        self.checkpoints = Checkpoints(state)
        # in process: torch's thread count as it is; `rft engine serve` configures the tuner
        self.threads = ThreadTuner(torch.get_num_threads(), fixed=True)
        self.training = TrainingRuns(self.tf, self.new_adapter, self.threads)
        self.samplers = Samplers(self.tf, self.checkpoints, self.new_adapter, self.decode_text, self.max_context,
                                 self.threads)

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, loaded on first use (stop strings, an EOS the configs do not name): 110 MB of
        resident memory for SmolLM2-135M that most engines never need."""
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        return self._tokenizer

    def decode_text(self, tokens: list[int]) -> str:
        """Token ids as text (stop strings are matched on it)."""
        return self.tokenizer.decode(tokens)

    @property
    def state_dir(self) -> Path:
        """Where checkpoints are written."""
        return self.checkpoints.state_dir

    # ------------------------------------------------------------------ names

    def resolve_base_model(self, name: str | None) -> str:
        """The canonical model name for `name` (absolute dir, basename, or any path to it), or EngineError."""
        if name:
            if name in (self.model_name, self.model_dir.name):
                return self.model_name
            try:
                if Path(name).expanduser().resolve() == self.model_dir:
                    return self.model_name
            except (OSError, ValueError):
                pass
        raise EngineError(f"unknown base model {name!r}: this engine serves {self.model_name!r} "
                          f"(also as {self.model_dir.name!r})")

    def tokenizer_name(self) -> str:
        """The model name a sampling client hands to AutoTokenizer.from_pretrained (see tokenizer_safe_name)."""
        return tokenizer_safe_name(self.model_name)

    # ------------------------------------------------------------------ adapters

    def check_lora(self, lora: LoraSpec) -> None:
        """EngineError for a rank outside 1..max_rank or an adapter that covers nothing."""
        if not 1 <= lora.rank <= self.max_rank:
            raise EngineError(f"LoRA rank {lora.rank} is outside 1..{self.max_rank} (the engine's --max-rank)")
        self._targets(lora)

    def _targets(self, lora: LoraSpec) -> list[Any]:
        groups = {"attn": lora.train_attn, "mlp": lora.train_mlp, "unembed": lora.train_unembed}
        targets = [t for t in self.tf.targets if groups[t.group]]
        if not targets:
            raise EngineError("the adapter would cover no layers: set train_mlp, train_attn or train_unembed "
                              "(this model has " + ", ".join(f"{k}: {len(v)}" for k, v in self.tf.groups.items())
                              + ")")
        return targets

    def new_adapter(self, lora: LoraSpec) -> Adapter:
        """A fresh adapter over the layers the spec's groups name (A from its seed, B zero)."""
        self.check_lora(lora)
        return Adapter(lora, self._targets(lora))

    # ------------------------------------------------------------------ training runs

    def create_run(self, model_id: str, base_model: str, lora: LoraSpec,
                   user_metadata: dict[str, Any] | None = None) -> TrainRun:
        """A new LoRA adapter and training run named model_id."""
        return self.training.create(model_id, self.resolve_base_model(base_model), lora, user_metadata)

    def info(self, model_id: str) -> dict[str, Any]:
        """The get_info answer for a training run."""
        run = self.training.get(model_id)
        return {
            "type": "get_info",
            "model_data": {"arch": self.arch, "model_name": run.base_model, "tokenizer_id": self.model_name},
            "model_id": model_id, "is_lora": True, "lora_rank": run.lora.rank, "model_name": run.base_model,
        }

    # ------------------------------------------------------------------ checkpoints

    def save(self, model_id: str, name: str, kind: str, overwrite: bool = False,
             user_metadata: dict[str, Any] | None = None) -> str:
        """Write the adapter (and, for "weights", the optimizer) under the state dir; returns the tinker path."""
        run = self.training.get(model_id)
        check_name(name)
        optimizer = run.optimizer.state_dict() if kind == "weights" and run.optimizer is not None else None
        meta = {"base_model": run.base_model, "lora": asdict(run.lora), "step": run.steps,
                "user_metadata": user_metadata or {}}
        return self.checkpoints.write(model_id, name, kind, run.adapter.state(), optimizer, meta, overwrite)

    def load(self, path: str, optimizer: bool, model_id: str, base_model: str | None = None,
             new: bool = True, user_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load a checkpoint into a new training run (create-via-load) or an existing one."""
        meta, state, d, kind = self.checkpoints.read(path)
        if optimizer and kind != "weights":
            raise EngineError(f"{path} holds sampler weights only; load optimizer state from a save_state path")
        if base_model is not None:
            self.resolve_base_model(base_model)
        if new:
            saved_base = meta["base_model"]
            if Path(saved_base).name == self.model_dir.name:
                # the same model served from another path (a moved directory, another pod's mount point):
                # the adapter's shapes are checked when it is loaded
                saved_base = self.model_name
            run = self.create_run(model_id, saved_base, LoraSpec(**meta["lora"]), user_metadata)
        else:
            run = self.training.get(model_id)
        try:
            run.adapter.load_state(state)
        except ValueError as exc:
            if new:
                self.training.drop(model_id)
            raise EngineError(str(exc)) from exc
        run.steps = int(meta.get("step", 0))
        saved_opt = d / "optimizer.pt"
        self.training.load_optimizer(run, torch.load(saved_opt, map_location=self.device)
                                     if optimizer and saved_opt.exists() else None)
        return {"type": "load_weights", "path": path, "model_id": model_id}

    def delete_checkpoint(self, path: str) -> None:
        """Remove a saved checkpoint (404 when there is none) and unload it from the samplers."""
        self.checkpoints.delete(path)
        self.samplers.forget(path)

    # ------------------------------------------------------------------ samplers and sessions

    def create_sampler(self, sampler_id: str, model_path: str | None, base_model: str | None) -> Sampler:
        """A sampling session on saved weights (model_path) or the base model."""
        if model_path:
            meta = self.checkpoints.read(model_path)[0]
            s = Sampler(sampler_id, base_model=meta["base_model"], model_path=model_path,
                        lora=LoraSpec(**meta["lora"]))
        else:
            s = Sampler(sampler_id, base_model=self.resolve_base_model(base_model))
        return self.samplers.add(s)

    def snapshot_sampler(self, model_id: str, sampler_id: str) -> Sampler:
        """A sampling session on the training run's current weights (save_weights_and_get_sampling_client)."""
        run = self.training.get(model_id)
        state = run.adapter.state()
        adapter = self.new_adapter(run.lora)
        adapter.load_state(state)
        path = self.checkpoints.write_snapshot(sampler_id, state)
        return self.samplers.add_snapshot(Sampler(sampler_id, base_model=run.base_model, lora=run.lora,
                                                  snapshot=path), adapter)

    def drop_session(self, session_id: str) -> int:
        """Free the adapters of a finished session's training runs and samplers (checkpoints stay on disk)."""
        prefix = f"{session_id}:"
        runs = [m for m in self.training.runs if m.startswith(prefix)]
        for model_id in runs:
            self.training.drop(model_id)
        samplers = [k for k in self.samplers.sessions if k.startswith(prefix)]
        for sampler_id in samplers:
            self.samplers.drop(sampler_id)
        return len(runs) + len(samplers)

