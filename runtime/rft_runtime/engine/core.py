"""The model side of the engine: one base model, one peft LoRA adapter per training run and per sampler.

Every method here runs on the server's single compute thread, so adapters can be switched without locks;
the HTTP side only validates requests and queues work.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rft_runtime.engine import losses
from rft_runtime.engine.sampling import (
    SampledSeq,
    SampleJob,
    SampleSpec,
    StopChecker,
    pick_token,
    sequence_generators,
)

log = logging.getLogger("rft.engine")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# loaded sampler adapters kept in memory; older ones are reloaded from disk when asked for again
MAX_SAMPLER_ADAPTERS = 8
ANCHOR = "anchor"


class EngineError(Exception):
    """A request the engine refuses; `status` is the HTTP status the server answers with."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


@dataclass
class LoraSpec:
    """What create_lora_training_client asked for."""

    rank: int
    seed: int
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = True


@dataclass
class TrainRun:
    """One training client's model: its adapter, optimizer and step count."""

    model_id: str
    base_model: str
    lora: LoraSpec
    adapter: str
    params: list[tuple[str, torch.nn.Parameter]] = field(default_factory=list)
    optimizer: torch.optim.AdamW | None = None
    steps: int = 0
    user_metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sampler:
    """One sampling session: the base model, or LoRA weights from a saved path or an in-memory snapshot."""

    sampler_id: str
    base_model: str
    model_path: str | None = None
    lora: LoraSpec | None = None
    snapshot: dict[str, torch.Tensor] | None = None


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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir).expanduser().resolve()
        if not (self.model_dir / "config.json").exists():
            raise EngineError(f"{self.model_dir} is not a model directory (no config.json); "
                              "make one with `rft engine make-model DIR`")
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.max_rank = max_rank
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=torch.float32)
        self.model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        cfg = self.model.config
        self.arch = getattr(cfg, "model_type", "unknown")
        self.max_context = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self.model_name = str(self.model_dir)
        self.groups = self._module_groups()
        # transformers 5 renamed past_key_values to cache (and warns on the old name); older ones lack it
        import inspect

        forward_params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in forward_params else "past_key_values"
        # the prefill of a sample needs only the last position's logits: over a 49k vocabulary and a long
        # prompt, the full [batch, length, vocab] tensor would cost hundreds of MB
        self._logits_to_keep = "logits_to_keep" in forward_params
        self.peft: Any = None
        self.runs: dict[str, TrainRun] = {}
        self.samplers: dict[str, Sampler] = {}
        self.sampler_adapters: OrderedDict[str, str] = OrderedDict()
        self._adapter_counter = 0
        self._active: str | None = None

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

    def _module_groups(self) -> dict[str, list[str]]:
        """Linear layers by LoRA group: attn (q/k/v/o), mlp (gate/up/down), unembed (lm_head)."""
        out_emb = self.model.get_output_embeddings()
        groups: dict[str, list[str]] = {"attn": [], "mlp": [], "unembed": []}
        for name, mod in self.model.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            if mod is out_emb:
                groups["unembed"].append(name)
            elif re.search(r"(attn|attention)", name):
                groups["attn"].append(name)
            elif re.search(r"(mlp|feed_forward|ffn)", name):
                groups["mlp"].append(name)
        return groups

    def _targets(self, lora: LoraSpec) -> list[str]:
        names: list[str] = []
        if lora.train_attn:
            names += self.groups["attn"]
        if lora.train_mlp:
            names += self.groups["mlp"]
        if lora.train_unembed:
            names += self.groups["unembed"]
        if not names:
            raise EngineError("the adapter would cover no layers: set train_mlp, train_attn or train_unembed "
                              "(this model has " + ", ".join(f"{k}: {len(v)}" for k, v in self.groups.items()) + ")")
        return names

    def _new_adapter(self, lora: LoraSpec) -> str:
        from peft import LoraConfig, get_peft_model

        self._adapter_counter += 1
        name = f"a{self._adapter_counter}"
        targets = self._targets(lora)
        cfg = LoraConfig(r=lora.rank, lora_alpha=32, lora_dropout=0.0, bias="none",
                         target_modules="^(" + "|".join(re.escape(t) for t in targets) + ")$")
        # peft draws the A matrices from torch's global generator: seed it so the same seed gives the
        # same adapter, without disturbing the generator for anything else
        if self.peft is None:
            # a rank-1 adapter on one layer that is never trained nor deleted: peft needs one adapter left
            # to stay consistent when finished sessions' adapters are deleted
            anchor_layer = next(names[0] for names in self.groups.values() if names)
            anchor = LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, target_modules=[anchor_layer])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.peft = get_peft_model(self.model, anchor, adapter_name=ANCHOR)
            self.peft.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(lora.seed)
            self.peft.add_adapter(name, cfg)
        self.peft.to(self.device)
        for pname, p in self.peft.named_parameters():
            if f".{name}." in pname:
                p.requires_grad_(False)
        self._active = None
        return name

    def _adapter_params(self, adapter: str) -> list[tuple[str, torch.nn.Parameter]]:
        return sorted((n, p) for n, p in self.peft.named_parameters() if f".{adapter}." in n)

    def _activate(self, adapter: str | None) -> None:
        if adapter is None or self._active == adapter:
            return
        self.peft.base_model.set_adapter(adapter)
        self._active = adapter

    def _adapter_state(self, adapter: str) -> dict[str, torch.Tensor]:
        return {n.replace(f".{adapter}.", ".ADAPTER."): p.detach().to("cpu").clone()
                for n, p in self._adapter_params(adapter)}

    def _load_adapter_state(self, adapter: str, state: dict[str, torch.Tensor]) -> None:
        params = dict(self._adapter_params(adapter))
        want = {n.replace(f".{adapter}.", ".ADAPTER."): n for n in params}
        if set(want) != set(state):
            raise EngineError("checkpoint does not match the adapter's layers (different LoRA settings?)")
        with torch.no_grad():
            for key, pname in want.items():
                params[pname].copy_(state[key].to(self.device))

    def _delete_adapter(self, adapter: str) -> None:
        self.peft.base_model.set_adapter(ANCHOR)
        self._active = None
        self.peft.delete_adapter(adapter)

    # ------------------------------------------------------------------ training runs

    def create_run(self, model_id: str, base_model: str, lora: LoraSpec,
                   user_metadata: dict[str, Any] | None = None) -> TrainRun:
        """A new LoRA adapter and training run named model_id."""
        if model_id in self.runs:
            raise EngineError(f"model {model_id!r} already exists")
        self.check_lora(lora)
        adapter = self._new_adapter(lora)
        run = TrainRun(model_id=model_id, base_model=self.resolve_base_model(base_model), lora=lora,
                       adapter=adapter, user_metadata=dict(user_metadata or {}))
        run.params = self._adapter_params(adapter)
        self.runs[model_id] = run
        log.info("training run %s: rank %d, seed %d, %d adapter tensors", model_id, lora.rank, lora.seed,
                 len(run.params))
        return run

    def check_lora(self, lora: LoraSpec) -> None:
        """EngineError for a rank outside 1..max_rank or an adapter that covers nothing."""
        if not 1 <= lora.rank <= self.max_rank:
            raise EngineError(f"LoRA rank {lora.rank} is outside 1..{self.max_rank} (the engine's --max-rank)")
        self._targets(lora)

    def run(self, model_id: str) -> TrainRun:
        """The training run model_id, or a 404 EngineError."""
        run = self.runs.get(model_id)
        if run is None:
            raise EngineError(f"unknown model_id {model_id!r} (was the engine restarted? create the training "
                              "client again, e.g. from the last saved state)", status=404)
        return run

    def info(self, model_id: str) -> dict[str, Any]:
        """The get_info answer for a training run."""
        run = self.run(model_id)
        return {
            "type": "get_info",
            "model_data": {"arch": self.arch, "model_name": run.base_model, "tokenizer_id": self.model_name},
            "model_id": model_id, "is_lora": True, "lora_rank": run.lora.rank, "model_name": run.base_model,
        }

    def _batch_logprobs(self, tokens: list[list[int]], targets: list[list[int]]) -> list[torch.Tensor]:
        """Per datum, log p(target_t | tokens_<=t) under the active adapter (one padded forward pass)."""
        width = max(len(t) for t in tokens)
        ids = torch.full((len(tokens), width), self.pad_id, dtype=torch.long)
        tgt = torch.zeros((len(tokens), width), dtype=torch.long)
        for i, (t, y) in enumerate(zip(tokens, targets, strict=False)):
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            tgt[i, : len(y)] = torch.tensor(y, dtype=torch.long)
        ids, tgt = ids.to(self.device), tgt.to(self.device)
        model = self.peft if self.peft is not None else self.model
        # no attention mask: padding is on the right and attention is causal, so no real token ever sees a
        # pad, and without a mask SDPA takes its fused causal path (about twice as fast backward on CPU)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        picked = torch.log_softmax(logits, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        return [picked[i, : len(t)] for i, t in enumerate(tokens)]

    def forward_backward(self, model_id: str, data: list[dict[str, Any]], loss_fn: str,
                         loss_cfg: dict[str, Any], forward_only: bool) -> dict[str, Any]:
        """Run the loss over data; accumulate gradients unless forward_only. Returns outputs and metrics."""
        run = self.run(model_id)
        self._activate(run.adapter)
        tokens = [d["tokens"] for d in data]
        targets = [d["inputs"]["target_tokens"].long().tolist() for d in data]
        with torch.set_grad_enabled(not forward_only):
            logps = self._batch_logprobs(tokens, targets)
            total = torch.zeros((), device=self.device)
            elementwise = []
            for logp, d in zip(logps, data, strict=False):
                inputs = {k: v.to(self.device, dtype=torch.float32) for k, v in d["inputs"].items()
                          if k != "target_tokens"}
                per_token = losses.token_losses(loss_fn, logp, inputs, loss_cfg)
                elementwise.append(per_token.detach())
                total = total + per_token.sum()
            if not forward_only and total.requires_grad:
                total.backward()
        return {
            "logprobs": [lp.detach().float().cpu() for lp in logps],
            "elementwise_loss": [e.float().cpu() for e in elementwise],
            "metrics": {"loss:sum": float(total.detach())},
        }

    def optim_step(self, model_id: str, adam: dict[str, Any]) -> dict[str, Any]:
        """One AdamW step (decoupled weight decay, optional global-norm clipping); gradients are cleared."""
        run = self.run(model_id)
        lr = float(adam.get("learning_rate", 1e-4))
        betas = (float(adam.get("beta1", 0.9)), float(adam.get("beta2", 0.95)))
        eps = float(adam.get("eps", 1e-12))
        wd = float(adam.get("weight_decay", 0.0))
        clip = float(adam.get("grad_clip_norm", 0.0) or 0.0)
        params = [p for _, p in run.params]
        if run.optimizer is None:
            run.optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
        for group in run.optimizer.param_groups:
            group.update(lr=lr, betas=betas, eps=eps, weight_decay=wd)
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads \
            else torch.zeros(())
        if clip > 0 and grads and float(norm) > clip:
            scale = clip / (float(norm) + 1e-6)
            for g in grads:
                g.mul_(scale)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.steps += 1
        return {"metrics": {"grad_norm": float(norm), "learning_rate": lr, "step": float(run.steps)}}

    # ------------------------------------------------------------------ checkpoints

    def _ckpt_dir(self, model_id: str, kind: str, name: str) -> Path:
        return self.state_dir / model_id / kind / name

    def checkpoint_dir(self, path: str, missing: str | None = None) -> tuple[Path, str]:
        """(directory, kind) of an existing tinker:// checkpoint, or a 404 EngineError (message `missing`)."""
        model_id, kind, name = parse_tinker_path(path)
        d = self._ckpt_dir(model_id, kind, name)
        if not (d / "meta.json").exists():
            raise EngineError(missing or f"no checkpoint at {path!r} in this engine's state dir {self.state_dir}",
                              status=404)
        return d, kind

    def save(self, model_id: str, name: str, kind: str, overwrite: bool = False,
             user_metadata: dict[str, Any] | None = None) -> str:
        """Write the adapter (and, for "weights", the optimizer) under the state dir; returns the tinker path."""
        run = self.run(model_id)
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise EngineError(f"checkpoint name {name!r} must be 1-128 letters, digits, '.', '_' or '-' "
                              "(starting with a letter or digit)")
        path = f"tinker://{model_id}/{kind}/{name}"
        d = self._ckpt_dir(model_id, kind, name)
        if d.exists():
            if not overwrite:
                raise EngineError(f"a checkpoint named {name!r} already exists for this training run ({path}); "
                                  "choose a new name", status=409)
            shutil.rmtree(d)
        from safetensors.torch import save_file

        tmp = d.with_name(f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(self._adapter_state(run.adapter), str(tmp / "adapter.safetensors"))
        if kind == "weights" and run.optimizer is not None:
            torch.save(run.optimizer.state_dict(), tmp / "optimizer.pt")
        meta = {"base_model": run.base_model, "lora": asdict(run.lora), "step": run.steps, "kind": kind,
                "model_id": model_id, "name": name, "time": time.time(), "user_metadata": user_metadata or {}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        tmp.rename(d)  # whole checkpoints only: a crash mid-save leaves no half-written name behind
        return path

    def _read_ckpt(self, path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path, str]:
        from safetensors.torch import load_file

        d, kind = self.checkpoint_dir(path)
        meta = json.loads((d / "meta.json").read_text())
        return meta, load_file(str(d / "adapter.safetensors")), d, kind

    def load(self, path: str, optimizer: bool, model_id: str, base_model: str | None = None,
             new: bool = True, user_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load a checkpoint into a new training run (create-via-load) or an existing one."""
        meta, state, d, kind = self._read_ckpt(path)
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
            run = self.run(model_id)
        try:
            self._load_adapter_state(run.adapter, state)
        except EngineError:
            if new:
                self.drop_run(model_id)
            raise
        run.steps = int(meta.get("step", 0))
        run.optimizer = None
        if optimizer and (d / "optimizer.pt").exists():
            params = [p for _, p in run.params]
            run.optimizer = torch.optim.AdamW(params, lr=1e-4)
            run.optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location=self.device))
        return {"type": "load_weights", "path": path, "model_id": model_id}

    def drop_run(self, model_id: str) -> None:
        """Forget a training run and free its adapter."""
        run = self.runs.pop(model_id, None)
        if run is not None:
            self._delete_adapter(run.adapter)

    def drop_session(self, session_id: str) -> int:
        """Free the adapters of a finished session's training runs and samplers (checkpoints stay on disk)."""
        prefix = f"{session_id}:"
        runs = [m for m in self.runs if m.startswith(prefix)]
        for model_id in runs:
            self.drop_run(model_id)
        samplers = [k for k in self.samplers if k.startswith(prefix)]
        for sampler_id in samplers:
            del self.samplers[sampler_id]
            self._forget_sampler_adapter(f"snapshot:{sampler_id}")
        return len(runs) + len(samplers)

    def list_checkpoints(self, model_id: str) -> list[dict[str, Any]]:
        """The checkpoints saved by training run model_id (from the state dir, so they survive restarts)."""
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

    def delete_checkpoint(self, path: str) -> None:
        """Remove a saved checkpoint (404 when there is none)."""
        model_id, kind, name = parse_tinker_path(path)
        d, _ = self.checkpoint_dir(path, missing=f"no such checkpoint {kind}/{name} for training run {model_id}")
        shutil.rmtree(d)
        self._forget_sampler_adapter(path)

    # ------------------------------------------------------------------ samplers

    def create_sampler(self, sampler_id: str, model_path: str | None, base_model: str | None) -> Sampler:
        """A sampling session on saved weights (model_path) or the base model."""
        if model_path:
            meta, _, _, _ = self._read_ckpt(model_path)
            s = Sampler(sampler_id, base_model=meta["base_model"], model_path=model_path,
                        lora=LoraSpec(**meta["lora"]))
        else:
            s = Sampler(sampler_id, base_model=self.resolve_base_model(base_model))
        self.samplers[sampler_id] = s
        return s

    def snapshot_sampler(self, model_id: str, sampler_id: str) -> Sampler:
        """A sampling session on the training run's current weights (save_weights_and_get_sampling_client)."""
        run = self.run(model_id)
        s = Sampler(sampler_id, base_model=run.base_model, lora=run.lora,
                    snapshot=self._adapter_state(run.adapter))
        self.samplers[sampler_id] = s
        return s

    def sampler(self, sampler_id: str) -> Sampler:
        """The sampler sampler_id, or a 404 EngineError."""
        s = self.samplers.get(sampler_id)
        if s is None:
            raise EngineError(f"unknown sampling session {sampler_id!r} (was the engine restarted?)", status=404)
        return s

    def _forget_sampler_adapter(self, key: str) -> None:
        adapter = self.sampler_adapters.pop(key, None)
        if adapter is not None:
            self._delete_adapter(adapter)

    def _sampler_adapter(self, s: Sampler) -> str | None:
        if s.lora is None:
            return None
        key = s.model_path or f"snapshot:{s.sampler_id}"
        if key in self.sampler_adapters:
            self.sampler_adapters.move_to_end(key)
            return self.sampler_adapters[key]
        state = s.snapshot if s.snapshot is not None else self._read_ckpt(s.model_path or "")[1]
        adapter = self._new_adapter(s.lora)
        self._load_adapter_state(adapter, state)
        self.sampler_adapters[key] = adapter
        while len(self.sampler_adapters) > MAX_SAMPLER_ADAPTERS:
            old_key = next(iter(self.sampler_adapters))
            self._forget_sampler_adapter(old_key)
        return adapter

    def sample(self, sampler_id: str, prompt: list[int], num_samples: int, spec: SampleSpec,
               prompt_logprobs: bool) -> tuple[list[SampledSeq], list[float] | None]:
        """Generate num_samples continuations of prompt (one KV-cached batch); optionally the prompt's logprobs."""
        job = SampleJob(sampler_id, list(prompt), num_samples, spec, prompt_logprobs)
        self.sample_many([job])
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _sample_key(self, job: SampleJob) -> str | None:
        """Which weights a job samples: None for the base model, else the sampler adapter's cache key."""
        s = self.sampler(job.sampler_id)
        if len(job.prompt) + job.spec.max_tokens > self.max_context:
            raise EngineError(f"prompt ({len(job.prompt)} tokens) + max_tokens ({job.spec.max_tokens}) "
                              f"exceeds the model's context of {self.max_context}")
        return None if s.lora is None else (s.model_path or f"snapshot:{s.sampler_id}")

    def sample_many(self, jobs: list[SampleJob], more: JoinFn | None = None,
                    on_done: Callable[[SampleJob], None] | None = None, max_rows: int | None = None) -> None:
        """Decode many sample requests: those on the same weights share one batch, one forward per token.

        Each job gets its `result` or its own `error` (a bad request fails alone, not the batch), and
        on_done(job) as soon as its sequences are finished. `more(accept, rows)`, when given, is asked at
        every decoding step for further waiting jobs (those `accept` takes, up to `rows` sequences), which
        join the running batch while it holds fewer than max_rows sequences."""
        done = on_done or (lambda job: None)
        cap = max_rows or MAX_JOIN_ROWS
        groups: OrderedDict[str | None, list[SampleJob]] = OrderedDict()
        adapters: dict[str | None, str | None] = {}
        for job in jobs:
            try:
                key = self._sample_key(job)
                if key not in adapters:
                    adapters[key] = self._sampler_adapter(self.sampler(job.sampler_id))
            except Exception as exc:  # handed back with this job only
                job.error = exc
                done(job)
                continue
            groups.setdefault(key, []).append(job)
        for key, group in groups.items():
            adapter = adapters[key]
            # an adapter loaded for a later group may have evicted this one from the LRU: reload it
            if key is not None and key not in self.sampler_adapters:
                adapter = self._sampler_adapter(self.sampler(group[0].sampler_id))

            def accept(job: SampleJob, key: str | None = key) -> bool:
                try:
                    return self._sample_key(job) == key
                except EngineError:
                    return False  # it fails on its own turn, with its own message

            joiner = (lambda rows, accept=accept: more(accept, rows)) if more is not None else None
            started: list[SampleJob] = []
            try:
                if adapter is None:
                    if self.peft is not None:
                        with self.peft.disable_adapter():
                            self._decode(self.peft, group, joiner, done, started, cap)
                    else:
                        self._decode(self.model, group, joiner, done, started, cap)
                else:
                    self._activate(adapter)
                    self._decode(self.peft, group, joiner, done, started, cap)
            except Exception as exc:
                for job in started:
                    if job.result is None and job.error is None:
                        job.error = exc
                        done(job)

    # no_grad, not inference_mode: adapters made here are trained later, and inference tensors cannot be
    @torch.no_grad()
    def _decode(self, model: Any, jobs: list[SampleJob], more: Callable[[int], list[SampleJob]] | None,
                done: Callable[[SampleJob], None], started: list[SampleJob], max_rows: int) -> None:
        """Decode jobs as one batch of rows (one row per sample), each row drawing from its own generator.

        Prompts are prefilled left-padded, once per job, and the cache row repeated per sample; a row leaves
        the batch when it stops, and jobs `more` hands over join it between steps (their cache left-padded
        to the batch's length or the batch's to theirs)."""
        batch = _Rows.prefill(self, model, jobs)
        started.extend(jobs)
        can_join = more is not None and _cache_layers(batch.past) is not None
        while batch.rows:
            for job in batch.pick():
                done(job)
            if not batch.rows:
                break
            batch.step(model)
            room = max_rows - len(batch.rows)
            joiners = more(room) if can_join and more is not None and room > 0 else []
            if joiners:
                # after the step every running row has fresh logits, and the joiners' come from their prefill
                started.extend(joiners)
                batch.merge(_Rows.prefill(self, model, joiners))


JoinFn = Callable[[Callable[[SampleJob], bool], int], list[SampleJob]]
# sequences one decoding batch grows to at most by jobs joining it, unless the caller says otherwise
MAX_JOIN_ROWS = 64


def _cache_layers(cache: Any) -> list[Any] | None:
    """The per-layer key/value holders of a plain dynamic KV cache, or None for any other kind (sliding
    window, quantised, hybrid), which cannot be padded safely: batches on those models never take joiners."""
    from transformers.cache_utils import DynamicCache

    if type(cache) is not DynamicCache:
        return None
    layers = getattr(cache, "layers", None)
    if layers is not None:
        from transformers.cache_utils import DynamicLayer

        if all(type(layer) is DynamicLayer and getattr(layer, "keys", None) is not None for layer in layers):
            return list(layers)
        return None
    return None


class _Rows:
    """The state of one decoding batch: KV cache, attention mask, positions, logits, and which sample of
    which job each row is."""

    def __init__(self, engine: Engine, past: Any, mask: torch.Tensor, pos: torch.Tensor, logits: torch.Tensor,
                 rows: list[tuple[SampleJob, int]], padded: bool):
        self.engine = engine
        self.past, self.mask, self.pos, self.logits = past, mask, pos, logits
        self.rows = rows
        self.padded = padded
        self.gens: dict[int, list[torch.Generator]] = {}
        self.checkers: dict[int, StopChecker] = {}
        self.left: dict[int, int] = {}  # rows still running, per job
        self.seqs: dict[int, list[SampledSeq]] = {}
        self.jobs: dict[int, SampleJob] = {}
        for job, _ in rows:
            jid = id(job)
            if jid not in self.jobs:
                self.jobs[jid] = job
                self.gens[jid] = sequence_generators(job.spec.seed, job.num_samples)
                self.checkers[jid] = StopChecker(job.spec, lambda t: engine.tokenizer.decode(t))
                self.left[jid] = job.num_samples
                self.seqs[jid] = [SampledSeq([], [], "length") for _ in range(job.num_samples)]

    @classmethod
    def prefill(cls, engine: Engine, model: Any, jobs: list[SampleJob]) -> _Rows:
        """One forward over the jobs' prompts (left-padded), the cache repeated to one row per sample."""
        width = max(len(j.prompt) for j in jobs)
        ids = torch.full((len(jobs), width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, j in enumerate(jobs):
            ids[i, width - len(j.prompt):] = torch.tensor(j.prompt, dtype=torch.long)
            mask[i, width - len(j.prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        want_prompt = any(j.prompt_logprobs for j in jobs)
        extra = {} if want_prompt or not engine._logits_to_keep else {"logits_to_keep": 1}
        padded = bool((mask == 0).any())
        dev = engine.device
        out = model(input_ids=ids.to(dev), position_ids=positions.to(dev), use_cache=True,
                    attention_mask=mask.to(dev) if padded else None, **extra)
        if want_prompt:
            lp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
            picked = lp.gather(-1, ids[:, 1:].to(dev).unsqueeze(-1)).squeeze(-1).cpu()
            for i, j in enumerate(jobs):
                if j.prompt_logprobs:
                    j.prompt_lps = [float("nan")] + picked[i, width - len(j.prompt):].tolist()
        past = getattr(out, engine._cache_kw)
        rows = [(j, k) for j in jobs for k in range(j.num_samples)]
        source = torch.tensor([i for i, j in enumerate(jobs) for _ in range(j.num_samples)], dtype=torch.long)
        if len(rows) != len(jobs):
            past.batch_select_indices(source.to(dev))
        logits = out.logits[:, -1].float()[source.to(dev)]
        return cls(engine, past, mask[source], positions[source, -1], logits, rows, padded)

    def pick(self) -> list[SampleJob]:
        """Draw each row's next token from the current logits; drop stopped rows; return finished jobs."""
        logits = self.logits.cpu()
        logp = torch.log_softmax(logits, dim=-1)
        keep: list[int] = []
        self.next_tokens: list[int] = []
        finished: list[SampleJob] = []
        for b, (job, k) in enumerate(self.rows):
            jid = id(job)
            tok = pick_token(logits[b], job.spec, self.gens[jid][k])
            seq = self.seqs[jid][k]
            seq.tokens.append(tok)
            seq.logprobs.append(float(logp[b, tok]))
            if self.checkers[jid].stopped(seq.tokens):
                seq.stop_reason = "stop"
            elif len(seq.tokens) < job.spec.max_tokens:
                keep.append(b)
                self.next_tokens.append(tok)
                continue
            self.left[jid] -= 1
            if self.left[jid] == 0:
                job.result = (self.seqs[jid], job.prompt_lps)
                finished.append(job)
        if len(keep) < len(self.rows):
            sel = torch.tensor(keep, dtype=torch.long)
            if keep:
                self.past.batch_select_indices(sel.to(self.engine.device))
            self.mask, self.pos = self.mask[sel], self.pos[sel]
            self.logits = self.logits[sel.to(self.logits.device)]
            self.rows = [self.rows[b] for b in keep]
        return finished

    def step(self, model: Any) -> None:
        """One forward of every running row's newest token."""
        dev = self.engine.device
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        self.pos = self.pos + 1
        out = model(input_ids=torch.tensor(self.next_tokens, dtype=torch.long, device=dev).view(-1, 1),
                    position_ids=self.pos.view(-1, 1).to(dev), use_cache=True,
                    attention_mask=self.mask.to(dev) if self.padded else None,
                    **{self.engine._cache_kw: self.past})
        self.past = getattr(out, self.engine._cache_kw)
        self.logits = out.logits[:, -1].float()

    def merge(self, other: _Rows) -> None:
        """Append another batch's rows: the shorter cache is left-padded (masked) to the longer one."""
        mine, theirs = _cache_layers(self.past), _cache_layers(other.past)
        assert mine is not None and theirs is not None
        t1, t2 = self.mask.shape[1], other.mask.shape[1]
        width = max(t1, t2)

        def pad(x: torch.Tensor, n: int) -> torch.Tensor:  # left-pad the sequence dimension (-2) by n
            if n == 0:
                return x
            return torch.cat([x.new_zeros(*x.shape[:-2], n, x.shape[-1]), x], dim=-2)

        for a, b in zip(mine, theirs, strict=True):
            a.keys = torch.cat([pad(a.keys, width - t1), pad(b.keys, width - t2)], dim=0)
            a.values = torch.cat([pad(a.values, width - t1), pad(b.values, width - t2)], dim=0)
        self.mask = torch.cat([
            torch.cat([torch.zeros((self.mask.shape[0], width - t1), dtype=torch.long), self.mask], dim=1),
            torch.cat([torch.zeros((other.mask.shape[0], width - t2), dtype=torch.long), other.mask], dim=1),
        ], dim=0)
        self.padded = True
        self.pos = torch.cat([self.pos, other.pos])
        self.logits = torch.cat([self.logits, other.logits.to(self.logits.device)])
        self.rows += other.rows
        for attr in ("gens", "checkers", "left", "seqs", "jobs"):
            getattr(self, attr).update(getattr(other, attr))
