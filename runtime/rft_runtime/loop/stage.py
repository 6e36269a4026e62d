"""One stage of a job: explorer and trainer running together (mode both), or SFT from a dataset (mode train).

The explorer runs in a thread, at most sync_offset steps ahead of the trainer (see loop.sync); the trainer
runs in the caller's thread. Per step the trainer logs one record to the Monitor (record keys in the team
notes), saves sampler weights every sync_interval steps and a checkpoint every save_interval steps.
"""

from __future__ import annotations

import logging
import queue
import statistics
import time
from dataclasses import dataclass
from typing import Any

from rft_runtime.backends.tinker_client import Connection, healthy
from rft_runtime.config import JobConfig
from rft_runtime.config.models import StorageConfig
from rft_runtime.loop import datums as D
from rft_runtime.loop.checkpoints import Bookkeeping, CheckpointEntry
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.evaluate import EvalRunner
from rft_runtime.loop.explorer import ExploredBatch
from rft_runtime.loop.prompts import PromptEncoder
from rft_runtime.loop.schedule import lr_at
from rft_runtime.loop.sync import WeightBoard
from rft_runtime.loop.trainer import StepWork, Trainer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- data


def stage_source(cfg: JobConfig) -> StorageConfig:
    """The dataset a stage reads: the taskset (mode both) or the experience buffer's file (mode train)."""
    if cfg.mode == "train":
        return cfg.buffer.trainer_input.experience_buffer
    return cfg.buffer.explorer_input.taskset


def make_stream(cfg: JobConfig) -> Any:
    """The stage's TaskStream: seeded order, drop-last batches, epochs and step limits from the config."""
    from rft_runtime.data.tasksets import TaskStream, load_rows

    source = stage_source(cfg)
    rows = load_rows(source, require_response=cfg.mode == "train")
    batch_size = cfg.train_batch_size if cfg.mode == "train" else cfg.buffer.batch_size
    limits = [s for s in (cfg.buffer.total_steps, source.total_steps, cfg.trainer.total_steps) if s]
    stream = TaskStream(
        rows, batch_size=batch_size, total_epochs=source.total_epochs or cfg.buffer.total_epochs,
        total_steps=min(limits) if limits else None, seed=cfg.explorer.rollout_model.seed,
    )
    if not stream.total_steps:
        raise RunError(
            f"the dataset at {source.path} has {len(rows)} rows, fewer than one batch of {batch_size}: "
            "lower buffer.batch_size or add rows"
        )
    return stream


