"""The experience pipeline: each explore step's rollouts pass through the configured operators before the
trainer reads them (Trinity-RFT 0.6's data_processor.experience_pipeline), and the task pipeline runs
before a job's first step.

    pipeline = ExperiencePipeline.for_stage(cfg, stream, decode)   # None when nothing is configured
    groups, metrics = pipeline.process(groups, step)

The operators run in order on the step's task groups. Their metrics come back under
`experience_pipeline/...` for the step's record; pass_rate_calculator's per-task pass rates go to the
taskset's selector (stream.feedback) instead. With save_input (the default) the experiences that entered
the pipeline are kept, one JSON row each, in input_save_path (a .jsonl file or a sqlite:/// URL; default
<job dir>/buffer/explorer_output.db), where Trinity keeps them too.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from rft_runtime.data import juicer
from rft_runtime.data.errors import DataError
from rft_runtime.data.operators import SELECTOR_METRIC, build_operator, operator_problem
from rft_runtime.data.tasksets import training_tasksets

log = logging.getLogger(__name__)

PREFIX = "experience_pipeline/"


def _operators_path(i: int) -> str:
    return f"data_processor.experience_pipeline.operators[{i}]"


def needs_juicer(cfg: Any) -> list[str]:
    """The config paths in this stage that run Data-Juicer."""
    dp = cfg.data_processor
    paths = [_operators_path(i) for i, op in enumerate(dp.experience_pipeline.operators) if op.name == "data_juicer"]
    if dp.task_pipeline is not None and cfg.mode != "bench":
        paths.append("data_processor.task_pipeline")
    return paths


def preflight(stages: list[Any]) -> None:
    """Before any work: every stage's operators can be built here (Data-Juicer installed where needed)."""
    for stage in stages:
        paths = needs_juicer(stage)
        if paths and not juicer.available():
            raise DataError(juicer.missing_message(", ".join(paths)))
        if stage.mode == "train":
            continue
        for i, op in enumerate(stage.data_processor.experience_pipeline.operators):
            problem = operator_problem(op.name, dict(op.args))
            if problem is not None:
                raise DataError(f"{_operators_path(i)}: {problem}")


def task_pipeline_target(cfg: Any) -> tuple[str, Any]:
    """(config path, section) of where a stage's task pipeline writes: task_pipeline.output, else (as in
    Trinity) the taskset, or in mode train the dataset the trainer reads."""
    if cfg.data_processor.task_pipeline.output is not None:
        return "data_processor.task_pipeline.output", cfg.data_processor.task_pipeline.output
    if cfg.mode == "train":
        return "buffer.trainer_input.experience_buffer", cfg.buffer.trainer_input.experience_buffer
    return training_tasksets(cfg)[0]


def run_task_pipelines(stages: list[Any], resuming: bool) -> None:
    """Run each stage's task pipeline into its taskset's path (its output.jsonl), before any stream reads it.

    As in Trinity an existing output is not overwritten: a new job whose output is already there stops, a
    resumed one reads the tasks the first run made.
    """
    for stage in stages:
        tp = stage.data_processor.task_pipeline
        if tp is None or stage.mode not in ("both", "explore", "train"):
            continue
        where, target = task_pipeline_target(stage)
        if not target.path:
            raise DataError(f"data_processor.task_pipeline writes its tasks into {where}.path: set it (a folder)")
        out = juicer.output_file(target.path)
        if out.exists():
            if resuming:
                log.info("task pipeline: %s exists from the first run of this job; reading it", out)
                continue
            raise DataError(f"data_processor.task_pipeline: {out} already exists; choose another taskset path "
                            "so that earlier output is not overwritten, or remove it", path=str(out))
        juicer.run_task_pipeline(tp, target.path, stage.job_dir / "data_juicer")


