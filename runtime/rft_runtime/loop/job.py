"""A whole job: its stages in order, each continuing from the previous one's weights, resumable.

Steps are numbered across the job (stage 2 of a job whose stage 1 had 10 steps starts at step 11), so the
metrics file and the plot read as one run. On resume, metrics lines past the checkpoint are dropped before
those steps are trained again: every step appears exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rft_runtime.backends.tinker_client import Connection, check_api_key
from rft_runtime.config import JobConfig
from rft_runtime.loop.checkpoints import FILE as BOOK_FILE
from rft_runtime.loop.checkpoints import Bookkeeping
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.prompts import PromptEncoder
from rft_runtime.loop.stage import StageRunner, make_stream
from rft_runtime.loop.sync import WeightBoard
from rft_runtime.loop.trainer import Trainer

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


@dataclass
class JobResult:
    """Where a finished job left its results."""

    job_dir: Path
    steps: int
    state_path: str | None
    sampler_path: str | None
    metrics_port: int | None


def _keep_metrics_upto(job_dir: Path, last_step: int) -> None:
    """Drop metrics lines of steps after the checkpoint being resumed (they are trained again)."""
    path = job_dir / METRICS_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= last_step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue  # a line cut short by a kill
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def _start_over(job_dir: Path) -> None:
    """continue_from_checkpoint: false: set earlier results aside instead of mixing them in."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (METRICS_FILE, BOOK_FILE):
        path = job_dir / name
        if path.exists():
            path.rename(path.with_name(f"{path.stem}.{stamp}{path.suffix}"))


def _make_monitor(cfg: JobConfig, metrics_port: int | None, progress: bool) -> Any:
    from rft_runtime.monitor import Monitor

    mon = Monitor(cfg, cfg.job_dir, metrics_port=metrics_port, progress=progress)
    return mon


def _check_client_side_needs(stages: list[JobConfig]) -> None:
    """Fail before any work when a stage needs a library this machine lacks (torch for a KL term)."""
    from rft_runtime.algorithms import needs_custom_kl_loss

    kl_stages = [s.stage_name or "the job" for s in stages if needs_custom_kl_loss(s)]
    if not kl_stages:
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RunError(
            f"algorithm.kl_loss_fn_args.kl_coef > 0 ({', '.join(kl_stages)}): the KL term is computed on this "
            "machine through the tinker SDK's forward_backward_custom, which needs torch, and torch is not "
            "installed. Install it (`pip install torch==2.13.0`; the CPU build is enough), use the image built "
            "with WITH_ENGINE=true, or set kl_coef: 0"
        ) from None


def _check_workflows(stages: list[JobConfig]) -> None:
    """Import every stage's workflow (and auxiliary model settings) before any work, so that a missing or
    broken one fails the job before the engine starts or a dataset is read."""
    from rft_runtime.workflows.auxiliary import check_auxiliary_models
    from rft_runtime.workflows.runner import WorkflowRunner

    for stage in stages:
        if stage.mode == "train":
            continue
        ei = stage.buffer.explorer_input
        WorkflowRunner(stage, ei.taskset)
        for ts in ei.eval_tasksets:
            WorkflowRunner(stage, ts, is_eval=True)
        check_auxiliary_models(list(stage.explorer.auxiliary_models or []))


def run_job(
    cfg: JobConfig, *, metrics_port: int | None = None, progress: bool = True, monitor: Any = None,
    api_key: str | None = None,
) -> JobResult:
    """Run every stage of the job to the end (resuming from the job directory when allowed)."""
    if api_key is None:
        check_api_key(cfg)  # before any work: no dataset download, no engine start
    stages = cfg.stage_configs()
    _check_client_side_needs(stages)
    _check_workflows(stages)
    job_dir = cfg.job_dir
    job_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.continue_from_checkpoint:
        _start_over(job_dir)
    book = Bookkeeping.load(job_dir)

    streams = [None if str(i) in book.finished_stages else make_stream(s) for i, s in enumerate(stages)]
    totals = [
        int(book.finished_stages[str(i)]["steps"]) if stream is None else stream.total_steps
        for i, stream in enumerate(streams)
    ]
    job_total = sum(totals)
    done_upto = book.latest.global_step if book.latest else 0
    _keep_metrics_upto(job_dir, done_upto)
    if done_upto:
        log.info("resuming %s after step %d of %d", job_dir, done_upto, job_total)

    own_monitor = monitor is None
    mon = monitor if monitor is not None else _make_monitor(cfg, metrics_port, progress)
    conn = Connection(cfg, job_dir, api_key=api_key)
    result = JobResult(job_dir, 0, None, None, getattr(mon, "port", None))
    try:
        tokenizer = None
        if Path(cfg.model.tinker_base_model or "").expanduser().is_dir():
            # local tokenizer: chat templates are checked before the engine starts or anything trains
            tokenizer = conn.tokenizer()
            for stage in stages:
                PromptEncoder(tokenizer, stage.model)
        conn.open()
        trainer = Trainer(stages[0], conn)
        step_base = 0
        prev_state: str | None = None
        prev_sampler: str | None = None
        for index, (stage, stream) in enumerate(zip(stages, streams, strict=True)):
            if stream is None:
                finished = book.finished_stages[str(index)]
                prev_state, prev_sampler = finished["state_path"], finished.get("sampler_path")
                step_base += totals[index]
                continue
            if stage.stage_name:
                log.info("stage %d/%d: %s (%s, %d steps)", index + 1, len(stages), stage.stage_name,
                         stage.algorithm.algorithm_type, stream.total_steps)
            if hasattr(mon, "set_info"):
                mon.set_info(backend=stage.backend, algorithm=stage.algorithm.algorithm_type,
                             base_model=stage.model.tinker_base_model)
            trainer.configure(stage)
            latest = book.latest
            start_step = 0
            if latest is not None and latest.stage_index == index:
                trainer.start(latest.state_path, with_optimizer=True)
                if latest.stream_state:
                    stream.load_state_dict(latest.stream_state)
                start_step = latest.stage_step
            elif prev_state:
                # a new stage keeps the weights but not the optimizer: its lr and algorithm may differ
                trainer.start(prev_state, with_optimizer=False)
            else:
                trainer.start(None)
            if tokenizer is None:
                tokenizer = conn.tokenizer(trainer.client)
            encoder = PromptEncoder(tokenizer, stage.model)
            board = WeightBoard(start_step, None)
            if start_step or prev_state:
                board.publish(start_step, trainer.save_sampler(f"s{index}-resume{start_step:06d}"))
            runner = StageRunner(stage, conn, mon, book, step_base=step_base, job_total=job_total,
                                 stream=stream, encoder=encoder, trainer=trainer, sampler_path=board.path)
            res = runner.run(start_step, board)
            prev_state, prev_sampler = res.state_path, res.sampler_path
            book.finished_stages[str(index)] = {
                "name": stage.stage_name, "steps": totals[index], "state_path": prev_state,
                "sampler_path": prev_sampler,
            }
            book.save(job_dir)
            step_base += totals[index]
        result.steps = step_base
        result.state_path, result.sampler_path = prev_state, prev_sampler
        return result
    finally:
        try:
            if own_monitor:
                mon.close()
        finally:
            conn.close()
