"""A whole job: its stages in order, each continuing from the previous one's weights, resumable.

Steps are numbered across the job (stage 2 of a job whose stage 1 had 10 steps starts at step 11), so the
metrics file and the plot read as one run. On resume, metrics lines past the checkpoint are dropped before
those steps are trained again: every step appears exactly once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rft_runtime.algorithms import loss_plan
from rft_runtime.backends.tinker_client import Connection, check_api_key, check_local_model
from rft_runtime.config import JobConfig
from rft_runtime.config.loop_rules import ROLE_MODES
from rft_runtime.data import pipeline
from rft_runtime.data.tasksets import training_tasksets
from rft_runtime.loop import roles
from rft_runtime.loop.checkpoints import FILE as BOOK_FILE
from rft_runtime.loop.checkpoints import Bookkeeping
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.explorer import explorer_uses_ray
from rft_runtime.loop.prompts import PromptEncoder
from rft_runtime.loop.stage import StageRunner, make_stream, stage_label, stage_steps
from rft_runtime.loop.trainer import Trainer
from rft_runtime.monitor import Monitor
from rft_runtime.workflows.auxiliary import check_auxiliary_models
from rft_runtime.workflows.runner import WorkflowRunner

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"



@dataclass
class JobResult:
    """Where a finished job left its results."""

    job_dir: Path
    steps: int
    state_path: str | None
    sampler_path: str | None
    metrics_port: int | None
    already_finished: bool = False  # an earlier run finished it; this one trained nothing
    summary: str | None = None  # what `rft run` prints for a mode that trains nothing (explore, bench, serve)


def _keep_metrics_upto(job_dir: Path, last_step: int) -> int:
    """Drop metrics lines of steps after the checkpoint being resumed (they are trained again).

    Returns the last step the dropped lines reached (0 when nothing was dropped).
    """
    path = job_dir / METRICS_FILE
    if not path.exists():
        return 0
    kept = []
    dropped_upto = 0
    for line in path.read_text().splitlines():
        try:
            step = int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError):
            continue  # a line cut short by a kill
        if step <= last_step:
            kept.append(line)
        else:
            dropped_upto = max(dropped_upto, step)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)
    return dropped_upto


def _say_how_it_resumes(cfg: JobConfig, stages: list[JobConfig], done_upto: int, lost_upto: int,
                        job_total: int | None) -> None:
    """Tell the user where the run starts and, when it starts over, why (never silently)."""
    job_dir = cfg.job_dir
    if lost_upto > done_upto:
        why = (f"the checkpoint of step {done_upto} is the latest" if done_upto
               else "no checkpoint was saved before it stopped")
        log.warning(
            "%s: the last run reached step %d, but %s (trainer.save_interval is %d), so steps %d-%d are "
            "trained again", job_dir, lost_upto, why, cfg.trainer.save_interval, done_upto + 1, lost_upto)
    elif done_upto:
        log.info("resuming %s after step %d of %s", job_dir, done_upto, job_total or "?")
    if not cfg.continue_from_checkpoint:
        return
    unsaved = [s for s in stages if not s.trainer.save_interval and (s.buffer.total_steps or 0) != 1]
    if unsaved:
        names = ", ".join(s.stage_name or "the job" for s in unsaved)
        log.warning(
            "trainer.save_interval is 0 (%s): a checkpoint is saved only when a stage ends, so a run "
            "interrupted before that starts the stage over. A save costs little next to a step (about 30 ms "
            "on the local engine); set trainer.save_interval, e.g. to a tenth of the steps, to resume instead",
            names)


def _finished(cfg: JobConfig, stages: list[JobConfig]) -> JobResult | None:
    """The result of a job whose every stage already ran to the end in this job directory, else None."""
    if cfg.mode in ROLE_MODES or not cfg.continue_from_checkpoint or not (cfg.job_dir / BOOK_FILE).exists():
        return None  # the modes that train nothing keep their own state (loop.roles)
    book = Bookkeeping.load(cfg.job_dir)
    done = [book.finished_stages.get(str(i)) for i in range(len(stages))]
    if not all(done):
        return None
    last = done[-1]
    return JobResult(cfg.job_dir, sum(int(d["steps"]) for d in done), last.get("state_path"),
                     last.get("sampler_path"), None, already_finished=True)


def _remove_if_left_empty(created: Path | None, job_dir: Path) -> None:
    """A run that failed before training anything leaves no directories behind (only those it created)."""
    if created is None or not job_dir.exists():
        return
    keep = [job_dir / METRICS_FILE, job_dir / BOOK_FILE, *job_dir.glob(f"*/{METRICS_FILE}"),
            *job_dir.glob("buffer/*")]
    if any(p.is_file() and p.stat().st_size for p in keep):
        return  # it trained or explored something: the files say how far it got
    shutil.rmtree(job_dir, ignore_errors=True)
    path = job_dir.parent
    while path != created.parent and path.exists() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


def _start_over(job_dir: Path) -> None:
    """continue_from_checkpoint: false: set earlier results aside instead of mixing them in."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = []
    for name in (METRICS_FILE, BOOK_FILE, EVAL_FILE):
        path = job_dir / name
        if path.exists():
            kept.append(path.rename(path.with_name(f"{path.stem}.{stamp}{path.suffix}")).name)
    if kept:
        log.info("continue_from_checkpoint is false: %s starts over from step 0; the earlier run's files are "
                 "kept as %s", job_dir, ", ".join(kept))


