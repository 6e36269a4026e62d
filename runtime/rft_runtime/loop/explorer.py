"""The explorer: asks the taskset's workflow for experiences from each batch of tasks, with the current sampler.

What a workflow does with the model (one turn or many, chat or an OpenAI client, a judge) is its own
business (rft_runtime.workflows); the explorer hands it a model wrapper on the current sampler, collects
the Experiences and turns them into Rollouts for the trainer: prompt tokens, response tokens, their
sampler logprobs, and the action mask (1 on the model's own tokens, which alone carry loss). A workflow or
reward that raises is the user's bug, not the job's end: it is counted and logged once per kind of error.
Prompts over `max_prompt_tokens` are not sampled (Trinity turns them into reward-0 placeholders, masked
out) and are counted as truncated prompts; with `enable_prompt_truncation: false` every prompt that fits the
context is sampled, as in Trinity.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from rft_runtime.config import JobConfig
from rft_runtime.data.tasksets import training_tasksets
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.prompts import PromptEncoder
from rft_runtime.workflows.experience import as_floats, as_ints
from rft_runtime.workflows.placement import RunnerError, ray_session, runners_on_ray
from rft_runtime.workflows.runner import Pace, WorkflowRunner
from rft_runtime.workflows.runners import LocalRunners, prompt_limit
from rft_runtime.workflows.single_turn import SingleTurnWorkflow

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """One experience of one task: prompt, response (the model's tokens, and any spliced-in environment
    text whose mask is 0), the sampler's logprobs, and its reward."""

    task_index: int
    prompt_ids: list[int]
    tokens: list[int]
    logprobs: list[float]
    text: str
    reward: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    failed: bool = False
    advantage: float = 0.0
    mask: list[int] | None = None
    # a workflow's Trinity ids (run, step: multi-turn advantages group by them) and info (gigpo's anchor
    # state, teacher logprobs)
    eid: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    # which of buffer.explorer_input.tasksets the task came from (its selector learns from the pass rates)
    taskset: int = 0

    @property
    def loss_mask(self) -> list[int]:
        """1 for every response token that carries loss."""
        return self.mask if self.mask is not None else [1] * len(self.tokens)

    @property
    def trained_tokens(self) -> int:
        """How many response tokens carry loss."""
        return sum(self.loss_mask)


@dataclass
class ExploredBatch:
    """Everything the explorer produced for one explore step."""

    explore_step: int
    groups: list[list[Rollout]]
    weight_version: int
    stream_state: dict[str, Any]
    time_sampling_s: float = 0.0
    time_sync_s: float = 0.0
    prompt_tokens: int = 0
    truncated_prompts: int = 0
    failed_rollouts: int = 0
    # model calls whose prompt was sampled, and the longest prompt that was not
    sampled_prompts: int = 0
    longest_truncated: int = 0
    # explorer-side metrics of the step for its record (the experience pipeline's, over_rollout's, ...)
    metrics: dict[str, float] = field(default_factory=dict)
    # tasks the step did not wait for (explorer.over_rollout): dropped, as Trinity drops them
    late_tasks: int = 0

    @property
    def rollouts(self) -> list[Rollout]:
        """All rollouts of the batch, group by group."""
        return [r for g in self.groups for r in g]


def rollout_from_experience(task_index: int, exp: Any, failed: bool, taskset: int = 0) -> Rollout:
    """A workflow's Experience in the trainer's terms (masked logprobs keep their sampled values)."""
    tokens = as_ints(exp.tokens)
    n = int(exp.prompt_length)
    mask = getattr(exp, "action_mask", None)
    return Rollout(
        task_index=task_index, prompt_ids=tokens[:n], tokens=tokens[n:], logprobs=as_floats(exp.logprobs),
        text=exp.response_text or "", reward=float(exp.reward or 0.0),
        metrics={k: float(v) for k, v in (exp.metrics or {}).items() if isinstance(v, (int, float))},
        failed=failed, mask=None if mask is None else as_ints(mask),
        eid=getattr(exp, "eid", None), info=_info(exp), taskset=taskset,
    )


def _info(exp: Any) -> dict[str, Any]:
    info = dict(getattr(exp, "info", None) or {})
    # what the experience operators read besides info (mask_response_truncated)
    if getattr(exp, "truncate_status", None):
        info.setdefault("truncate_status", exp.truncate_status)
    return info


def explorer_uses_ray(cfg: JobConfig) -> bool:
    """Whether the job's workflow runners are Ray actors (workflows.placement.runners_on_ray); an environment
    that asks for both is the loop's RunError."""
    try:
        return runners_on_ray(cfg)
    except RunnerError as exc:
        raise RunError(str(exc)) from None


