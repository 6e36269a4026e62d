"""Training runs: one LoRA adapter, its AdamW optimizer and its step count per training client."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rft_runtime.engine import losses
from rft_runtime.engine.errors import EngineError
from rft_runtime.engine.lora import Adapter, LoraSpec
from rft_runtime.engine.threads import ThreadTuner
from rft_runtime.engine.transformer import Transformer

log = logging.getLogger("rft.engine")

# memory a forward_backward may keep for its backward at once (RFT_ENGINE_TRAIN_MB): bigger batches are run
# in chunks of datums. Each chunk streams every weight through the forward and the backward and runs all their
# small ops again, so fewer chunks are faster (SmolLM2-135M's 932 tokens: 1.84-1.94 s in one chunk, 1.92-2.00 s
# in two, in process on 2 cores), but one chunk of 932 tokens took the engine with a sampler past 2 GiB
# (2.06 GB). 384 MB is about 660 tokens of SmolLM2-135M (train_ops keeps 0.6 MB a token), two chunks for
# that batch, and the engine peaks well under 2 GiB
TRAIN_MB = 384


def train_chunk_tokens(tf: Transformer) -> int:
    """Tokens one chunk of a forward_backward holds at most."""
    env = os.environ.get("RFT_ENGINE_TRAIN_MB", "")
    mb = int(env) if env.isdigit() and int(env) > 0 else TRAIN_MB
    return max(1, mb * 2**20 // tf.activation_bytes())


@dataclass
class TrainRun:
    """One training client's model: its adapter, optimizer and step count."""

    model_id: str
    base_model: str
    lora: LoraSpec
    adapter: Adapter
    params: list[tuple[str, torch.nn.Parameter]] = field(default_factory=list)
    optimizer: torch.optim.AdamW | None = None
    steps: int = 0
    user_metadata: dict[str, Any] = field(default_factory=dict)


class TrainingRuns:
    """Every training run of the engine, by model id."""

    def __init__(self, tf: Transformer, new_adapter: Callable[[LoraSpec], Adapter], threads: ThreadTuner):
        self.tf = tf
        self.new_adapter = new_adapter
        self.threads = threads
        self.runs: dict[str, TrainRun] = {}

    def create(self, model_id: str, base_model: str, lora: LoraSpec,
               user_metadata: dict[str, Any] | None = None) -> TrainRun:
        """A new LoRA adapter and training run named model_id (base_model already resolved)."""
        if model_id in self.runs:
            raise EngineError(f"model {model_id!r} already exists")
        adapter = self.new_adapter(lora)
        run = TrainRun(model_id=model_id, base_model=base_model, lora=lora, adapter=adapter,
                       user_metadata=dict(user_metadata or {}))
        adapter.trainable()
        run.params = adapter.named_parameters()
        self.runs[model_id] = run
        log.info("training run %s: rank %d, seed %d, %d adapter tensors", model_id, lora.rank, lora.seed,
                 len(run.params))
        return run

    def get(self, model_id: str) -> TrainRun:
        """The training run model_id, or a 404 EngineError."""
        run = self.runs.get(model_id)
        if run is None:
            raise EngineError(f"unknown model_id {model_id!r} (was the engine restarted? create the training "
                              "client again, e.g. from the last saved state)", status=404)
        return run

    def drop(self, model_id: str) -> bool:
        """Forget a training run (its adapter and optimizer go with it); False when there was none."""
        return self.runs.pop(model_id, None) is not None

    def forward_backward(self, model_id: str, data: list[dict[str, Any]], loss_fn: str,
                         loss_cfg: dict[str, Any], forward_only: bool) -> dict[str, Any]:
        """Run the loss over data; accumulate gradients unless forward_only. Returns outputs and metrics."""
        run = self.get(model_id)
        dev = self.tf.device
        logps: list[torch.Tensor] = []
        elementwise: list[torch.Tensor] = []
        total = 0.0
        # the loss is a sum over datums, so chunks of them give the same gradients as one pass, and bound the
        # memory the backward keeps (train_chunk_tokens)
        for chunk in self.chunks(data):

            def one_chunk(chunk: list[dict[str, Any]] = chunk) -> tuple[list[torch.Tensor], torch.Tensor]:
                tokens = [d["tokens"] for d in chunk]
                targets = [d["inputs"]["target_tokens"].long().tolist() for d in chunk]
                with torch.set_grad_enabled(not forward_only):
                    chunk_logps = self.tf.logprobs(tokens, targets, run.adapter)
                    loss = torch.zeros((), device=dev)
                    for logp, d in zip(chunk_logps, chunk, strict=True):
                        inputs = {k: v.to(dev, dtype=torch.float32) for k, v in d["inputs"].items()
                                  if k != "target_tokens"}
                        per_token = losses.token_losses(loss_fn, logp, inputs, loss_cfg)
                        elementwise.append(per_token.detach().float().cpu())
                        loss = loss + per_token.sum()
                    if not forward_only and loss.requires_grad:
                        loss.backward()
                return chunk_logps, loss

            chunk_logps, loss = self.threads.run("forward" if forward_only else "forward_backward", one_chunk,
                                                 units=sum(len(d["tokens"]) for d in chunk))
            logps += [lp.detach().float().cpu() for lp in chunk_logps]
            total += float(loss.detach())
            del chunk_logps, loss
        return {"logprobs": logps, "elementwise_loss": elementwise, "metrics": {"loss:sum": total}}

    def chunks(self, data: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Consecutive datums in groups of at most train_chunk_tokens tokens (a longer datum alone)."""
        budget = train_chunk_tokens(self.tf)
        out: list[list[dict[str, Any]]] = []
        size = 0
        for d in data:
            n = len(d["tokens"])
            if out and size + n <= budget:
                out[-1].append(d)
                size += n
            else:
                out.append([d])
                size = n
        return out

    def optim_step(self, model_id: str, adam: dict[str, Any]) -> dict[str, Any]:
        """One AdamW step (decoupled weight decay, optional global-norm clipping); gradients are cleared."""
        run = self.get(model_id)
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

    def load_optimizer(self, run: TrainRun, state: dict[str, Any] | None) -> None:
        """Start the run's optimizer from a saved state (None: a fresh one at its first step)."""
        run.optimizer = None
        if state is not None:
            run.optimizer = torch.optim.AdamW([p for _, p in run.params], lr=1e-4)
            run.optimizer.load_state_dict(state)