def _make_monitor(cfg: JobConfig, files_dir: Path, metrics_port: int | None, progress: bool) -> Any:
    return Monitor(cfg, files_dir, metrics_port=metrics_port, progress=progress)


def _check_client_side_needs(stages: list[JobConfig]) -> None:
    """Fail before any work when a stage's loss runs client-side and this machine lacks torch for it."""
    custom = [s.stage_name or "the job" for s in stages if s.algorithm.algorithm_type != "sft" and loss_plan(s).custom]
    if not custom:
        return
    if importlib.util.find_spec("torch") is None:  # looked up, not imported: the first step imports it
        raise RunError(
            f"the loss of {', '.join(custom)} is not one of Tinker's built-in losses (a KL or entropy term, or a "
            "policy loss such as gspo, sapo, topr, sppo, rec): it is computed on this machine through the tinker "
            "SDK's forward_backward_custom, which needs torch, and torch is not installed. Install it "
            "(`pip install torch==2.13.0`; the CPU build is enough), use the image built with WITH_ENGINE=true, "
            "or drop the algorithm.kl_loss_fn_args.kl_coef / entropy term"
        )


def _check_workflows(stages: list[JobConfig]) -> None:
    """Import every stage's workflow (and auxiliary model settings) before any work, so that a missing or
    broken one fails the job before the engine starts or a dataset is read."""
    for stage in stages:
        if stage.mode in ("train", "serve"):
            continue
        ei = stage.buffer.explorer_input
        if stage.mode != "bench":  # bench reads only the eval tasksets
            for _, ts in training_tasksets(stage):
                WorkflowRunner(stage, ts)
        for ts in ei.eval_tasksets:
            WorkflowRunner(stage, ts, is_eval=True)
        check_auxiliary_models(list(stage.explorer.auxiliary_models or []))


def run_job(
    cfg: JobConfig, *, metrics_port: int | None = None, progress: bool = True, monitor: Any = None,
    api_key: str | None = None,
) -> JobResult:
    """Run every stage of the job to the end (resuming from the job directory when allowed).

    A job that already finished in its directory answers at once (no engine, no key needed); a run that
    fails before training anything removes the directories it created.
    """
    stages = cfg.stage_configs()
    finished = _finished(cfg, stages)
    if finished is not None:
        log.info("%s already finished all %d steps; nothing to run", cfg.job_dir, finished.steps)
        return finished
    job_dir = cfg.job_dir
    created = _first_missing(job_dir)
    try:
        return _run(cfg, stages, metrics_port=metrics_port, progress=progress, monitor=monitor, api_key=api_key)
    except BaseException:
        _remove_if_left_empty(created, job_dir)
        raise


