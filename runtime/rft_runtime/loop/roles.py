"""The modes that train nothing, each a job of its own beside a trainer (Trinity's explore, bench, serve).

- explore: runs the explorer alone. Each explore step's experiences, with their advantages (computed here,
  as Trinity's experience pipeline does), go to the experience buffer (sql, queue or file) that a mode-train
  job reads, in another process; the weights come from the job directory, where that trainer publishes
  them (see loop.sync.PublishedWeights). Resumes from `explorer/explorer_state.json`.
- bench: scores the base model (explorer.eval_on_startup) and every checkpoint in the job directory
  (checkpoint.json; only the newest with explorer.bench_on_latest_checkpoint) on the eval tasksets.
- serve: an OpenAI-compatible endpoint (explorer.listen_address:proxy_port) answering with the newest
  published weights, checked every explorer.service_status_check_interval seconds, until stopped (SIGTERM
  or Ctrl-C). Its URL and key are in `serve/server.json`.

Each keeps its metrics in a folder of the job directory named for the role (explorer.name, "benchmark",
"serve"), so that it never mixes with the trainer's files in the same directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rft_runtime.buffers import open_store
from rft_runtime.config import JobConfig
from rft_runtime.loop import published
from rft_runtime.loop.checkpoints import Bookkeeping
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.evaluate import EvalRunner
from rft_runtime.loop.explorer import Explorer, check_some_prompt_fits
from rft_runtime.loop.explorer_thread import ExplorerThread
from rft_runtime.loop.prompts import PromptEncoder
from rft_runtime.loop.records import to_record
from rft_runtime.loop.stage import StageRunner, make_stream, reward_stats
from rft_runtime.loop.sync import PublishedWeights
from rft_runtime.workflows.openai_server import OpenAIServer

log = logging.getLogger(__name__)

STATE_FILE = "explorer_state.json"


def files_dir(cfg: JobConfig) -> Path:
    """The folder of the job directory where a mode keeps its own files."""
    name = {"explore": cfg.explorer.name or "explorer", "bench": "benchmark", "serve": "serve"}[cfg.mode]
    return cfg.job_dir / name


def run_role(cfg: JobConfig, rt: Any) -> RoleResult:
    """Run the job's mode (explore, bench or serve) with an open Runtime."""
    if rt.tokenizer is None:
        # a hub model's tokenizer comes through the SDK; these modes have no training client, so a sampler's
        rt.tokenizer = rt.conn.sampling_client(None, timeout=float(cfg.synchronizer.sync_timeout)).get_tokenizer()
    encoder = PromptEncoder.for_stage(rt.tokenizer, cfg)
    return {"explore": _explore, "bench": _bench, "serve": _serve}[cfg.mode](cfg, rt, encoder)


@dataclass
class RoleResult:
    """How a mode that trains nothing ended (loop.job makes its JobResult of it)."""

    steps: int
    sampler_path: str | None
    summary: str
    already_finished: bool = False



# ---------------------------------------------------------------- explore


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _explore(cfg: JobConfig, rt: Any, encoder: PromptEncoder) -> Any:
    here = files_dir(cfg)
    state_path = here / STATE_FILE
    if not cfg.continue_from_checkpoint and state_path.exists():
        state_path.rename(state_path.with_name(f"explorer_state.{time.strftime('%Y%m%d-%H%M%S')}.json"))
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    stream = make_stream(cfg)
    if state.get("stream_state"):
        stream.load_state_dict(state["stream_state"])
    total = stream.total_steps
    store_where = f"{cfg.buffer.trainer_input.experience_buffer.storage_type} buffer"
    if stream.step >= total:
        return RoleResult(total, None, f"done already: all {total} explore steps were explored earlier "
                                         f"(state in {state_path})", already_finished=True)
    store = open_store(cfg.buffer.trainer_input.experience_buffer, cfg.job_dir)
    mon = rt.monitor
    runner = StageRunner(cfg, rt.conn, mon, None, step_base=0, job_total=total, stream=stream, encoder=encoder,
                         trainer=None)
    check_some_prompt_fits(cfg, encoder, stream)
    stop = threading.Event()
    weights = PublishedWeights(cfg, cfg.job_dir, stop, buffer_count=store.count)
    evals = EvalRunner(cfg, rt.conn, encoder, here)
    if evals.sets and stream.step == 0 and cfg.explorer.eval_on_startup:
        evals.run(0, weights.path)
    written = int(state.get("experiences", 0))
    if hasattr(mon, "start_stage"):
        mon.start_stage("explore", total, stream.step)
    writer = store.register_writer()
    log.info("exploring steps %d-%d; experiences go to %s (%s)", stream.step + 1, total, store.describe(),
             store_where)
    last_end = time.monotonic()
    failure: list[BaseException] = []

    def deliver(batch: Any) -> None:
        nonlocal written, last_end
        rollouts = runner.advantaged(batch)
        version = max(batch.weight_version, 0)
        records = [to_record(r, explore_step=batch.explore_step, model_version=version) for r in rollouts]
        store.write(records)
        written += len(records)
        record = reward_stats(batch, cfg)
        record.update(batch.metrics)  # the experience pipeline's, over_rollout's and dynamic_timeout's
        record.update(step=batch.explore_step, total_steps=total, explore_step=batch.explore_step,
                      stage="explore", algorithm=cfg.algorithm.algorithm_type, stage_step=batch.explore_step,
                      stage_total_steps=total, experiences=float(len(records)), experiences_total=float(written),
                      rollouts=float(len(batch.rollouts)), failed_rollouts=float(batch.failed_rollouts),
                      truncated_prompts=float(batch.truncated_prompts), prompt_tokens=float(batch.prompt_tokens),
                      model_version=float(version), timestamp=time.time())
        record["time/sampling"] = batch.time_sampling_s
        record["time/sync"] = batch.time_sync_s
        now = time.monotonic()
        record["time/step"] = now - last_end
        last_end = now
        mon.log_step(record)
        # after the experiences are in the buffer: a kill in between explores this step again on resume
        _save_state(state_path, {"explore_step": batch.explore_step, "stream_state": batch.stream_state,
                                 "experiences": written, "model_version": version, "time": time.time()})
        if evals.due(batch.explore_step, batch.explore_step == total):
            evals.run(batch.explore_step, weights.path)

    thread = ExplorerThread(
        cfg, rt.conn, encoder, stream, first_step=stream.step + 1, last_step=total,
        weights_for=weights.weights_for, latest=weights.latest, deliver=deliver, finish=lambda: None,
        fail=failure.append, recovery_window=float(min(cfg.synchronizer.sync_timeout, 600)), stop_event=stop)
    try:
        thread.run()  # in this thread: each step is sampled, then written, then the next one starts
    finally:
        thread.explorer.close()
        store.finish_writer(writer)
        store.close()
    if failure:
        raise failure[0]
    return RoleResult(stream.step, weights.path,
                   f"done: {stream.step} explore steps, {written} experiences written to {store.describe()}; "
                   f"explorer metrics in {here / 'metrics.jsonl'}")


