"""Scoring a model's weights on held-out tasks (greedy decoding, one sample per task)."""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

from rft_runtime.backends.tinker_client import Connection
from rft_runtime.config import JobConfig
from rft_runtime.data.tasksets import Task, load_rows
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
    encoder = encoder or PromptEncoder.for_stage(conn.tokenizer(), cfg)
    explorer = Explorer(cfg, encoder, is_eval=True, conn=conn)
    # an external model (mode bench) answers from its own endpoint: no Tinker sampler is made
    sampler = None if cfg.model.external_model.enable else conn.sampling_client(
        sampler_path, timeout=float(cfg.synchronizer.sync_timeout))
    tasks = [Task(i, row, 0) for i, row in enumerate(rows)]
    try:
        batch = explorer.explore(tasks, sampler, explore_step=0, greedy=True, model_path=sampler_path)
    finally:
        explorer.close()
    rollouts = batch.rollouts
    if not rollouts:
        return EvalResult(0.0, 0.0, 0, [])
    accuracy = statistics.fmean(r.metrics.get("accuracy", float(r.reward > 0)) for r in rollouts)
    reward = statistics.fmean(r.reward for r in rollouts)
    prompt_key = cfg.buffer.explorer_input.taskset.format.prompt_key
    examples = [(str(rows[r.task_index].get(prompt_key)), r.text) for r in rollouts[:3]]
    return EvalResult(accuracy, reward, len(rollouts), examples)


def eval_config(cfg: JobConfig, taskset: Any) -> JobConfig:
    """The job config with an eval taskset in the taskset's place (its format, workflow and rollout args)."""
    out = cfg.model_copy(deep=True)
    out.buffer.explorer_input.taskset = taskset
    out.buffer.explorer_input.tasksets = []
    return out


class EvalRunner:
    """Evaluates buffer.explorer_input.eval_tasksets every explorer.eval_interval steps into eval.jsonl.

    Eval results are not train steps, so they go to their own file and log line rather than metrics.jsonl.
    """

    def __init__(self, cfg: JobConfig, conn: Connection, encoder: PromptEncoder, job_dir: Any):
        self.cfg = cfg
        self.conn = conn
        self.encoder = encoder
        self.path = job_dir / "eval.jsonl"
        eval_sets = cfg.buffer.explorer_input.eval_tasksets
        self.places = [f"buffer.explorer_input.eval_tasksets[{i}]" for i in range(len(eval_sets))]
        self.sets = [(ts, load_rows(ts, where=where)) for where, ts in zip(self.places, eval_sets, strict=True)]

    def due(self, step: int, last: bool) -> bool:
        """True at every eval_interval-th step and at the last one (when there is anything to evaluate)."""
        return bool(self.sets) and (last or step % self.cfg.explorer.eval_interval == 0)

    def run(self, global_step: int, sampler_path: str | None) -> list[dict[str, Any]]:
        """Evaluate every eval taskset with the sampler weights at sampler_path; append and return the lines."""
        lines = []
        for i, (ts, rows) in enumerate(self.sets):
            if ts.storage_type == "sql":
                # a table is read whole at each evaluation, as Trinity reads it: rows added since count
                rows = load_rows(ts, where=self.places[i])
            res = evaluate(eval_config(self.cfg, ts), self.conn, rows, sampler_path, self.encoder)
            line = {"step": global_step, "taskset": ts.name or str(ts.path), "accuracy": res.accuracy,
                    "reward_mean": res.reward, "tasks": res.tasks, "timestamp": time.time()}
            logging.getLogger(__name__).info("eval at step %d on %s: accuracy %.3f, reward %.3f (%d tasks)",
                                             global_step, line["taskset"], res.accuracy, res.reward, res.tasks)
            with self.path.open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            lines.append(line)
        return lines
