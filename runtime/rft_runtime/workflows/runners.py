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
from rft_runtime.workflows.runner import Pace, TaskOutcome, WorkflowRunner, run_tasks


def prompt_limit(cfg: Any) -> int | None:
    """The longest prompt a rollout samples: model.max_prompt_tokens while prompt truncation is on (Trinity's
    default), None with enable_prompt_truncation false, where a prompt of any length is sampled as long as it
    fits the context. explorer.rollout_model's setting wins, as Trinity fills it from the model section."""
    own = getattr(cfg.explorer.rollout_model, "enable_prompt_truncation", None)
    on = cfg.model.enable_prompt_truncation if own is None else own
    return cfg.model.max_prompt_tokens if on else None


class LocalRunners:
    """The stage's workflows run in this process: at most `in_flight` at once, on a policy wrapper of the
    sampler the caller holds (the explorer's, or a Ray runner actor's own). `tasksets` is the taskset (or the
    list of buffer.explorer_input.tasksets) the tasks come from; each task runs through its own taskset's
    workflow, format and rollout_args (Task.taskset says which)."""

    def __init__(self, cfg: Any, tasksets: Any, tokenizer: Any, *, chat_template: str | None,
                 enable_thinking: bool | None, conn: Any = None, is_eval: bool = False, quiet: bool = False):
        self.cfg = cfg
        self.tasksets = list(tasksets) if isinstance(tasksets, (list, tuple)) else [tasksets]
        self.taskset = self.tasksets[0]
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.enable_thinking = enable_thinking
        self.workflow_runners = [WorkflowRunner(cfg, ts, is_eval=is_eval, quiet=quiet) for ts in self.tasksets]
        self.runner = self.workflow_runners[0]
        self.in_flight = cfg.explorer.runner_per_model * cfg.explorer.rollout_model.engine_num
        self.timeout = float(cfg.explorer.max_timeout)
        rm = cfg.explorer.rollout_model
        self.server = OpenAIServer() if rm.enable_openai_api or cfg.explorer.auxiliary_models else None
        check_auxiliary_models(list(cfg.explorer.auxiliary_models or []))
        self.aux = (AuxiliaryModels(cfg, conn, self.server)
                    if cfg.explorer.auxiliary_models and conn is not None else None)

    def settings(self, greedy: bool, taskset: int = 0) -> ModelSettings:
        """The policy wrapper's settings: the model section, with the taskset's rollout_args first."""
        m = self.cfg.model
        ra = self.tasksets[taskset].rollout_args
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
               model_path: str | None = None, taskset: int = 0) -> Any:
        """The model wrapper workflows get as self.model (cloned per rollout)."""
        ext = self.cfg.model.external_model
        if ext.enable:
            # mode bench with model.external_model: the endpoint stands in for the Tinker sampler
            return ExternalModel(ext, replace(self.settings(greedy, taskset), name=str(ext.model_name)),
                                 where="model.external_model", tokenizer=self.tokenizer)
        return ModelWrapper(sampler, self.tokenizer, self.settings(greedy, taskset), chat_template=self.chat_template,
                            model_path=model_path, model_version=model_version, server=self.server)

    def run(self, tasks: list[Any], sampler: Any, *, explore_step: int, repeat: int, greedy: bool = False,
            version: int = 0, path: str | None = None, in_flight: int | None = None,
            slots: list[int] | None = None, timeout: float | None = None, pace: Pace | None = None,
            ) -> list[TaskOutcome]:
        """Run every task's workflow `repeat` times on `sampler`; one TaskOutcome per task, in task order.

        `in_flight`: how many run at once (explorer.runner_per_model x rollout_model.engine_num by default);
        `slots`: each task's place in the whole batch, when these are a part of it (see run_tasks);
        `timeout`: seconds a run may take (explorer.max_timeout by default); `pace`: stop waiting once enough
        tasks are in (explorer.over_rollout). Sampling errors propagate (the caller reconnects and retries the
        batch); user-code errors do not.
        """
        policies: dict[int, Any] = {}
        for task in tasks:
            which = getattr(task, "taskset", 0)
            if which not in policies:
                policies[which] = self.policy(sampler, greedy=greedy, model_version=version, model_path=path,
                                              taskset=which)
        aux = self.aux.wrappers() if self.aux is not None else []
        if self.server is not None:
            self.server.set_models([*list(policies.values())[:1], *aux])
        assigned = [(self.workflow_runners[getattr(t, "taskset", 0)], policies[getattr(t, "taskset", 0)])
                    for t in tasks]
        return run_tasks(
            tasks, assigned, aux, explore_step=explore_step, repeat=repeat,
            in_flight=self.in_flight if in_flight is None else in_flight,
            timeout=self.timeout if timeout is None else float(timeout),
            base_seed=self.cfg.explorer.rollout_model.seed, slots=slots, pace=pace,
        )

    def log_user_error(self, kind: str, text: str, outcome: TaskOutcome) -> None:
        """Count and log (once per distinct message) a user-code error of the outcome's taskset's workflow."""
        self.workflow_runners[outcome.taskset].log_user_error(kind, text, outcome)

    def close(self) -> None:
        """Stop the loopback OpenAI endpoint, where there is one."""
        if self.server is not None:
            self.server.close()