class RolloutTimeout:
    """Seconds a workflow run may take: explorer.max_timeout, or with explorer.dynamic_timeout on, Trinity's
    min(max_timeout, mean run time x ratio) once warmup_min_steps steps have finished with every task in.

    A run is what Trinity's scheduler times: a task's runs together for a repeatable workflow, else each run,
    retries included; the mean is over every run of the training steps so far (evaluations take max_timeout
    and are not counted). A run over the timeout is tried again (max_retry_times) and then fails, as with
    max_timeout."""

    def __init__(self, cfg: JobConfig):
        self.max = float(cfg.explorer.max_timeout)
        dt = cfg.explorer.dynamic_timeout
        self.enabled = bool(dt.enable)
        self.warmup = int(dt.warmup_min_steps)
        self.ratio = float(dt.ratio)
        self.total_s = 0.0
        self.runs = 0
        self.whole_steps = 0

    def current(self) -> float:
        """The timeout of the next step's runs."""
        if not self.enabled or self.whole_steps < self.warmup or not self.runs:
            return self.max
        return min(self.max, self.total_s / self.runs * self.ratio)

    def observe(self, outcomes: list[Any]) -> None:
        """Count a training step's run times; a step counts towards the warm-up when none of its tasks was
        late."""
        late = False
        for outcome in outcomes:
            late = late or outcome.late
            self.total_s += sum(outcome.seconds)
            self.runs += len(outcome.seconds)
        if not late:
            self.whole_steps += 1


def over_rollout_pace(cfg: JobConfig) -> Pace | None:
    """Trinity's explorer.over_rollout: wait for ceil(batch_size x (1 - ratio)) tasks, then at most
    wait_after_min seconds more (None when ratio is 0)."""
    over = cfg.explorer.over_rollout
    if not over.ratio:
        return None
    return Pace(min_done=math.ceil(cfg.buffer.batch_size * (1 - float(over.ratio))),
                wait_after_min=float(over.wait_after_min))


class Explorer:
    """Runs one batch of tasks at a time through the tasksets' workflows with a given sampling client: in this
    process, or on the Ray runner actors while the job has a Ray session (evaluation stays in this process)."""

    def __init__(self, cfg: JobConfig, encoder: PromptEncoder, taskset: Any = None, *, is_eval: bool = False,
                 conn: Any = None):
        self.cfg = cfg
        self.encoder = encoder
        self.conn = conn
        if taskset is not None or is_eval:
            self.tasksets = [taskset or cfg.buffer.explorer_input.taskset]
        else:
            self.tasksets = [ts for _, ts in training_tasksets(cfg)]
        self.taskset = self.tasksets[0]
        self.runners = LocalRunners(cfg, self.tasksets, encoder.tokenizer, chat_template=encoder.template,
                                    enable_thinking=encoder.enable_thinking, conn=conn, is_eval=is_eval)
        self.repeat = 1 if is_eval else cfg.algorithm.repeat_times
        self.is_eval = is_eval
        self.pool: Any = None
        self.timeout = RolloutTimeout(cfg)
        self.pace = None if is_eval else over_rollout_pace(cfg)

    def _runners(self) -> Any:
        """The runners a batch goes to: the Ray runner actors once the job has a Ray session, else this
        process's."""
        if (self.pool is None and not self.is_eval and self.conn is not None
                and ray_session() is not None):
            # ray takes a quarter of a second or more to import: only a job whose runners are on Ray pays it
            from rft_runtime.workflows.ray_runners import RunnerPool

            self.pool = RunnerPool(self.cfg, self.runners, self.conn)
        return self.pool or self.runners

    def policy(self, sampler: Any, *, greedy: bool = False, model_version: int = 0,
               model_path: str | None = None) -> Any:
        """The model wrapper workflows get as self.model (cloned per rollout)."""
        return self.runners.policy(sampler, greedy=greedy, model_version=model_version, model_path=model_path)

    def explore(self, tasks: list[Any], sampler: Any, explore_step: int, greedy: bool = False,
                model_version: int = 0, model_path: str | None = None) -> ExploredBatch:
        """Run every task's workflow repeat_times (at most `in_flight` at once) and collect the rollouts.

        Sampling errors propagate (the caller reconnects and retries the batch); user-code errors do not.
        With explorer.over_rollout the step stops waiting once enough tasks are in; the late ones are dropped.
        """
        start = time.monotonic()
        timeout = self.timeout.max if self.is_eval else self.timeout.current()
        try:
            outcomes = self._runners().run(tasks, sampler, explore_step=explore_step, repeat=self.repeat,
                                           greedy=greedy, version=model_version, path=model_path,
                                           timeout=timeout, pace=self.pace)
        except RunnerError as exc:  # the runners cannot go on: the job ends, the batch is not retried
            raise RunError(str(exc)) from exc
        batch = ExploredBatch(explore_step=explore_step, groups=[], weight_version=-1, stream_state={})
        for outcome in outcomes:
            if outcome.late:
                batch.late_tasks += 1
                continue
            batch.failed_rollouts += outcome.failed
            batch.truncated_prompts += outcome.truncated_prompts
            batch.prompt_tokens += outcome.prompt_tokens
            batch.longest_truncated = max(batch.longest_truncated, outcome.longest_truncated)
            for experiences in outcome.groups():
                batch.groups.append([rollout_from_experience(outcome.task_index, e,
                                                             bool((e.info or {}).get("reward_error")),
                                                             outcome.taskset)
                                     for e in experiences])
            batch.sampled_prompts += outcome.sampled_prompts
        batch.time_sampling_s = time.monotonic() - start
        if not self.is_eval:
            self.timeout.observe(outcomes)
            if self.timeout.enabled:
                batch.metrics["rollout/timeout"] = timeout
            if self.pace is not None:
                # Trinity's count of the tasks a step trained on; the rest were late
                batch.metrics["rollout/finished_task_count"] = float(len(outcomes) - batch.late_tasks)
                batch.metrics["rollout/late_task_count"] = float(batch.late_tasks)
                if batch.late_tasks:
                    log.info("explore step %d: %d of %d tasks were in after explorer.over_rollout's wait; the %d "
                             "late ones are dropped", explore_step, len(outcomes) - batch.late_tasks, len(outcomes),
                             batch.late_tasks)
        if batch.failed_rollouts and all(r.failed for r in batch.rollouts):
            raise RunError(all_failed_message(outcomes, batch, explore_step, self.runners.runner.workflow_name))
        return batch

    def close(self) -> None:
        """Stop the Ray runners and the loopback OpenAI endpoint, where there are."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self.runners.close()


def all_failed_message(outcomes: list[Any], batch: ExploredBatch, explore_step: int, workflow: str) -> str:
    """Why a step in which every rollout failed stops the job: the count and the first failure's message."""
    first = next((text for o in outcomes for _, text in o.user_errors), "no message")
    return (f"every rollout of explore step {explore_step} failed ({batch.failed_rollouts} failed, none trained; "
            f"workflow {workflow!r}, each run tried 1 + explorer.max_retry_times times); the first failure: {first}")


