"""Running a batch of tasks through their workflows: the loop asks for experiences, this decides how.

Each task gets a Task (Trinity's fields), a workflow instance and its own clones of the model wrappers;
a `can_repeat` workflow is asked for all repeat_times runs at once, any other is run repeat_times times.
Up to `in_flight` workflows run at once on one event loop: async workflows are awaited, sync ones run in
a thread pool. A workflow run that raises or overruns explorer.max_timeout is run again, up to
explorer.max_retry_times times (Trinity's rule); after that it is the user's bug: counted, logged once per
kind of error, and the job goes on. A sampler failure (the server went away, a timeout) is not the user's:
it propagates so the loop can reconnect and retry the batch. Experiences come back as this runtime's
Experience whatever class the workflow built them with (trinity-rft's own, when its classes run here).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

from rft_runtime.workflows import requirements, trinity_compat
from rft_runtime.workflows.base import WorkflowError
from rft_runtime.workflows.experience import Experience, as_floats, as_ints, to_runtime_experience
from rft_runtime.workflows.protocol import FormatConfig, GenerationConfig, RewardFn, Task, as_reward_class
from rft_runtime.workflows.registry import get_workflow, resolve_reward_fn

log = logging.getLogger(__name__)


class ErrorOnce:
    """Counts user-code errors and logs each distinct one once (with the task), not once per rollout.

    A quiet one (in a Ray runner actor) logs nothing: the driver replays the outcome's user_errors into its
    own, so an error is logged once per job, not once per actor.
    """

    def __init__(self, what: str, quiet: bool = False):
        self.what = what
        self.quiet = quiet
        self.seen: set[str] = set()

    def __call__(self, error: str, task_index: int, row: Any) -> None:
        """Record one failure of user code on a task."""
        if error in self.seen or self.quiet:
            return
        self.seen.add(error)
        preview = repr(row)
        if len(preview) > 300:
            preview = preview[:300] + "..."
        log.warning("%s raised on task %d (%s); scored as a failed rollout: %s", self.what, task_index,
                    preview, error)


class WorkflowTimeout(Exception):
    """A workflow run that overran explorer.max_timeout."""


@dataclass(frozen=True)
class Pace:
    """How long a batch waits for its tasks (Trinity's explorer.over_rollout): once `min_done` of them are in,
    at most `wait_after_min` seconds more; the tasks still running then are cancelled and dropped, and the
    batch goes on without them."""

    min_done: int
    wait_after_min: float = 0.0


def sampling_failure(exc: BaseException) -> bool:
    """True for errors of the sampler or the connection to it, which the loop recovers from."""
    # an SDK error exists only once the SDK was imported; importing it here would import torch for nothing
    tinker = sys.modules.get("tinker")
    if tinker is not None and isinstance(exc, tinker.TinkerError):
        return True
    return isinstance(exc, (TimeoutError, ConnectionError))


@dataclass
class TaskOutcome:
    """What one task's workflow runs produced."""

    slot: int
    task_index: int
    row: Any
    experiences: list[Experience] = field(default_factory=list)
    failed: int = 0
    truncated_prompts: int = 0
    prompt_tokens: int = 0
    sampled_prompts: int = 0
    longest_truncated: int = 0
    errors: list[str] = field(default_factory=list)
    # ("workflow" | "reward", message) of every user-code error, for the driver's ErrorOnce
    user_errors: list[tuple[str, str]] = field(default_factory=list)
    # which of the stage's tasksets the task comes from
    taskset: int = 0
    # seconds each run took, its retries included (a repeatable workflow's one run is the whole task): what
    # explorer.dynamic_timeout averages
    seconds: list[float] = field(default_factory=list)
    # still running when the batch stopped waiting (explorer.over_rollout): dropped, nothing of it kept
    late: bool = False

    def groups(self) -> list[list[Experience]]:
        """The experiences grouped by their task id (eid.task), in order: one group unless the workflow set a
        task id of its own (math_trainable_ruler's "<task>-ruler" judgements), as Trinity groups them."""
        out: dict[Any, list[Experience]] = {}
        for exp in self.experiences:
            eid = getattr(exp, "eid", None)
            out.setdefault(getattr(eid, "task", None), []).append(exp)
        return list(out.values())


def format_config(cfg: Any, taskset: Any) -> FormatConfig:
    """The taskset's format as Trinity's FormatConfig (explorer_input's system_prompt / reply_prefix as
    fallbacks)."""
    src = taskset.format
    out = FormatConfig()
    for name in FormatConfig.__dataclass_fields__:
        if hasattr(src, name):
            setattr(out, name, getattr(src, name))
    ei = cfg.buffer.explorer_input
    if out.system_prompt is None and ei.system_prompt:
        out.system_prompt = ei.system_prompt
    if out.reply_prefix is None and ei.reply_prefix:
        out.reply_prefix = ei.reply_prefix
    return out


def is_trinity_class(cls: Any) -> bool:
    """Whether a class is (or derives from) one of an installed trinity-rft's own, not the stand-in's."""
    if trinity_compat.real_trinity_root() is None:
        return False
    return any(c.__module__.split(".")[0] == "trinity" for c in getattr(cls, "__mro__", ()))


def reward_class(reward: Any, workflow: type) -> Any:
    """Task.reward_fn as Trinity's workflows take it: a reward class (constructed with reward_fn_args), for a
    registered name, an import path or a function; None stays None. For a trinity-rft workflow class the
    names resolve in trinity-rft's own registry, and the class derives from its RewardFn, which its
    SimpleWorkflow insists on."""
    if reward is None:
        return None
    if is_trinity_class(workflow):
        # trinity-rft is optional and takes seconds to import: only its own workflow classes need its rewards
        from trinity.common.rewards import REWARD_FUNCTIONS
        from trinity.common.rewards import RewardFn as TrinityRewardFn

        if isinstance(reward, str) and reward in REWARD_FUNCTIONS._default_mapping:
            found = REWARD_FUNCTIONS.get(reward)
            trinity_compat.settle()
            return found
        return as_reward_class(resolve_reward_fn(reward), TrinityRewardFn)
    return as_reward_class(resolve_reward_fn(reward), RewardFn)


class WorkflowRunner:
    """Turns data-layer tasks (index, row) into workflow runs on the given model wrappers."""

    def __init__(self, cfg: Any, taskset: Any, *, is_eval: bool = False, quiet: bool = False):
        self.cfg = cfg
        self.taskset = taskset
        self.is_eval = is_eval
        ei = cfg.buffer.explorer_input
        default = ei.default_eval_workflow_type if is_eval else None
        self.workflow_name = taskset.default_workflow_type or default or ei.default_workflow_type or "math_workflow"
        self.workflow_cls = get_workflow(self.workflow_name)
        missing = requirements.missing_packages(self.workflow_name)
        if missing:
            raise WorkflowError(requirements.install_hint(self.workflow_name, missing))
        self.retries = int(cfg.explorer.max_retry_times)
        self.reward_fn = taskset.default_reward_fn_type or ei.default_reward_fn_type
        self.format = format_config(cfg, taskset)
        ra = taskset.rollout_args
        self.rollout = GenerationConfig(
            temperature=ra.temperature, top_p=ra.top_p,
            top_k=cfg.model.top_k if ra.top_k is None else ra.top_k,
            logprobs=ra.logprobs, max_tokens=ra.max_tokens, n=1,
        )
        self.workflow_errors = ErrorOnce("the workflow", quiet)
        self.reward_errors = ErrorOnce("the reward", quiet)
        self._per_row: dict[str, type] = {}
        # the taskset's reward function is resolved now, so that a bad name stops the job before step 1
        self._rewards: dict[tuple[Any, type], Any] = {
            (self.reward_fn, self.workflow_cls): reward_class(self.reward_fn, self.workflow_cls)}

    def _workflow_for(self, row: dict[str, Any]) -> type:
        key = self.format.workflow_key
        name = row.get(key) if key and isinstance(row, dict) else None
        if not name:
            return self.workflow_cls
        if name not in self._per_row:
            self._per_row[name] = get_workflow(name)
        return self._per_row[name]

    def make_task(self, row: dict[str, Any], slot: int, explore_step: int, repeat: int) -> Task:
        """A Trinity Task for one dataset row (its own copies of every mutable part)."""
        reward_fn = self.reward_fn
        key = self.format.reward_fn_key
        if key and isinstance(row, dict) and row.get(key):
            reward_fn = row[key]
        workflow = self._workflow_for(row)
        key = (reward_fn, workflow)
        if key not in self._rewards:
            self._rewards[key] = reward_class(reward_fn, workflow)
        reward_fn = self._rewards[key]
        return Task(
            workflow=workflow, repeat_times=repeat, format_args=deepcopy(self.format),
            rollout_args=deepcopy(self.rollout), workflow_args=deepcopy(dict(self.taskset.workflow_args or {})),
            reward_fn_args=deepcopy(dict(self.taskset.reward_fn_args or {})), is_eval=self.is_eval,
            reward_fn=reward_fn, raw_task=row, batch_id=explore_step, task_id=slot,
        )

    # ------------------------------------------------------------ running

    async def _call(self, wf: Any, pool: ThreadPoolExecutor, timeout: float) -> list[Any]:
        if getattr(type(wf), "is_async", False):
            future = asyncio.ensure_future(wf.run_async())
        else:
            future = asyncio.get_running_loop().run_in_executor(pool, wf.run)
        # asyncio.wait, not wait_for: a TimeoutError the sampler raised inside the workflow must stay
        # distinguishable from the workflow overrunning explorer.max_timeout
        done, _ = await asyncio.wait({future}, timeout=timeout)
        if not done:
            future.cancel()
            raise WorkflowTimeout(f"timed out after explorer.max_timeout ({timeout:.0f}s)")
        return list(future.result() or [])

    async def _run_task(self, outcome: TaskOutcome, task: Task, policy: Any, aux: list[Any], repeat: int,
                        seed: int, pool: ThreadPoolExecutor, timeout: float) -> None:
        cls = task.workflow
        runs = [(0, repeat)] if getattr(cls, "can_repeat", False) else [(r, 1) for r in range(repeat)]
        wrappers: list[Any] = []
        try:
            for run_id, count in runs:
                started = time.monotonic()
                for attempt in range(self.retries + 1):
                    model = policy.clone_with_isolated_history(seed=seed + run_id * 104_729 + attempt * 7)
                    helpers = [a.clone_with_isolated_history() for a in aux]
                    wrappers += [model, *helpers]
                    try:
                        wf = cls(task=task if count == repeat else self._copy_task(task), model=model,
                                 auxiliary_models=helpers or None)
                        if count == repeat and getattr(cls, "can_repeat", False):
                            wf.set_repeat_times(repeat, 0)
                        exps = [to_runtime_experience(e) for e in await self._call(wf, pool, timeout)]
                    except Exception as exc:
                        failure = next((w.sampling_error for w in (model, *helpers) if w.sampling_error), None)
                        if failure is not None:
                            raise failure from exc
                        if sampling_failure(exc):
                            raise
                        if attempt < self.retries:
                            log.debug("workflow run %d of task %s failed (try %d of %d), running it again: %s",
                                      run_id, task.task_id, attempt + 1, self.retries + 1, exc)
                            continue
                        text = str(exc) if isinstance(exc, WorkflowTimeout) else f"{type(exc).__name__}: {exc}"
                        if self.retries:
                            text += f" (tried {self.retries + 1} times: explorer.max_retry_times {self.retries})"
                        self._user_error("workflow", text, outcome)
                        outcome.errors.append(text)
                        outcome.failed += count
                        break
                    for eid in (getattr(e, "eid", None) for e in exps):
                        if eid is None:
                            continue
                        # set by the runner in Trinity too: the explore step, and the task's place in the batch
                        # unless the workflow named a task of its own
                        eid.batch = task.batch_id
                        if eid.task in ("", None):
                            eid.task = task.task_id
                        if not getattr(cls, "can_repeat", False):
                            eid.run = run_id
                    outcome.experiences.extend(exps)
                    break
                outcome.seconds.append(time.monotonic() - started)
        finally:
            for w in wrappers:
                w.close()
            self._count_calls(outcome, wrappers[0::1 + len(aux)])

    def _copy_task(self, task: Task) -> Task:
        # every run of a non-repeatable workflow gets its own copy: workflows may mutate their task
        return Task(workflow=task.workflow, repeat_times=task.repeat_times, format_args=deepcopy(task.format_args),
                    rollout_args=deepcopy(task.rollout_args), workflow_args=deepcopy(task.workflow_args),
                    reward_fn_args=deepcopy(task.reward_fn_args), is_eval=task.is_eval, reward_fn=task.reward_fn,
                    raw_task=task.raw_task, batch_id=task.batch_id, task_id=task.task_id)

    @staticmethod
    def _count_calls(outcome: TaskOutcome, policies: list[Any]) -> None:
        for model in policies:
            for call in model.calls:
                if call.truncated:
                    outcome.truncated_prompts += 1
                    outcome.longest_truncated = max(outcome.longest_truncated, call.prompt_tokens)
                else:
                    outcome.sampled_prompts += 1
                    outcome.prompt_tokens += call.prompt_tokens * call.samples

    def run_batch(self, tasks: list[Any], policy: Any, aux: list[Any], *, explore_step: int, repeat: int,
                  in_flight: int, timeout: float, base_seed: int, slots: list[int] | None = None,
                  pace: Pace | None = None) -> list[TaskOutcome]:
        """Run every task's workflow (at most in_flight at once); outcomes in task order (see run_tasks)."""
        return run_tasks(tasks, [(self, policy)] * len(tasks), aux, explore_step=explore_step, repeat=repeat,
                         in_flight=in_flight, timeout=timeout, base_seed=base_seed, slots=slots, pace=pace)

    def _user_error(self, kind: str, text: str, outcome: TaskOutcome) -> None:
        outcome.user_errors.append((kind, text))
        self.log_user_error(kind, text, outcome)

    def log_user_error(self, kind: str, text: str, outcome: TaskOutcome) -> None:
        """Count and log (once per distinct message) a user-code error of kind "workflow" or "reward"."""
        (self.reward_errors if kind == "reward" else self.workflow_errors)(text, outcome.task_index, outcome.row)

    def _check(self, outcome: TaskOutcome) -> None:
        """Drop what cannot train (prompt-truncated placeholders, malformed experiences); count failures."""
        kept = []
        for exp in outcome.experiences:
            if getattr(exp, "truncate_status", None) == "prompt_truncated":
                continue
            if self.is_eval and getattr(exp, "reward", 0.0) is None:
                # an evaluation workflow may only record metrics (Trinity's math_eval_workflow): nothing trains
                exp.reward = 0.0
            problem = experience_problem(exp)
            if problem is None and (exp.info or {}).get("reward_error"):
                self._user_error("reward", exp.info["reward_error"], outcome)
                outcome.failed += 1
            elif problem is not None:
                self._user_error("workflow", problem, outcome)
                outcome.failed += 1
                continue
            kept.append(exp)
        outcome.experiences = kept


def run_tasks(tasks: list[Any], assigned: list[tuple[WorkflowRunner, Any]], aux: list[Any], *, explore_step: int,
              repeat: int, in_flight: int, timeout: float, base_seed: int, slots: list[int] | None = None,
              pace: Pace | None = None) -> list[TaskOutcome]:
    """Run every task's workflow through its (runner, policy wrapper) (at most in_flight at once, on one event
    loop); outcomes in task order. A batch of several tasksets gives each task its own taskset's runner and
    sampling settings.

    `slots`: each task's place in the whole batch (Task.task_id), when this is a part of it (a Ray runner runs
    one task of the batch at a time); by default their order here. `timeout`: seconds a run may take.
    `pace`: stop waiting once enough tasks are in (the late ones come back with `late` set and nothing else).
    """
    places = list(range(len(tasks))) if slots is None else list(slots)
    outcomes = [TaskOutcome(place, t.index, t.row, taskset=getattr(t, "taskset", 0))
                for place, t in zip(places, tasks, strict=True)]
    late: list[int] = []

    async def main() -> None:
        gate = asyncio.Semaphore(max(1, in_flight))
        pool = ThreadPoolExecutor(max_workers=max(1, in_flight), thread_name_prefix="workflow")

        async def one(slot: int, data_task: Any) -> None:
            async with gate:
                runner, policy = assigned[slot]
                task = runner.make_task(data_task.row, places[slot], explore_step, repeat)
                # reproducible per (step, task, run), different across them
                seed = (base_seed + explore_step * 100_003 + data_task.index * 7_919
                        + getattr(data_task, "taskset", 0) * 1_000_003)
                await runner._run_task(outcomes[slot], task, policy, aux, repeat, seed, pool, timeout)

        jobs = [asyncio.ensure_future(one(s, t)) for s, t in enumerate(tasks)]
        try:
            if pace is None or pace.min_done >= len(jobs):
                await asyncio.gather(*jobs)
            else:
                late.extend(await _until_enough(jobs, pace))
        except BaseException:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            raise
        finally:
            # a sync workflow past its timeout, still running when the sampler failed, or late, cannot be
            # interrupted: it is left to finish on its own thread, its result unused, and the batch goes on
            pool.shutdown(wait=False, cancel_futures=True)

    asyncio.run(main())
    for slot in late:
        old = outcomes[slot]
        outcomes[slot] = TaskOutcome(old.slot, old.task_index, old.row, taskset=old.taskset, late=True)
    for (runner, _), outcome in zip(assigned, outcomes, strict=True):
        if not outcome.late:
            runner._check(outcome)
    return outcomes


async def _until_enough(jobs: list[asyncio.Future[Any]], pace: Pace) -> list[int]:
    """Wait for the jobs until pace.min_done are done and wait_after_min more seconds have passed (or all are
    done); cancel the rest. The indices of the cancelled (late) jobs. A job's own error (a sampling failure)
    propagates: the batch is retried."""
    loop = asyncio.get_running_loop()
    pending = set(jobs)
    deadline: float | None = None
    while pending:
        wait = None if deadline is None else max(0.0, deadline - loop.time())
        done, pending = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        for job in done:
            if job.exception() is not None:
                raise job.exception()  # type: ignore[misc]
        if deadline is None and len(jobs) - len(pending) >= pace.min_done:
            deadline = loop.time() + pace.wait_after_min
        if deadline is not None and loop.time() >= deadline:
            break
    for job in pending:
        job.cancel()
    # a late job's error, raised while it was being cancelled, is not the batch's
    await asyncio.gather(*pending, return_exceptions=True)
    return [i for i, job in enumerate(jobs) if job in pending]


def experience_problem(exp: Any) -> str | None:
    """Why an experience a workflow returned cannot be trained on, or None."""
    if not hasattr(exp, "tokens") or not hasattr(exp, "prompt_length"):
        return f"the workflow returned {type(exp).__name__}, not an Experience"
    n = len(as_ints(exp.tokens)) - int(exp.prompt_length)
    if n < 0 or exp.prompt_length < 1:
        return f"an Experience has prompt_length {exp.prompt_length} but {len(as_ints(exp.tokens))} tokens"
    if exp.reward is None:
        return "an Experience has no reward (set experience.reward)"
    if exp.logprobs is None or len(as_floats(exp.logprobs)) != n:
        got = "none" if exp.logprobs is None else len(as_floats(exp.logprobs))
        return f"an Experience has {got} logprobs for {n} response tokens"
    mask = getattr(exp, "action_mask", None)
    if mask is not None and len(as_ints(mask)) != n:
        return f"an Experience has an action_mask of {len(as_ints(mask))} for {n} response tokens"
    chunks = (getattr(exp, "info", None) or {}).get("prompt_chunks") or []
    if any(getattr(c, "type", "") == "image" and getattr(c, "expected_tokens", None) is None for c in chunks):
        why = (getattr(exp, "info", None) or {}).get("image_count_problem") or \
            "the model's processor could not be loaded with transformers"
        return f"an image's token count is unknown ({why}), so its reply cannot be lined up with the prompt to train on"
    return None