def sft_messages(cfg: JobConfig, row: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    """Chat messages and target response of one SFT row (prompt_key / response_key / system_prompt)."""
    fmt = cfg.buffer.trainer_input.experience_buffer.format
    for key in (fmt.prompt_key, fmt.response_key):
        if key not in row:
            raise RunError(f"an SFT row has no {key!r} column (format.prompt_key / response_key): {row!r:.200}")
    messages = []
    if fmt.system_prompt:
        messages.append({"role": "system", "content": fmt.system_prompt})
    messages.append({"role": "user", "content": str(row[fmt.prompt_key])})
    return messages, str(row[fmt.response_key])


# ---------------------------------------------------------------- advantages and stats


def assign_advantages(cfg: JobConfig, batch: ExploredBatch) -> None:
    """Advantages of every rollout from its group's rewards (reinforce++ also normalises over the batch)."""
    from rft_runtime import algorithms

    algo = cfg.algorithm.algorithm_type
    args = dict(cfg.algorithm.advantage_fn_args or {})
    for group in batch.groups:
        advs = algorithms.compute_advantages(algo, [r.reward for r in group], args)
        for rollout, adv in zip(group, advs, strict=True):
            rollout.advantage = float(adv)
    if algo == "reinforceplusplus":
        # whitened over the batch's tokens, as Trinity's masked_whiten
        flat = [r for r in batch.rollouts if r.trained_tokens]
        whitened = algorithms.normalise_batch([r.advantage for r in flat], [float(r.trained_tokens) for r in flat])
        for rollout, adv in zip(flat, whitened, strict=True):
            rollout.advantage = float(adv)


def reward_stats(batch: ExploredBatch) -> dict[str, float]:
    """reward_mean/std/min/max, accuracy and format_score (when the workflow reports them), lengths."""
    rollouts = batch.rollouts
    out: dict[str, float] = {}
    if not rollouts:
        return out
    rewards = [r.reward for r in rollouts]
    out["reward_mean"] = statistics.fmean(rewards)
    out["reward_std"] = statistics.pstdev(rewards) if len(rewards) > 1 else 0.0
    out["reward_min"] = min(rewards)
    out["reward_max"] = max(rewards)
    for key in ("accuracy", "format_score"):
        vals = [r.metrics[key] for r in rollouts if key in r.metrics]
        if vals:
            out[key] = statistics.fmean(vals)
    lengths = [len(r.tokens) for r in rollouts]
    out["response_length_mean"] = statistics.fmean(lengths)
    tokens = sum(r.trained_tokens for r in rollouts)
    if tokens:
        # entropy estimated from the sampled tokens only: E[-log p] (what Tinker makes possible)
        out["entropy"] = -sum(lp * m for r in rollouts for lp, m in zip(r.logprobs, r.loss_mask, strict=False)) / tokens
    return out


# ---------------------------------------------------------------- the stage


@dataclass
class StageResult:
    """How a stage ended."""

    steps: int
    state_path: str | None
    sampler_path: str | None


class StageRunner:
    """Runs one stage from `start_step` (resume) to its last step."""

    def __init__(
        self, cfg: JobConfig, conn: Connection, monitor: Any, book: Bookkeeping, *, step_base: int,
        job_total: int, stream: Any, encoder: PromptEncoder, trainer: Trainer, sampler_path: str | None = None,
    ):
        self.cfg = cfg
        self.conn = conn
        self.monitor = monitor
        self.book = book
        self.step_base = step_base
        self.job_total = job_total
        self.stream = stream
        self.encoder = encoder
        self.trainer = trainer
        self.total = stream.total_steps
        self.sync = cfg.synchronizer
        self.algo = cfg.algorithm.algorithm_type
        self.kl_coef = cfg.algorithm.kl_coef
        self._ref_sampler: Any = None
        self._ref_generation = -1
        self._last_sampler = sampler_path
        self._rest: Any = None

    # ------------------------------------------------------------ trainer side

    def _loss(self) -> tuple[str, dict[str, Any] | None]:
        from rft_runtime.algorithms import loss_spec

        name, config = loss_spec(self.cfg)
        return name, (dict(config) if config else None)

    def _ref_logprobs(self, rollouts: list[Any]) -> list[list[float]]:
        """Reference (base model) logprobs of each rollout's response tokens, all requests in flight at once."""
        import tinker

        if self._ref_sampler is None or self._ref_generation != self.conn.generation:
            self._ref_generation = self.conn.generation
            self._ref_sampler = self.conn.sampling_client(None, timeout=self.trainer.call_timeout)
        futures = [self._ref_sampler.compute_logprobs(tinker.ModelInput.from_ints(r.prompt_ids + r.tokens))
                   for r in rollouts]
        out = []
        for rollout, fut in zip(rollouts, futures, strict=True):
            tail = fut.result(timeout=self.trainer.call_timeout)[-len(rollout.tokens):]
            out.append([float(x) if x is not None else 0.0 for x in tail])
        return out

    def _rl_work(self, step: int, batch: ExploredBatch) -> tuple[StepWork, dict[str, float]]:
        assign_advantages(self.cfg, batch)
        name, config = self._loss()
        # token-mean over the tokens that carry loss: the model's own, not spliced-in environment text
        rollouts = [r for r in batch.rollouts if r.trained_tokens]
        n_tokens = sum(r.trained_tokens for r in rollouts)
        scale = 1.0 / n_tokens if n_tokens else 0.0
        use_kl = self.kl_coef > 0
        if not use_kl:
            # a zero advantage masks every token: sending such a rollout would only cost time
            rollouts = [r for r in rollouts if r.advantage != 0.0]
        refs = self._ref_logprobs(rollouts) if use_kl and rollouts else [None] * len(rollouts)
        datums = [D.rl_datum(r.prompt_ids, r.tokens, r.logprobs, r.advantage, scale, ref, r.mask)
                  for r, ref in zip(rollouts, refs, strict=True)]
        custom = None
        if use_kl and datums:
            cfg = config or {}
            custom = D.ppo_kl_loss(cfg.get("clip_low_threshold", 0.8), cfg.get("clip_high_threshold", 1.2),
                                   self.kl_coef)
        lr = lr_at(self.cfg.algorithm.optimizer, step, self.total)
        extra = {"response_tokens": float(n_tokens)}
        return StepWork(step, datums, name, config, lr, custom), extra

    def _sft_work(self, step: int, tasks: list[Any]) -> tuple[StepWork, dict[str, float]]:
        pairs = []
        prompt_tokens = truncated = 0
        for task in tasks:
            messages, response = sft_messages(self.cfg, task.row)
            ids = self.encoder.prompt_ids(messages)
            if self.encoder.too_long(ids):
                truncated += 1
                continue
            resp = self.encoder.response_ids(response)
            limit = self.cfg.model.max_response_tokens
            if limit and len(resp) > limit:
                resp = resp[:limit]
            prompt_tokens += len(ids)
            pairs.append((ids, resp))
        n_tokens = sum(len(r) for _, r in pairs)
        scale = 1.0 / n_tokens if n_tokens else 0.0
        datums = [D.sft_datum(ids, resp, scale) for ids, resp in pairs]
        lr = lr_at(self.cfg.algorithm.optimizer, step, self.total)
        extra = {
            "prompt_tokens": float(prompt_tokens), "response_tokens": float(n_tokens),
            "truncated_prompts": float(truncated), "rollouts": 0.0, "failed_rollouts": 0.0,
            "response_length_mean": n_tokens / len(pairs) if pairs else 0.0,
        }
        return StepWork(step, datums, "cross_entropy", None, lr), extra

    def _checkpoint(self, step: int, stream_state: dict[str, Any] | None, sampler_path: str | None) -> None:
        label = f"s{self.cfg.stage_index or 0}-step{step:06d}"
        state = self.trainer.save_state(label)
        entry = CheckpointEntry(
            stage_index=self.cfg.stage_index or 0, stage_step=step, global_step=self.step_base + step,
            state_path=state, sampler_path=sampler_path, stream_state=stream_state,
        )
        dropped = self.book.record(entry, self.cfg.trainer.max_checkpoints_to_keep)
        self.book.save(self.cfg.job_dir)
        for old in dropped:
            self._delete_checkpoint(old.state_path)

    def _delete_checkpoint(self, path: str) -> None:
        import tinker

        try:
            if self._rest is None:
                self._rest = tinker.RestClient(base_url=self.conn.base_url, api_key=self.conn.api_key)
            self._rest.delete_checkpoint_from_tinker_path(path).result(timeout=30)
        except Exception as exc:  # the bookkeeping no longer points at it; leaving the files is harmless
            log.info("could not delete old checkpoint %s: %s", path, exc)

    # ------------------------------------------------------------ run

    def run(self, start_step: int, board: WeightBoard) -> StageResult:
        """Train steps start_step+1 .. total; returns the final state and sampler paths."""
        if self.cfg.mode == "train":
            return self._run_train(start_step)
        return self._run_both(start_step, board)

    def _finish_step(self, step: int, work: StepWork, extra: dict[str, float],
                     stream_state: dict[str, Any] | None, board: WeightBoard | None) -> tuple[float, str | None]:
        """Train the step, then save sampler weights (every sync_interval and at the end)."""
        result = self.trainer.train(work)
        t_sync = 0.0
        sampler_path = None
        last = step == self.total
        if board is not None and (step % self.sync.sync_interval == 0 or last):
            t0 = time.monotonic()
            sampler_path = self.trainer.save_sampler(f"s{self.cfg.stage_index or 0}-sampler{step:06d}")
            board.publish(step, sampler_path)
            t_sync = time.monotonic() - t0
        elif board is None and last:
            sampler_path = self.trainer.save_sampler(f"s{self.cfg.stage_index or 0}-sampler{step:06d}")
        if sampler_path:
            self._last_sampler = sampler_path
        extra["policy_loss"] = result.loss
        if "kl" in result.metrics:
            extra["kl"] = result.metrics["kl"]
        extra["time_training_s"] = result.time_training_s
        extra["lr"] = work.lr
        return t_sync, sampler_path

    def _log(self, step: int, explore_step: int, record: dict[str, Any], t_step: float,
             stream_state: dict[str, Any] | None) -> None:
        record.update(step=self.step_base + step, total_steps=self.job_total,
                      explore_step=self.step_base + explore_step, time_step_s=t_step, timestamp=time.time())
        self.monitor.log_step(record)
        # the checkpoint comes after the step's line: a kill in between makes the resumed run drop that
        # line and redo the step, whereas the other order could lose the line for good
        save_every = self.cfg.trainer.save_interval
        if step == self.total or (save_every and step % save_every == 0):
            self._checkpoint(step, stream_state, self._last_sampler)

    def _run_train(self, start_step: int) -> StageResult:
        it = iter(self.stream)
        last_end = time.monotonic()
        for step in range(start_step + 1, self.total + 1):
            try:
                tasks = next(it)
            except StopIteration:
                break
            stream_state = self.stream.state_dict()
            work, extra = self._sft_work(step, tasks)
            t_sync, _ = self._finish_step(step, work, extra, stream_state, None)
            record = dict(extra, time_sampling_s=0.0, time_sync_s=t_sync, weight_version_lag=0)
            now = time.monotonic()
            self._log(step, step, record, now - last_end, stream_state)
            last_end = now
        return StageResult(self.total, self.trainer.base_state, self._last_sampler)

    def _run_both(self, start_step: int, board: WeightBoard) -> StageResult:
        from rft_runtime.loop.explorer import check_some_prompt_fits
        from rft_runtime.loop.explorer_thread import ExplorerThread

        check_some_prompt_fits(self.cfg, self.encoder, getattr(self.stream, "rows", []))
        evals = EvalRunner(self.cfg, self.conn, self.encoder, self.cfg.job_dir)
        if evals.sets and start_step == 0 and self.cfg.explorer.eval_on_startup:
            evals.run(self.step_base, board.path)
        batches: queue.Queue[Any] = queue.Queue()
        explorer = ExplorerThread(self, board, batches, start_step)
        explorer.start()
        timeout = float(self.sync.sync_timeout)
        last_end = time.monotonic()
        try:
            for step in range(start_step + 1, self.total + 1):
                try:
                    batch = batches.get(timeout=timeout)
                except queue.Empty:
                    down = ""
                    if self.conn.base_url and not healthy(self.conn.base_url):
                        down = f"; the server at {self.conn.base_url} does not answer /api/v1/healthz"
                    raise RunError(
                        f"the explorer stalled: the trainer waited more than synchronizer.sync_timeout "
                        f"({timeout:.0f}s) for the rollouts of step {step}; the explorer was {explorer.activity}"
                        f"{down}"
                    ) from None
                if isinstance(batch, BaseException):
                    raise batch
                if batch is None:
                    break
                work, extra = self._rl_work(step, batch)
                t_sync, _ = self._finish_step(step, work, extra, batch.stream_state, board)
                record = reward_stats(batch)
                record.update(extra)
                record.update(
                    prompt_tokens=float(batch.prompt_tokens),
                    rollouts=float(len(batch.rollouts)),
                    failed_rollouts=float(batch.failed_rollouts),
                    truncated_prompts=float(batch.truncated_prompts),
                    time_sampling_s=batch.time_sampling_s,
                    time_sync_s=t_sync + batch.time_sync_s,
                    weight_version_lag=int(step - 1 - batch.weight_version),
                )
                if batch.truncated_prompts:
                    log.warning("step %d: %d of %d prompts were longer than model.max_prompt_tokens (%s; the "
                                "longest %d tokens) and were skipped, not sampled", self.step_base + step,
                                batch.truncated_prompts, batch.truncated_prompts + batch.sampled_prompts,
                                self.cfg.model.max_prompt_tokens, batch.longest_truncated)
                now = time.monotonic()
                self._log(step, batch.explore_step, record, now - last_end, batch.stream_state)
                if evals.due(step, step == self.total):
                    evals.run(self.step_base + step, self._last_sampler)
                last_end = now
        finally:
            explorer.stop()
        return StageResult(self.total, self.trainer.base_state, self._last_sampler)