# ---------------------------------------------------------------- bench


def _bench_weights(cfg: JobConfig, conn: Any, entry: Any) -> str:
    """Sampler weights of a checkpoint: those published for its step, else saved from its state now."""
    path = _published_at(cfg.job_dir, entry.global_step)
    if path:
        return path
    state = entry.state_path
    client = conn.service.create_training_client_from_state(state).result(
        timeout=float(cfg.synchronizer.sync_timeout))
    return client.save_weights_for_sampler(f"bench-step{entry.global_step:06d}").result(
        timeout=float(cfg.synchronizer.sync_timeout)).path


def _published_at(job_dir: Path, step: int) -> str | None:
    try:
        return (job_dir / f"global_step_{step}" / published.SAMPLER).read_text().strip() or None
    except OSError:
        return None


def _bench(cfg: JobConfig, rt: Any, encoder: PromptEncoder) -> Any:
    here = files_dir(cfg)
    if not cfg.buffer.explorer_input.eval_tasksets:
        raise RunError("mode bench scores checkpoints on buffer.explorer_input.eval_tasksets, and there are none: "
                       "add one (a path, its format and workflow)")
    runner = EvalRunner(cfg, rt.conn, encoder, here)
    book = Bookkeeping.load(cfg.job_dir)
    entries = list(book.history)
    if cfg.explorer.bench_on_latest_checkpoint:
        entries = entries[-1:]
    done = set()
    if cfg.continue_from_checkpoint and runner.path.exists():
        done = {json.loads(line)["step"] for line in runner.path.read_text().splitlines() if line.strip()}
    targets: list[tuple[int, Any]] = []
    if cfg.explorer.eval_on_startup and not cfg.explorer.bench_on_latest_checkpoint:
        targets.append((0, None))
    targets += [(e.global_step, e) for e in entries]
    if not entries:
        log.warning("no checkpoint in %s (checkpoint.json): %s", cfg.job_dir,
                    "scoring the base model only" if targets else "nothing to score")
    scored = 0
    for step, entry in targets:
        if step in done:
            log.info("step %d was scored already (%s)", step, runner.path)
            continue
        path = None if entry is None else _bench_weights(cfg, rt.conn, entry)
        runner.run(step, path)
        scored += 1
    return RoleResult(scored, None, f"done: scored {scored} checkpoint(s) on "
                                      f"{len(runner.sets)} eval taskset(s); results in {runner.path}")


# ---------------------------------------------------------------- serve


def _serve(cfg: JobConfig, rt: Any, encoder: PromptEncoder) -> Any:
    here = files_dir(cfg)
    ex = cfg.explorer
    server = OpenAIServer(host=str(ex.listen_address), port=int(ex.proxy_port))
    server.api_key = os.environ.get("RFT_SERVE_API_KEY") or server.api_key
    explorer = Explorer(cfg, encoder, conn=rt.conn)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    version, path = -1, None
    timeout = float(cfg.synchronizer.sync_timeout)
    try:
        server.start()
        info = {"base_url": f"http://{server.host}:{server.port}/v1", "api_key": server.api_key,
                "pid": os.getpid()}
        info_path = here / "server.json"
        info_path.write_text(json.dumps(info))
        info_path.chmod(0o600)
        log.info("serving an OpenAI-compatible endpoint at %s (its key is in %s); stop with SIGTERM or Ctrl-C",
                 info["base_url"], info_path)
        while not stop.is_set():
            newest, newest_path = published.latest(cfg.job_dir)
            if newest > version or version < 0:
                sampler = rt.conn.sampling_client(newest_path, timeout=timeout)
                server.set_models([explorer.policy(sampler, model_version=newest, model_path=newest_path)])
                version, path = newest, newest_path
                log.info("serving the weights of step %d (%s)", version, path or "the base model")
                info.update(model_version=version, model_path=path)
                info_path.write_text(json.dumps(info))
            stop.wait(float(ex.service_status_check_interval))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
        explorer.close()
    return RoleResult(0, path, f"done: served the weights of step {max(version, 0)} until stopped")
