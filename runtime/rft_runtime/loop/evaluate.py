"""Scoring a model's weights on held-out tasks (greedy decoding, one sample per task)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from rft_runtime.backends.tinker_client import Connection
from rft_runtime.config import JobConfig
from rft_runtime.loop.explorer import Explorer
from rft_runtime.loop.prompts import PromptEncoder


@dataclass
class EvalResult:
    """Mean accuracy and reward over the tasks, and a few responses to show."""

    accuracy: float
    reward: float
    tasks: int
    examples: list[tuple[str, str]]


def evaluate(
    cfg: JobConfig, conn: Connection, rows: list[dict[str, Any]], sampler_path: str | None,
    encoder: PromptEncoder | None = None,
) -> EvalResult:
    """Greedy-decode every row with the sampler weights at `sampler_path` (None: the base model)."""
    from rft_runtime.data.tasksets import Task
    from rft_runtime.loop.stage import make_workflow

    eval_cfg = cfg.model_copy(deep=True)
    eval_cfg.algorithm.repeat_times = 1
    encoder = encoder or PromptEncoder(conn.tokenizer(), cfg.model)
    workflow = make_workflow(eval_cfg)
    explorer = Explorer(eval_cfg, encoder, workflow)
    sampler = conn.sampling_client(sampler_path, timeout=float(cfg.synchronizer.sync_timeout))
    tasks = [Task(i, row, 0) for i, row in enumerate(rows)]
    batch = explorer.explore(tasks, sampler, explore_step=0, greedy=True)
    rollouts = batch.rollouts
    if not rollouts:
        return EvalResult(0.0, 0.0, 0, [])
    accuracy = statistics.fmean(r.metrics.get("accuracy", float(r.reward > 0)) for r in rollouts)
    reward = statistics.fmean(r.reward for r in rollouts)
    prompt_key = cfg.buffer.explorer_input.taskset.format.prompt_key
    examples = [(str(rows[r.task_index].get(prompt_key)), r.text) for r in rollouts[:3]]
    return EvalResult(accuracy, reward, len(rollouts), examples)
