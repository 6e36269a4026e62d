"""The explorer: tasks -> prompts -> sampled rollouts -> rewards, with bounded concurrency.

One batch is a list of tasks; each task is sampled `repeat_times` times (one request with num_samples, split
so that no more than `runner_per_model x engine_num` rollouts are in flight). A workflow or reward that
raises is the user's bug, not the job's end: it is counted, logged once per kind of error with the task, and
the rollout is scored as failed (reward 0). Prompts over `max_prompt_tokens` are not sampled (the reference
turns them into reward-0 dummies) and are counted as truncated prompts.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rft_runtime.config import JobConfig
from rft_runtime.loop.prompts import PromptEncoder

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """One sampled response to one task, with its reward."""

    task_index: int
    prompt_ids: list[int]
    tokens: list[int]
    logprobs: list[float]
    text: str
    reward: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    failed: bool = False
    advantage: float = 0.0


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

    @property
    def rollouts(self) -> list[Rollout]:
        """All rollouts of the batch, group by group."""
        return [r for g in self.groups for r in g]


class ErrorOnce:
    """Counts user-code errors and logs each distinct one once (with the task), not once per rollout."""

    def __init__(self, what: str):
        self.what = what
        self.seen: set[str] = set()

    def __call__(self, exc: BaseException, task_index: int, row: Any) -> None:
        """Record one failure of user code on a task."""
        key = f"{type(exc).__name__}: {exc}"
        if key in self.seen:
            return
        self.seen.add(key)
        preview = repr(row)
        if len(preview) > 300:
            preview = preview[:300] + "..."
        log.warning("%s raised on task %d (%s); scored as a failed rollout: %s", self.what, task_index,
                    preview, key)


def sampling_params(cfg: JobConfig, seed: int | None) -> Any:
    """SamplingParams from the model section, with the taskset's rollout_args taking precedence."""
    import tinker

    m = cfg.model
    ra = cfg.buffer.explorer_input.taskset.rollout_args
    max_tokens = ra.max_tokens or m.max_response_tokens or 512
    return tinker.SamplingParams(
        max_tokens=max_tokens,
        temperature=m.temperature if ra.temperature is None else ra.temperature,
        top_p=m.top_p if ra.top_p is None else ra.top_p,
        top_k=m.top_k if ra.top_k is None else ra.top_k,
        seed=seed,
    )


class Explorer:
    """Samples and scores one batch of tasks at a time with a given sampling client."""

    def __init__(self, cfg: JobConfig, encoder: PromptEncoder, workflow: Any):
        self.cfg = cfg
        self.encoder = encoder
        self.workflow = workflow
        self.repeat = cfg.algorithm.repeat_times
        self.in_flight = cfg.explorer.runner_per_model * cfg.explorer.rollout_model.engine_num
        self.timeout = float(cfg.explorer.max_timeout)
        self.workflow_errors = ErrorOnce("the workflow")
        self.reward_errors = ErrorOnce("the reward")

    def _prompt(self, task: Any) -> list[int] | None:
        try:
            messages = self.workflow.messages(task.row)
        except Exception as exc:
            self.workflow_errors(exc, task.index, task.row)
            return None
        return self.encoder.prompt_ids(messages)

    def _score(self, task: Any, rollout: Rollout) -> None:
        try:
            score = self.workflow.score(task.row, rollout.text)
            rollout.reward = float(score.reward)
            rollout.metrics = {k: float(v) for k, v in (getattr(score, "metrics", None) or {}).items()}
        except Exception as exc:
            self.reward_errors(exc, task.index, task.row)
            rollout.reward = 0.0
            rollout.failed = True

    def explore(self, tasks: list[Any], sampler: Any, explore_step: int, greedy: bool = False) -> ExploredBatch:
        """Sample repeat_times rollouts for every task (at most `in_flight` at once) and score them.

        Sampling errors propagate (the caller reconnects and retries the batch); user-code errors do not.
        """
        start = time.monotonic()
        batch = ExploredBatch(explore_step=explore_step, groups=[], weight_version=-1, stream_state={})
        base_seed = self.cfg.explorer.rollout_model.seed
        requests: deque[tuple[int, Any, list[int], int, int]] = deque()
        groups: dict[int, list[Rollout]] = {}
        for slot, task in enumerate(tasks):
            ids = self._prompt(task)
            groups[slot] = []
            if ids is None:
                batch.failed_rollouts += self.repeat
                continue
            if self.encoder.too_long(ids):
                batch.truncated_prompts += 1
                continue
            batch.prompt_tokens += len(ids) * self.repeat
            left = self.repeat
            chunk = 0
            while left > 0:
                n = min(left, self.in_flight)
                requests.append((slot, task, ids, n, chunk))
                left -= n
                chunk += 1
        pending: deque[tuple[int, Any, list[int], Any, int]] = deque()
        flying = 0
        params_cache: dict[int, Any] = {}
        while requests or pending:
            while requests and (flying == 0 or flying + requests[0][3] <= self.in_flight):
                slot, task, ids, n, chunk = requests.popleft()
                # reproducible per (step, task, chunk), different across them
                seed = base_seed + explore_step * 100_003 + task.index * 7 + chunk
                if greedy:
                    params = params_cache.setdefault(0, _greedy(sampling_params(self.cfg, base_seed)))
                else:
                    params = sampling_params(self.cfg, seed)
                import tinker

                fut = sampler.sample(prompt=tinker.ModelInput.from_ints(ids), num_samples=n, sampling_params=params)
                pending.append((slot, task, ids, fut, n))
                flying += n
            slot, task, ids, fut, n = pending.popleft()
            resp = fut.result(timeout=self.timeout)
            flying -= n
            for seq in resp.sequences:
                tokens = list(seq.tokens)
                rollout = Rollout(
                    task_index=task.index, prompt_ids=ids, tokens=tokens,
                    logprobs=list(seq.logprobs or [0.0] * len(tokens)), text=self.encoder.decode(tokens),
                )
                self._score(task, rollout)
                batch.failed_rollouts += int(rollout.failed)
                groups[slot].append(rollout)
        batch.groups = [groups[s] for s in range(len(tasks)) if groups[s]]
        batch.time_sampling_s = time.monotonic() - start
        return batch


def _greedy(params: Any) -> Any:
    return params.model_copy(update={"temperature": 0.0, "top_k": -1, "top_p": 1.0})