# ---------------------------------------------------------------- prompts that do not fit


def prompts_too_long_error(limit: int | None, longest: int, shortest: int | None = None,
                           where: str = "the taskset") -> RunError:
    """The job-ending error for a job none of whose prompts fits model.max_prompt_tokens (limit None: with
    prompt truncation off, none fits the context)."""
    span = f"{shortest} to {longest} tokens" if shortest is not None and shortest != longest else f"{longest} tokens"
    if limit is None:
        return RunError(
            f"no prompt of {where} fits the model's context (model.max_model_len, else max_prompt_tokens + "
            f"max_response_tokens): the prompts are {span} with the chat template and system prompt, so every step "
            "would train on nothing. Raise model.max_model_len, or shorten the prompts")
    return RunError(
        f"no prompt of {where} fits model.max_prompt_tokens ({limit}): the prompts are {span} with the chat "
        f"template and system prompt, and longer prompts are skipped, so every step would train on nothing. "
        f"Raise model.max_prompt_tokens to at least {longest} (and keep max_prompt_tokens + max_response_tokens "
        f"within the model's context), or shorten the prompts"
    )


def check_some_prompt_fits(cfg: JobConfig, encoder: PromptEncoder, stream: Any) -> None:
    """Fail before sampling when the workflow builds its prompt from the row (the single-turn built-ins and
    their subclasses) and no row's prompt fits max_prompt_tokens (`stream`: the stage's, or a list of rows of
    the first taskset). With several tasksets, only when none of them has a prompt that fits."""
    tasksets = [ts for _, ts in training_tasksets(cfg)]
    parts = getattr(stream, "parts", None)
    if parts is None or len(parts) != len(tasksets):
        rows = stream if isinstance(stream, list) else getattr(stream, "rows", [])
        parts, tasksets = [rows], tasksets[:1]
    problems = [_none_fits(cfg, encoder, rows, ts) for rows, ts in zip(parts, tasksets, strict=True)]
    if problems and all(p is not None for p in problems):
        raise problems[0]  # type: ignore[misc]


def _none_fits(cfg: JobConfig, encoder: PromptEncoder, rows: list[dict[str, Any]], taskset: Any) -> RunError | None:
    """The error when no row of the taskset has a prompt within the limit (None: one fits, or it cannot be
    told before the workflow runs). Stops at the first prompt that fits."""
    limit = prompt_limit(cfg)
    if limit is None or not rows:
        return None
    runner = WorkflowRunner(cfg, taskset)
    cls = runner.workflow_cls
    # only where the prompt is exactly messages(row): a workflow with its own run() may prompt otherwise
    if not (issubclass(cls, SingleTurnWorkflow) and cls.run is SingleTurnWorkflow.run and not runner.format.workflow_key):
        return None
    wf = cls(task=runner.make_task({}, 0, 0, 1), model=None)
    lengths = []
    for row in rows:
        wf.reset(runner.make_task(row, 0, 0, 1))
        try:
            ids = encoder.prompt_ids(wf.format_messages())
        except Exception:  # a row the workflow cannot prompt fails later, counted, with its own message
            continue
        if len(ids) <= limit:
            return None
        lengths.append(len(ids))
    return prompts_too_long_error(limit, max(lengths), min(lengths)) if lengths else None