def _set_env(values: dict[str, Any]) -> dict[str, str | None]:
    """Set environment variables; returns what they were, for _restore_env."""
    saved = {str(k): os.environ.get(str(k)) for k in values}
    os.environ.update({str(k): str(v) for k, v in values.items()})
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of `path` that does not exist yet (None when it all exists)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


@dataclass
class Runtime:
    """What a running job holds: its monitor, its connection, and the tokenizer once known."""

    monitor: Any
    conn: Connection
    tokenizer: Any = None


@contextmanager
def _runtime(cfg: JobConfig, stages: list[JobConfig], files_dir: Path, *, metrics_port: int | None,
             progress: bool, monitor: Any, api_key: str | None) -> Iterator[Runtime]:
    """Ray runners (when asked for), explorer.env_vars, the monitor and the connection for the job's
    duration, each undone in reverse order whatever happens."""
    explores = any(s.mode not in ("train", "bench", "serve") for s in stages)
    ray_session = None
    if explores and explorer_uses_ray(cfg):
        # ray takes a quarter of a second or more to import: only a job whose runners are on Ray pays it
        from rft_runtime.workflows.ray_runners import RaySession

        ray_session = RaySession.open(cfg)
    # explorer.env_vars, Trinity's environment of the workflow runners: the Ray actors get it from the
    # session's runtime_env; in process the runners are this process, for the job's duration
    saved_env = {} if ray_session is not None else _set_env(getattr(cfg.explorer, "env_vars", None) or {})
    own_monitor = monitor is None
    try:
        mon = monitor if monitor is not None else _make_monitor(cfg, files_dir, metrics_port, progress)
    except BaseException:
        _restore_env(saved_env)
        if ray_session is not None:
            ray_session.close()
        raise
    conn = Connection(cfg, cfg.job_dir, api_key=api_key)
    if ray_session is not None:
        conn.engine_host = ray_session.engine_host()
    try:
        rt = Runtime(mon, conn)
        if Path(cfg.model.tinker_base_model or "").expanduser().is_dir():
            # local tokenizer: chat templates are checked before the engine starts or anything trains
            rt.tokenizer = conn.tokenizer()
            for stage in stages:
                PromptEncoder.for_stage(rt.tokenizer, stage)
        _check_engine_not_shared(cfg)
        conn.open()
        yield rt
    finally:
        try:
            if own_monitor:
                mon.close()
        finally:
            try:
                conn.close()
            finally:
                _restore_env(saved_env)
                if ray_session is not None:
                    ray_session.close()


def _check_engine_not_shared(cfg: JobConfig) -> None:
    """Two jobs of one job directory (mode explore and mode train, Trinity's way of running them apart)
    cannot each start the local engine there: the second would stop the first's. Say what to do instead."""
    if cfg.model.tinker.base_url != "local" or cfg.mode not in ("explore", "train"):
        return
    pid_file = cfg.job_dir / "engine.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return
    raise RunError(
        f"another job's local engine (pid {pid}) runs in {cfg.job_dir}: a mode-{cfg.mode} job and the job it "
        "exchanges experiences and weights with must share one engine, since tinker:// weights live in the "
        "engine that saved them. Start one (`rft engine serve --model DIR`) and set model.tinker.base_url to "
        "its URL in both configs")


