"""The one run path of a job's workflows, in this process or inside a Ray runner actor (workflows.ray_runners).

`LocalRunners` holds the taskset's WorkflowRunner, builds the policy wrapper on whatever sampler its caller
holds, and owns the auxiliary models and the loopback OpenAI endpoint. The explorer runs a batch through it
in this process; a Ray runner actor holds one of its own and runs one task of a batch at a time through it,
so the two cannot drift apart. Both kinds of runners answer `run(tasks, sampler, ...)` with one TaskOutcome
per task, in task order; the loop turns those into rollouts. Where they run is workflows.placement's call.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rft_runtime.workflows.auxiliary import AuxiliaryModels, check_auxiliary_models
from rft_runtime.workflows.external import ExternalModel
from rft_runtime.workflows.model import ModelSettings, ModelWrapper
from rft_runtime.workflows.openai_server import OpenAIServer
from rft_runtime.workflows.runner import TaskOutcome, WorkflowRunner


def prompt_limit(cfg: Any) -> int | None:
    """The longest prompt a rollout samples: model.max_prompt_tokens while prompt truncation is on (Trinity's
    default), None with enable_prompt_truncation false, where a prompt of any length is sampled as long as it
    fits the context. explorer.rollout_model's setting wins, as Trinity fills it from the model section."""
    own = getattr(cfg.explorer.rollout_model, "enable_prompt_truncation", None)
    on = cfg.model.enable_prompt_truncation if own is None else own
    return cfg.model.max_prompt_tokens if on else None


class LocalRunners:
    """The taskset's workflows run in this process: at most `in_flight` at once, on a policy wrapper of the
    sampler the caller holds (the explorer's, or a Ray runner actor's own)."""

    def __init__(self, cfg: Any, taskset: Any, tokenizer: Any, *, chat_template: str | None,
                 enable_thinking: bool | None, conn: Any = None, is_eval: bool = False, quiet: bool = False):
        self.cfg = cfg
        self.taskset = taskset
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.enable_thinking = enable_thinking
        self.runner = WorkflowRunner(cfg, taskset, is_eval=is_eval, quiet=quiet)
        self.in_flight = cfg.explorer.runner_per_model * cfg.explorer.rollout_model.engine_num
        self.timeout = float(cfg.explorer.max_timeout)
        rm = cfg.explorer.rollout_model
        self.server = OpenAIServer() if rm.enable_openai_api or cfg.explorer.auxiliary_models else None
        check_auxiliary_models(list(cfg.explorer.auxiliary_models or []))
        self.aux = (AuxiliaryModels(cfg, conn, self.server)
                    if cfg.explorer.auxiliary_models and conn is not None else None)

    def settings(self, greedy: bool) -> ModelSettings:
        """The policy wrapper's settings: the model section, with the taskset's rollout_args first."""
        m = self.cfg.model
        ra = self.taskset.rollout_args
        rm = self.cfg.explorer.rollout_model
        return ModelSettings(
            name=m.model_path or m.tinker_base_model or "policy",
            max_tokens=int(ra.max_tokens or m.max_response_tokens or 512),
            temperature=m.temperature if ra.temperature is None else ra.temperature,
            top_p=m.top_p if ra.top_p is None else ra.top_p,
            top_k=m.top_k if ra.top_k is None else ra.top_k,
            max_prompt_tokens=prompt_limit(self.cfg), max_model_len=m.context_len,
            enable_thinking=self.enable_thinking, enable_history=rm.enable_history,
            enable_openai_api=rm.enable_openai_api, greedy=greedy, timeout=self.timeout,
        )

    def policy(self, sampler: Any, *, greedy: bool = False, model_version: int = 0,
               model_path: str | None = None) -> Any:
        """The model wrapper workflows get as self.model (cloned per rollout)."""
        ext = self.cfg.model.external_model
        if ext.enable:
            # mode bench with model.external_model: the endpoint stands in for the Tinker sampler
            return ExternalModel(ext, replace(self.settings(greedy), name=str(ext.model_name)),
                                 where="model.external_model", tokenizer=self.tokenizer)
        return ModelWrapper(sampler, self.tokenizer, self.settings(greedy), chat_template=self.chat_template,
                            model_path=model_path, model_version=model_version, server=self.server)

    def run(self, tasks: list[Any], sampler: Any, *, explore_step: int, repeat: int, greedy: bool = False,
            version: int = 0, path: str | None = None, in_flight: int | None = None,
            slots: list[int] | None = None) -> list[TaskOutcome]:
        """Run every task's workflow `repeat` times on `sampler`; one TaskOutcome per task, in task order.

        `in_flight`: how many run at once (explorer.runner_per_model x rollout_model.engine_num by default);
        `slots`: each task's place in the whole batch, when these are a part of it (see WorkflowRunner).
        Sampling errors propagate (the caller reconnects and retries the batch); user-code errors do not.
        """
        policy = self.policy(sampler, greedy=greedy, model_version=version, model_path=path)
        aux = self.aux.wrappers() if self.aux is not None else []
        if self.server is not None:
            self.server.set_models([policy, *aux])
        return self.runner.run_batch(
            tasks, policy, aux, explore_step=explore_step, repeat=repeat,
            in_flight=self.in_flight if in_flight is None else in_flight, timeout=self.timeout,
            base_seed=self.cfg.explorer.rollout_model.seed, slots=slots,
        )

    def close(self) -> None:
        """Stop the loopback OpenAI endpoint, where there is one."""
        if self.server is not None:
            self.server.close()