class _InputStore:
    """Where the experiences entering the pipeline are kept (save_input)."""

    def __init__(self, where: str):
        self.where = where
        self.sqlite: Path | None = None
        self.jsonl: Path | None = None
        if where.startswith("sqlite:///"):
            self.sqlite = Path(where[len("sqlite:///"):])
        elif where.endswith((".jsonl", ".json")):
            self.jsonl = Path(where)
        else:
            raise DataError(f"data_processor.experience_pipeline.input_save_path {where!r} is neither a .jsonl "
                            "file nor a sqlite:/// URL")
        path = self.sqlite or self.jsonl
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Append one step's experiences."""
        if self.jsonl is not None:
            with self.jsonl.open("a") as fh:
                fh.writelines(json.dumps({"explore_step": step, **r}) + "\n" for r in rows)
            return
        assert self.sqlite is not None
        with sqlite3.connect(self.sqlite) as db:
            db.execute("CREATE TABLE IF NOT EXISTS experiences (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                       "explore_step INTEGER, task_index INTEGER, reward REAL, data TEXT)")
            db.executemany("INSERT INTO experiences (explore_step, task_index, reward, data) VALUES (?, ?, ?, ?)",
                           [(step, r["task_index"], r["reward"], json.dumps(r)) for r in rows])


def _row(rollout: Any) -> dict[str, Any]:
    reward = float(rollout.reward)
    return {"task_index": int(rollout.task_index), "reward": reward if math.isfinite(reward) else None,
            "prompt_ids": list(rollout.prompt_ids), "tokens": list(rollout.tokens),
            "logprobs": list(rollout.logprobs), "response_text": rollout.text, "metrics": dict(rollout.metrics),
            "info": {k: v for k, v in rollout.info.items() if isinstance(v, (str, int, float, bool, type(None)))}}


class ExperiencePipeline:
    """The configured operators, in order, over each explore step's task groups."""

    def __init__(self, operators: list[tuple[str, Any]], store: _InputStore | None = None, stream: Any = None):
        self.operators = operators
        self.store = store
        self.stream = stream

    @classmethod
    def for_stage(cls, cfg: Any, stream: Any = None, decode: Any = None) -> ExperiencePipeline | None:
        """The pipeline of a stage that explores (None when it has no operators and keeps nothing)."""
        ep = cfg.data_processor.experience_pipeline
        if cfg.mode == "train" or (not ep.operators and ep.input_save_path is None):
            return None
        ops = []
        for i, op in enumerate(ep.operators):
            runtime = {"work_dir": cfg.job_dir / "data_juicer"} if op.name == "data_juicer" else {}
            try:
                built = build_operator(op.name, dict(op.args), **runtime)
            except DataError as exc:
                raise DataError(f"{_operators_path(i)}: {exc}") from exc
            if hasattr(built, "decode"):
                built.decode = decode
            ops.append((f"{i}_{op.name}", built))
        store = None
        if ep.save_input:
            where = ep.input_save_path or f"sqlite:///{cfg.job_dir / 'buffer' / 'explorer_output.db'}"
            store = _InputStore(where)
        return cls(ops, store, stream)

    def process(self, groups: list[list[Any]], step: int) -> tuple[list[list[Any]], dict[str, float]]:
        """The groups the operators kept, and the step's pipeline metrics (selector feedback is handed on)."""
        start = time.monotonic()
        if self.store is not None:
            self.store.write(step, [_row(r) for g in groups for r in g])
        metrics: dict[str, float] = {}
        feedback: dict[Any, Any] = {}
        for name, op in self.operators:
            t0 = time.monotonic()
            groups, out = op.process(groups)
            feedback.update(out.pop(SELECTOR_METRIC, {}))
            metrics.update({f"{PREFIX}{k}": float(v) for k, v in out.items() if isinstance(v, (int, float))})
            metrics[f"{PREFIX}time/operator/{name}"] = time.monotonic() - t0
        metrics[f"{PREFIX}experience_count"] = float(sum(len(g) for g in groups))
        metrics[f"{PREFIX}time/total"] = time.monotonic() - start
        if feedback and self.stream is not None and hasattr(self.stream, "feedback"):
            # each taskset's rows' pass rates teach its selector
            for taskset, data in feedback.items():
                self.stream.feedback(list(data["indices"]), list(data["values"]), taskset=int(taskset))
        return groups, metrics

    def apply(self, batch: Any) -> Any:
        """Run the pipeline on an ExploredBatch in place: its groups are replaced, its metrics extended."""
        batch.groups, metrics = self.process(batch.groups, batch.explore_step)
        batch.metrics.update(metrics)
        return batch