def _run(cfg: JobConfig, stages: list[JobConfig], *, metrics_port: int | None, progress: bool, monitor: Any,
         api_key: str | None) -> JobResult:
    if api_key is None:
        check_api_key(cfg)  # before any work: no dataset download, no engine start
    check_local_model(cfg)  # likewise: a hub name with base_url local would otherwise fail after the data loads
    if cfg.mode in ROLE_MODES:
        _check_workflows(stages)
        files_dir = roles.files_dir(cfg)
        files_dir.mkdir(parents=True, exist_ok=True)
        with _runtime(cfg, stages, files_dir, metrics_port=metrics_port, progress=progress, monitor=monitor,
                      api_key=api_key) as rt:
            done = roles.run_role(cfg, rt)
            return JobResult(cfg.job_dir, done.steps, None, done.sampler_path, getattr(rt.monitor, "port", None),
                             already_finished=done.already_finished, summary=done.summary)
    _check_client_side_needs(stages)
    _check_workflows(stages)
    pipeline.preflight(stages)
    job_dir = cfg.job_dir
    job_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.continue_from_checkpoint:
        _start_over(job_dir)
    book = Bookkeeping.load(job_dir)
    pipeline.run_task_pipelines(stages, resuming=book.latest is not None)

    streams = [None if str(i) in book.finished_stages else make_stream(s) for i, s in enumerate(stages)]
    totals = [
        int(book.finished_stages[str(i)]["steps"]) if stream is None else stage_steps(stages[i], stream)
        for i, stream in enumerate(streams)
    ]
    job_total = None if None in totals else sum(totals)
    done_upto = book.latest.global_step if book.latest else 0
    lost_upto = _keep_metrics_upto(job_dir, done_upto)
    _say_how_it_resumes(cfg, [s for i, s in enumerate(stages) if streams[i] is not None], done_upto,
                        lost_upto, job_total)

    result = JobResult(job_dir, 0, None, None, None)
    with _runtime(cfg, stages, job_dir, metrics_port=metrics_port, progress=progress, monitor=monitor,
                  api_key=api_key) as rt:
        mon, conn = rt.monitor, rt.conn
        result.metrics_port = getattr(mon, "port", None)
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
                log.info("stage %d/%d: %s (%s, %s steps)", index + 1, len(stages), stage.stage_name,
                         stage.algorithm.algorithm_type, totals[index] or "?")
            if hasattr(mon, "set_info"):
                mon.set_info(backend=stage.backend, algorithm=stage.algorithm.algorithm_type,
                             base_model=stage.model.tinker_base_model)
            trainer.configure(stage)
            latest = book.latest
            start_step = 0
            resume_state = None
            if latest is not None and latest.stage_index == index:
                trainer.start(latest.state_path, with_optimizer=True)
                if latest.stream_state:
                    stream.load_state_dict(latest.stream_state)
                    resume_state = latest.stream_state
                start_step = latest.stage_step
            elif prev_state:
                # a new stage keeps the weights but not the optimizer: its lr and algorithm may differ
                trainer.start(prev_state, with_optimizer=False)
            else:
                trainer.start(None)
            if rt.tokenizer is None:
                rt.tokenizer = conn.tokenizer(trainer.client)
            encoder = PromptEncoder.for_stage(rt.tokenizer, stage)
            start_weights: tuple[int, str | None] = (start_step, None)
            if start_step or prev_state:
                start_weights = (start_step, trainer.save_sampler(f"s{index}-resume{start_step:06d}"))
            if hasattr(mon, "start_stage"):
                mon.start_stage(stage_label(stage), totals[index], start_step)
            runner = StageRunner(stage, conn, mon, book, step_base=step_base, job_total=job_total,
                                 stream=stream, encoder=encoder, trainer=trainer, sampler_path=start_weights[1],
                                 resume_state=resume_state)
            try:
                res = runner.run(start_step, start_weights)
            finally:
                if hasattr(stream, "close"):
                    stream.close()
            prev_state, prev_sampler = res.state_path, res.sampler_path
            book.finished_stages[str(index)] = {
                "name": stage.stage_name, "steps": res.steps, "state_path": prev_state,
                "sampler_path": prev_sampler,
            }
            book.save(job_dir)
            step_base += res.steps
        result.steps = step_base
        result.state_path, result.sampler_path = prev_state, prev_sampler
        return result
