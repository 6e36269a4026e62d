"""One stage of a job: explorer and trainer running together (mode both), or SFT from a dataset (mode train).

The explorer runs in a thread, at most sync_offset steps ahead of the trainer (see loop.sync); the trainer
runs in the caller's thread. Per step the trainer logs one record to the Monitor (record keys in the team
notes), saves sampler weights every sync_interval steps and a checkpoint every save_interval steps.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rft_runtime.algorithms import Sample, agg_scales, algorithm_spec, batch_advantages, loss_plan
from rft_runtime.algorithms.advantages import TOKEN_ADVANTAGE_FNS
from rft_runtime.backends.tinker_client import Connection, healthy
from rft_runtime.buffers import can_hold, open_store
from rft_runtime.config import JobConfig
from rft_runtime.config.catalog import OFFLINE_ALGORITHMS
from rft_runtime.config.models import StorageConfig
from rft_runtime.data.errors import DataError
from rft_runtime.data.selectors import SelectorStream, chosen_selector
from rft_runtime.data.taskset_mix import TasksetMix
from rft_runtime.data.tasksets import SqlTaskStream, TaskStream, load_rows, sql_table, training_tasksets
from rft_runtime.loop import datums as D
from rft_runtime.loop import published
from rft_runtime.loop.batching import (
    check_schedule,
    counts_experiences,
    drop_leftover,
    load_leftover,
    make_batcher,
    replay_on,
    rollouts_per_step,
    save_leftover,
    train_steps,
)
from rft_runtime.loop.checkpoints import Bookkeeping, CheckpointEntry
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.evaluate import EvalRunner
from rft_runtime.loop.exchange import SYNC_REQUESTED, Exchange, Explored
from rft_runtime.loop.explorer import ExploredBatch, check_some_prompt_fits
from rft_runtime.loop.explorer_thread import ExplorerThread
from rft_runtime.loop.prompts import PromptEncoder
from rft_runtime.loop.records import from_record, to_record
from rft_runtime.loop.schedule import lr_at
from rft_runtime.loop.store_feed import StoreFeed
from rft_runtime.loop.trainer import StepWork, Trainer
from rft_runtime.workflows import images
from rft_runtime.workflows.base import WorkflowError
from rft_runtime.workflows.runners import prompt_limit

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- data


def stage_label(cfg: JobConfig) -> str:
    """The stage's name for logs, the progress bar and the plot (its algorithm when the job has no stages)."""
    return cfg.stage_name or cfg.algorithm.algorithm_type


def stage_source(cfg: JobConfig) -> StorageConfig:
    """The dataset a stage reads: the (first) taskset (mode both) or the experience buffer's file (mode train)."""
    if cfg.mode == "train":
        return cfg.buffer.trainer_input.experience_buffer
    return training_tasksets(cfg)[0][1]


def stage_steps(cfg: JobConfig, stream: Any) -> int | None:
    """Train steps of the stage: one per explore step, or (train_batch_size, replay) as many as the explored
    experiences fill; None when a mode-train stage reads another job's experiences until they end."""
    if cfg.mode == "both":
        return train_steps(cfg, stream.total_steps, loss_plan(cfg).is_mix)
    return stream.total_steps


def make_stream(cfg: JobConfig) -> Any:
    """The stage's TaskStream: seeded order, drop-last batches, epochs and step limits from the config; in
    mode train on rollouts, the StoreFeed of the experience buffer another job writes; several tasksets mixed
    as Trinity mixes them (TasksetMix); a SQL taskset read from its table (SqlTaskStream)."""
    if cfg.mode == "train" and cfg.algorithm.algorithm_type not in OFFLINE_ALGORITHMS:
        return StoreFeed(cfg, rollouts_per_step(cfg, loss_plan(cfg).is_mix))
    batch_size = cfg.train_batch_size if cfg.mode == "train" else cfg.buffer.batch_size
    # trainer.total_steps caps the explorer too when each train step is one explore step
    capped = cfg.trainer.total_steps if cfg.mode == "train" or not counts_experiences(cfg) else None
    tasksets = training_tasksets(cfg)
    if cfg.mode != "train" and len(tasksets) > 1:
        # Trinity's validator gives every taskset the buffer's epochs and steps
        limits = [s for s in (cfg.buffer.total_steps, capped) if s]
        parts = [(load_rows(ts, where=where), chosen_selector(ts)) for where, ts in tasksets]
        stream: Any = TasksetMix(parts, batch_size, cfg.buffer.total_epochs, min(limits) if limits else None,
                                 seed=cfg.explorer.rollout_model.seed, names=[where for where, _ in tasksets])
        if not stream.total_steps:
            raise RunError(f"the {len(tasksets)} tasksets have {len(stream.base)} rows in all, fewer than one batch "
                           f"of {batch_size}: lower buffer.batch_size or add rows")
        return stream
    source = stage_source(cfg)
    where = "buffer.trainer_input.experience_buffer" if cfg.mode == "train" else tasksets[0][0]
    limits = [s for s in (cfg.buffer.total_steps, source.total_steps, capped) if s]
    if cfg.mode != "train" and source.storage_type == "sql":
        try:
            stream = SqlTaskStream(sql_table(source, where), batch_size, min(limits) if limits else None, where)
        except DataError as exc:
            raise RunError(str(exc)) from None
        if not stream.total_steps:
            raise RunError(f"{where}: {stream.table.describe()} holds fewer than one batch of {batch_size} tasks: "
                           "lower buffer.batch_size or add tasks")
        return stream
    data = algorithm_spec(cfg.algorithm.algorithm_type).data
    rows = load_rows(source, require_response=cfg.mode == "train" and data == "sft", where=where)
    if data == "dpo":
        fmt = source.format
        for index, row in enumerate(rows):
            missing = [k for k in (fmt.chosen_key, fmt.rejected_key) if row.get(k) is None]
            if missing:
                raise RunError(f"{source.path}: row {index} (0-based) has no {missing[0]!r} value "
                               "(format.chosen_key / format.rejected_key): dpo trains on a chosen and a rejected "
                               f"response per prompt; its columns: {', '.join(sorted(row))}")
    stream = TaskStream(
        rows, batch_size=batch_size, total_epochs=source.total_epochs or cfg.buffer.total_epochs,
        total_steps=min(limits) if limits else None, seed=cfg.explorer.rollout_model.seed,
    ) if chosen_selector(source) is None else SelectorStream(
        # data_selector.selector_type set: Trinity's selectors pick each batch (rft_runtime.data.selectors)
        rows, batch_size, chosen_selector(source), source.total_epochs or cfg.buffer.total_epochs,
        min(limits) if limits else None,
    )
    if not stream.total_steps:
        raise RunError(
            f"the dataset at {source.path} has {len(rows)} rows, fewer than one batch of {batch_size}: "
            "lower buffer.batch_size or add rows"
        )
    return stream


def _dataset_name(store: Any, path: str) -> str:
    """How errors name a training dataset: its file (or hub name) and its place in the config."""
    return f"{store.path} ({path})" if store.path else path


def _prompt_chunks(item: Any) -> list[Any] | None:
    """The prompt's chunks (its images) of a rollout or training item, or None for a text prompt."""
    return (getattr(item, "info", None) or {}).get("prompt_chunks") or None


def _reply_text(value: Any) -> str:
    # a chosen / rejected column holds the reply text, or (prompt_type messages) the reply's messages
    if isinstance(value, list):
        return "".join(images.text_of(m.get("content")) for m in value if isinstance(m, dict))
    return str(value)


def _dpo_convo(row: dict[str, Any], fmt: Any) -> Any:
    # sft_messages reads a conversation ending in the target reply; a dpo row's reply is in chosen/rejected
    if fmt.prompt_type != "messages":
        return row.get(fmt.messages_key)
    convo = _conversation(row.get(fmt.messages_key), fmt)
    if isinstance(convo, list):
        return [*convo, {"role": "assistant", "content": ""}]
    return convo


def _conversation(value: Any, fmt: Any) -> Any:
    # Trinity's formatters take a conversation stored as a JSON string too
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RunError(f"a row's {fmt.messages_key!r} value is a string that is not JSON ({exc}) "
                           f"(format.messages_key): {value!r:.200}") from exc
    return value


def _message(m: dict[str, Any]) -> dict[str, Any]:
    # every key a chat template reads (tool_calls, tool_call_id, name, reasoning_content) is kept; the nulls a
    # dataset's schema alignment adds to messages that lack a key are not (a template would read them as set)
    out = {k: v for k, v in m.items() if v is not None}
    out["role"] = str(m.get("role"))
    out["content"] = images.message_content(m.get("content"))
    return out


def row_system_prompt(row: dict[str, Any], fmt: Any) -> str | None:
    """The system prompt of a plaintext row, as Trinity's SFT and DPO formatters take it: the row's
    format.system_prompt_key column when set (an empty value: format.system_prompt), else
    format.system_prompt."""
    key = getattr(fmt, "system_prompt_key", None)
    if key:
        if key not in row:
            raise RunError(f"a row has no {key!r} column (format.system_prompt_key): {row!r:.200}")
        if row[key] not in (None, ""):
            return str(row[key])
    return fmt.system_prompt


def sft_messages(cfg: JobConfig, row: dict[str, Any], fmt: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Chat messages and the target reply (an assistant message) of one SFT row.

    prompt_type messages (Trinity's default): the messages_key column (a list, or its JSON) is the
    conversation, taken as it is, as Trinity's SFT formatter does (no system prompt is added); its last
    (assistant) message is the target, tool calls included; a message's image parts stay in its content.
    plaintext: prompt_key / response_key, after the system prompt (row_system_prompt); with format.image_key
    the row's images join the prompt at its `<image>` tags (those beyond the tags first), as Trinity's SFT
    formatter builds the message.
    """
    fmt = fmt or cfg.buffer.trainer_input.experience_buffer.format
    if fmt.prompt_type == "messages":
        convo = _conversation(row.get(fmt.messages_key), fmt)
        if (not isinstance(convo, list) or len(convo) < 2 or not all(isinstance(m, dict) for m in convo)
                or convo[-1].get("role") != "assistant"):
            raise RunError(f"an SFT row's {fmt.messages_key!r} value is not a conversation ending in an "
                           "assistant message (format.messages_key; set format.prompt_type: plaintext for "
                           f"prompt_key / response_key columns): {row!r:.200}")
        return [_message(m) for m in convo[:-1]], _message(convo[-1])
    for key in (fmt.prompt_key, fmt.response_key):
        if key not in row:
            raise RunError(f"an SFT row has no {key!r} column (format.prompt_key / response_key): {row!r:.200}")
    messages = []
    system = row_system_prompt(row, fmt)
    if system is not None:
        messages.append({"role": "system", "content": system})
    prompt = str(row[fmt.prompt_key])
    try:
        messages.append(images.mm_message(prompt, images.as_list(row.get(fmt.image_key)))
                        if fmt.image_key else {"role": "user", "content": prompt})
    except WorkflowError as exc:
        raise RunError(f"a row's images (format.image_key {fmt.image_key!r}): {exc}: {row!r:.200}") from exc
    return messages, {"role": "assistant", "content": str(row[fmt.response_key])}


def row_tools(row: dict[str, Any], fmt: Any) -> list[Any] | None:
    """The tool definitions of an SFT row (its format.tools_key column, "tools" by default), which Trinity's SFT
    formatter hands to the chat template: a list, or its JSON as a string; none when the column is absent or
    empty."""
    key = getattr(fmt, "tools_key", None) or "tools"
    tools = row.get(key)
    if isinstance(tools, str):
        if not tools.strip():
            return None
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise RunError(f"a row's {key!r} value is not JSON ({exc}) (format.tools_key): {tools!r:.200}") from exc
    if tools in (None, [], {}):
        return None
    if not isinstance(tools, list):
        raise RunError(f"a row's {key!r} value is not a list of tool definitions (format.tools_key): {tools!r:.200}")
    return tools


# ---------------------------------------------------------------- advantages and stats


def _token_advantages(rollout: Any) -> list[float]:
    adv = rollout.advantage
    return [float(adv)] * len(rollout.tokens) if isinstance(adv, (int, float)) else list(adv)


def _loss_mask(rollout: Any) -> list[int]:
    # the workflow's action mask where it gives one (multi-turn), else every response token
    mask = getattr(rollout, "loss_mask", None)
    return list(mask) if mask is not None else [1] * len(rollout.tokens)


def assign_advantages(cfg: JobConfig, batch: ExploredBatch, plan: Any = None,
                      teacher: dict[int, list[float]] | None = None) -> list[Any]:
    """Set every rollout's advantage from the plan's advantage function over the whole batch; returns the
    rollouts that stay in the step (an advantage function may drop groups, as grpo's std_threshold).
    `teacher` holds teacher logprobs fetched by the trainer, by id() of the rollout, for rollouts whose
    workflow did not put them in info["teacher_logprobs"]."""
    plan = plan or loss_plan(cfg)
    rollouts: list[Any] = []
    samples = []
    for g, group in enumerate(batch.groups):
        for i, r in enumerate(group):
            mask = _loss_mask(r)
            n = sum(mask)
            lps = [lp for lp, k in zip(r.logprobs, mask, strict=False) if k]
            # multi-turn: a workflow's experiences carry Trinity's eid (run, step) and info (gigpo's anchor
            # state); a single-turn rollout is run i, step 0 of its task's group
            eid = getattr(r, "eid", None)
            run = getattr(eid, "run", None) if eid is not None else getattr(r, "run_id", None)
            step = getattr(eid, "step", None) if eid is not None else getattr(r, "step", None)
            info = dict(getattr(r, "info", None) or {})
            if teacher and id(r) in teacher:
                info["teacher_logprobs"] = teacher[id(r)]
            samples.append(Sample(
                task=g, run=i if run is None else run, reward=float(r.reward), step=int(step or 0), n_tokens=n,
                mean_logprob=sum(lps) / len(lps) if lps else 0.0, info=info, logprobs=list(r.logprobs)))
            rollouts.append(r)
    if plan.advantage_fn is None:  # sft on rollouts (raft): no advantage
        return rollouts
    advs = batch_advantages(plan.advantage_fn, samples, plan.advantage_args)
    kept = []
    for rollout, adv in zip(rollouts, advs, strict=True):
        if adv is not None:
            rollout.advantage = float(adv) if isinstance(adv, (int, float)) else [float(a) for a in adv]
            kept.append(rollout)
    return kept


def length_stats(prefix: str, lengths: list[int], limit: int | None) -> dict[str, float]:
    """Trinity's {prefix}/mean, max, min and clip_ratio (the share at the limit) of token lengths."""
    if not lengths:
        return {}
    out = {f"{prefix}/mean": statistics.fmean(lengths), f"{prefix}/max": float(max(lengths)),
           f"{prefix}/min": float(min(lengths))}
    out[f"{prefix}/clip_ratio"] = (sum(1 for n in lengths if n >= limit) / len(lengths)) if limit else 0.0
    return out


def reward_stats(batch: ExploredBatch, cfg: JobConfig | None = None) -> dict[str, float]:
    """Trinity's per-step rollout metrics: critic/rewards and critic/score (the same: no reward penalty),
    rollout/<metric>/{mean,max,min} of what the workflow reports, lengths, and the entropy estimate."""
    rollouts = batch.rollouts
    out: dict[str, float] = {}
    if not rollouts:
        return out
    rewards = [r.reward for r in rollouts]
    for group in ("critic/rewards", "critic/score"):
        out.update({f"{group}/mean": statistics.fmean(rewards), f"{group}/max": max(rewards),
                    f"{group}/min": min(rewards)})
    out["critic/rewards/std"] = statistics.pstdev(rewards) if len(rewards) > 1 else 0.0
    names = sorted({k for r in rollouts for k in r.metrics})
    for key in names:
        vals = [r.metrics[key] for r in rollouts if key in r.metrics]
        out.update({f"rollout/{key}/mean": statistics.fmean(vals), f"rollout/{key}/max": max(vals),
                    f"rollout/{key}/min": min(vals)})
    model = cfg.model if cfg is not None else None
    out.update(length_stats("response_length", [len(r.tokens) for r in rollouts],
                            model.max_response_tokens if model else None))
    out.update(length_stats("prompt_length", [len(r.prompt_ids) for r in rollouts],
                            model.max_prompt_tokens if model else None))
    masks = [_loss_mask(r) for r in rollouts]
    tokens = sum(sum(m) for m in masks)
    if tokens:
        # entropy estimated from the sampled tokens only: E[-log p] (what Tinker makes possible)
        out["actor/entropy"] = -sum(lp * k for r, m in zip(rollouts, masks, strict=True)
                                    for lp, k in zip(r.logprobs, m, strict=False)) / tokens
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
        job_total: int | None, stream: Any, encoder: PromptEncoder, trainer: Trainer | None,
        sampler_path: str | None = None, resume_state: dict[str, Any] | None = None,
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
        self.total = stage_steps(cfg, stream)
        self.sync = cfg.synchronizer
        self.algo = cfg.algorithm.algorithm_type
        self.plan = loss_plan(cfg)
        self._ref_sampler: Any = None
        self._teacher_sampler: Any = None
        self._expert: Any = None
        self._expert_encoder: PromptEncoder | None = None
        self._teacher_generation = -1
        self._ref_generation = -1
        self._last_sampler = sampler_path
        self._rest: Any = None
        # batching, sync and modes: whether steps take train_batch_size experiences (else one explore step's),
        # how many from the explorer, and what was last published and checkpointed
        self.counts = counts_experiences(cfg)
        self.per_step = getattr(stream, "n", None) or self._per_step()
        self.resume_state = resume_state
        self._published_step = -1
        self._checkpointed = -1
        self._last_state: tuple[Any, Any] = (None, None)
        # the learning-rate schedule's length (0 when the number of steps is not known: a constant lr)
        check_schedule(cfg, self.total)
        self.lr_total = self.total or 0
        # the step builder of each dataset kind (mode train); rollouts are _rl_work's
        self._dataset_steps = {"sft": self._sft_work, "dpo": self._dpo_work, "cpt": self._cpt_work}
        for note in self.plan.notes:
            log.info("%s: %s", stage_label(cfg), note)

    # ------------------------------------------------------------ trainer side

    def _ref_logprobs(self, rollouts: list[Any]) -> list[list[float]]:
        """Reference (base model) logprobs of each rollout's response tokens, all requests in flight at once."""
        if self._ref_sampler is None or self._ref_generation != self.conn.generation:
            self._ref_generation = self.conn.generation
            self._ref_sampler = self.conn.sampling_client(None, timeout=self.trainer.call_timeout)
        futures = [self._ref_sampler.compute_logprobs(D.model_input(r.prompt_ids, r.tokens, _prompt_chunks(r)))
                   for r in rollouts]
        out = []
        for rollout, fut in zip(rollouts, futures, strict=True):
            tail = fut.result(timeout=self.trainer.call_timeout)[-len(rollout.tokens):]
            out.append([float(x) if x is not None else 0.0 for x in tail])
        return out

    def _attach_terms(self, work: StepWork, seqs: list[tuple[Any, ...]]) -> None:
        """Give the step its client-side loss (custom plans) or its metrics from the returned logprobs."""
        if not work.datums:
            return
        try:
            # terms imports torch (~1.5 s, optional): only a loss computed here, or its metrics, needs it
            from rft_runtime.algorithms import terms
        except ImportError:  # no torch: a built-in loss still trains, without client-side metrics
            return
        seq_objs = []
        for args in seqs:
            seq = terms.make_seq(*args[:6])
            seq.expert = len(args) > 6 and bool(args[6])
            seq_objs.append(seq)
        plan = self.plan
        if plan.custom:
            work.custom_loss = terms.step_loss(plan, seq_objs, work.step)
        else:
            work.metrics_fn = lambda logprobs: terms.step_metrics(plan, seq_objs, logprobs, work.step)

    def _add_expert_data(self, datums: list[Any], seqs: list[tuple[Any, ...]]) -> int:
        """mix: append the step's expert SFT rows (sample_strategy_args.sft_dataset_name in
        buffer.trainer_input.auxiliary_buffers), ceil(expert_data_ratio x train_batch_size) of them (Trinity's
        mix sample strategy), read in a seeded order that cycles over epochs; returns how many were added."""
        args = self.cfg.algorithm.sample_strategy_args or {}
        source = self.cfg.buffer.trainer_input.auxiliary_buffers[args.get("sft_dataset_name", "sft_dataset")]
        if self._expert is None:
            n = math.ceil(float(args.get("expert_data_ratio", 0.5)) * self.cfg.train_batch_size)
            rows = load_rows(source, require_response=source.format.prompt_type != "messages")
            if len(rows) < n:
                raise RunError(f"the expert dataset {source.path} has {len(rows)} rows, fewer than the {n} each mix "
                               "step takes (expert_data_ratio x train_batch_size); add rows or lower "
                               "sample_strategy_args.expert_data_ratio")
            self._expert = iter(TaskStream(rows, batch_size=n, total_epochs=None, total_steps=self.total + 1,
                                           seed=self.cfg.explorer.rollout_model.seed))
        added = 0
        at = f"buffer.trainer_input.auxiliary_buffers.{args.get('sft_dataset_name', 'sft_dataset')}"
        where = _dataset_name(source, at)
        if self._expert_encoder is None:
            # the expert rows are SFT rows: their own format's chat template, as Trinity's SFT formatter reads it
            self._expert_encoder = (PromptEncoder.for_dataset(self.encoder.tokenizer, self.cfg, source, at)
                                    if source.format.chat_template else self.encoder)
        encoder = self._expert_encoder
        for task in next(self._expert):
            ids, resp, mask, chunks = self._sft_row(encoder, task.row, source.format, where)
            if self.encoder.too_long(ids) or not resp:
                continue
            datums.append(D.loss_datum(self.plan, ids, resp, [0.0] * len(resp), 0.0, 1.0, mask, chunks))
            seqs.append((len(ids) - 1, [0.0] * len(resp), 0.0, mask, 1.0, None, True))
            added += 1
        return added

    def _teacher_logprobs(self, rollouts: list[Any]) -> dict[int, list[float]]:
        """The teacher's (explorer.auxiliary_models[0]) logprob of every response token of the rollouts whose
        workflow gave none, from a sampling client of the teacher model."""
        need = [r for r in rollouts if r.tokens and "teacher_logprobs" not in (getattr(r, "info", None) or {})]
        if not need:
            return {}
        if self._teacher_sampler is None or self._teacher_generation != self.conn.generation:
            path = Path(self.cfg.explorer.auxiliary_models[0].model_path).expanduser()
            name = str(path.resolve()) if path.is_dir() else str(path)
            self._teacher_generation = self.conn.generation
            self._teacher_sampler = self.conn.service.create_sampling_client(base_model=name)
        futures = [self._teacher_sampler.compute_logprobs(D.model_input(r.prompt_ids, r.tokens, _prompt_chunks(r)))
                   for r in need]
        out = {}
        for r, fut in zip(need, futures, strict=True):
            tail = fut.result(timeout=float(self.cfg.synchronizer.sync_timeout))[-len(r.tokens):]
            out[id(r)] = [float(x) if x is not None else 0.0 for x in tail]
        return out

    def advantaged(self, batch: ExploredBatch) -> list[Any]:
        """The batch's rollouts with their advantages, computed over the explore step's groups on the explorer's
        side as Trinity's experience pipeline does (so a buffer or a replay keeps them); rollouts an
        advantage function drops are left out."""
        plan = self.plan
        teacher = self._teacher_logprobs(batch.rollouts) if plan.advantage_fn in TOKEN_ADVANTAGE_FNS else None
        return assign_advantages(self.cfg, batch, plan, teacher)

    def _rl_work(self, step: int, rollouts: list[Any], explored: ExploredBatch) -> tuple[StepWork, dict[str, float]]:
        """A train step on rollouts whose advantages are set; `explored` is what the metrics describe."""
        plan = self.plan
        rollouts = [r for r in rollouts if sum(_loss_mask(r))]
        masks = [_loss_mask(r) for r in rollouts]
        lengths = [sum(m) for m in masks]
        scales = agg_scales(plan.agg_mode, lengths, self.cfg.model.max_response_tokens)
        keep = list(range(len(rollouts)))
        if plan.only_policy_gradient():
            # every term is scaled by the advantage: a zero-advantage rollout would change nothing and only
            # cost time (the aggregation weights above still count its tokens, as Trinity's do)
            keep = [i for i in keep if any(a != 0.0 for a in _token_advantages(rollouts[i]))]
            if rollouts and not keep:
                # no gradient at all, but Trinity still takes the optimizer step (Adam's moments and weight
                # decay move the weights): so does this step, on the whole batch
                keep = list(range(len(rollouts)))
                log.info("step %d: every advantage is 0 (e.g. each group's rewards are equal): the loss has no "
                         "gradient; the optimizer step is still taken, as in Trinity", self.step_base + step)
        if not rollouts:
            log.info("step %d: no experience is left to train on (every rollout failed or was dropped): no "
                     "optimizer step", self.step_base + step)
        refs: list[Any] = [None] * len(keep)
        if plan.uses_reference and keep:
            refs = self._ref_logprobs([rollouts[i] for i in keep])
        datums, seqs = [], []
        for i, ref in zip(keep, refs, strict=True):
            r = rollouts[i]
            datums.append(D.loss_datum(plan, r.prompt_ids, r.tokens, r.logprobs, r.advantage, scales[i], masks[i],
                                       _prompt_chunks(r)))
            seqs.append((len(r.prompt_ids) - 1, r.logprobs, r.advantage, masks[i], scales[i], ref))
        lr = lr_at(self.cfg.algorithm.optimizer, step, self.lr_total)
        work = StepWork(step, datums, *(plan.builtin or ("custom", None)), lr)
        if plan.is_mix:
            n_expert = self._add_expert_data(datums, seqs)
        extra = {"response_tokens": float(sum(len(r.tokens) for r in explored.rollouts))}
        if plan.is_mix:
            extra["expert_rows"] = float(n_expert)
        self._attach_terms(work, seqs)
        # over the loss-carrying tokens, as Trinity's (masked_select of the token advantages)
        advs = [a for r, m in zip(rollouts, masks, strict=True) for a, k in zip(_token_advantages(r), m, strict=True)
                if k]
        if advs and plan.advantage_fn:
            extra.update({"critic/advantages/mean": sum(advs) / len(advs), "critic/advantages/max": max(advs),
                          "critic/advantages/min": min(advs)})
        return work, extra

    def _cpt_work(self, step: int, tasks: list[Any]) -> tuple[StepWork, dict[str, float]]:
        """Raw text (format.prompt_key) as one sequence each: cross-entropy on every token after the first, as
        Trinity's CPT formatter (prompt_length 1); model.max_model_len (else prompt + response budgets) cuts
        a longer text."""
        fmt = self.cfg.buffer.trainer_input.experience_buffer.format
        model = self.cfg.model
        limit = model.max_model_len or ((model.max_prompt_tokens or 0) + (model.max_response_tokens or 0)) or None
        seqs_ids = []
        truncated = 0
        for task in tasks:
            ids = list(self.encoder.tokenizer(str(task.row[fmt.prompt_key]))["input_ids"])
            if limit and len(ids) > limit:
                ids, truncated = ids[:limit], truncated + 1
            if len(ids) >= 2:
                seqs_ids.append(ids)
        lengths = [len(ids) - 1 for ids in seqs_ids]
        scales = agg_scales(self.plan.agg_mode, lengths, None)
        datums = [D.loss_datum(self.plan, ids[:1], ids[1:], [0.0] * n, 0.0, sc, [1] * n)
                  for ids, n, sc in zip(seqs_ids, lengths, scales, strict=True)]
        extra = {"prompt_tokens": 0.0, "response_tokens": float(sum(lengths)), "truncated_prompts": float(truncated),
                 "rollouts": 0.0, "failed_rollouts": 0.0, **length_stats("response_length", lengths, limit)}
        work = StepWork(step, datums, *(self.plan.builtin or ("custom", None)),
                        lr_at(self.cfg.algorithm.optimizer, step, self.total))
        self._attach_terms(work, [(0, [0.0] * n, 0.0, [1] * n, sc, None) for n, sc in zip(lengths, scales, strict=True)])
        return work, extra

    def _dpo_work(self, step: int, tasks: list[Any]) -> tuple[StepWork, dict[str, float]]:
        """Each row's chosen and rejected responses as two datums (chosen first), with the reference model's
        logprobs for the DPO ratios."""
        fmt = self.cfg.buffer.trainer_input.experience_buffer.format
        pairs = []
        truncated = 0
        limit = self.cfg.model.max_response_tokens
        where = _dataset_name(self.cfg.buffer.trainer_input.experience_buffer, "buffer.trainer_input.experience_buffer")
        for task in tasks:
            messages, _ = sft_messages(self.cfg, {**task.row, fmt.response_key: "",
                                                  fmt.messages_key: _dpo_convo(task.row, fmt)})
            ids, chunks = self.encoder.prompt_input(messages, where)
            if self.encoder.too_long(ids):
                truncated += 1
                continue
            replies = [self.encoder.response_ids(_reply_text(task.row[k])) for k in (fmt.chosen_key, fmt.rejected_key)]
            pairs.append((ids, [r[:limit] if limit else r for r in replies], chunks))
        # the chosen and the rejected reply share the prompt, its images included
        items = [SimpleNamespace(prompt_ids=ids, tokens=resp, info={"prompt_chunks": chunks})
                 for ids, both, chunks in pairs for resp in both]
        refs = self._ref_logprobs(items) if items else []
        lengths = [len(i.tokens) for i in items]
        # the dpo loss sums each reply's tokens; a KL or entropy term is aggregated over all replies' tokens
        scales = agg_scales(self.plan.agg_mode, lengths, limit)
        datums, seqs = [], []
        for item, ref, scale in zip(items, refs, scales, strict=True):
            mask = [1] * len(item.tokens)
            datums.append(D.loss_datum(self.plan, item.prompt_ids, item.tokens, [0.0] * len(mask), 0.0, scale, mask,
                                       item.info["prompt_chunks"]))
            seqs.append((len(item.prompt_ids) - 1, [0.0] * len(mask), 0.0, mask, scale, ref))
        extra = {
            "prompt_tokens": float(sum(len(ids) for ids, _, _ in pairs)), "response_tokens": float(sum(lengths)),
            "truncated_prompts": float(truncated), "rollouts": 0.0, "failed_rollouts": 0.0,
            **length_stats("response_length", lengths, limit),
        }
        work = StepWork(step, datums, "custom", None, lr_at(self.cfg.algorithm.optimizer, step, self.total))
        self._attach_terms(work, seqs)
        return work, extra

    def _sft_row(self, encoder: PromptEncoder, row: dict[str, Any], fmt: Any, where: str,
                 ) -> tuple[list[int], list[int], list[int], list[Any] | None]:
        """(prompt ids, response ids, mask, prompt chunks or None) of one SFT row (a dataset's or mix's expert
        data), as Trinity's SFT formatter makes it: its last reply, or with format.enable_concatenated_multi_turn
        every assistant turn; the response cut at model.max_response_tokens."""
        messages, reply = sft_messages(self.cfg, row, fmt)
        tools = row_tools(row, fmt)
        if getattr(fmt, "enable_concatenated_multi_turn", False):
            ids, resp, mask = encoder.every_turn([*messages, reply], tools)
            chunks = None
        else:
            ids, chunks = encoder.prompt_input(messages, where, tools)
            resp = encoder.reply_ids(messages, reply, tools)
            mask = [1] * len(resp)
        limit = self.cfg.model.max_response_tokens
        if limit and len(resp) > limit:
            resp, mask = resp[:limit], mask[:limit]
        return ids, resp, mask, chunks

    def _sft_work(self, step: int, tasks: list[Any]) -> tuple[StepWork, dict[str, float]]:
        """Each row's prompt (with its images as image chunks) and target response as one cross-entropy datum."""
        rows = []
        prompt_tokens = truncated = 0
        store = self.cfg.buffer.trainer_input.experience_buffer
        where = _dataset_name(store, "buffer.trainer_input.experience_buffer")
        for task in tasks:
            ids, resp, mask, chunks = self._sft_row(self.encoder, task.row, store.format, where)
            if self.encoder.too_long(ids):
                truncated += 1
                continue
            prompt_tokens += len(ids)
            rows.append((ids, resp, mask, chunks))
        n_tokens = sum(len(r[1]) for r in rows)
        scales = agg_scales(self.plan.agg_mode, [sum(r[2]) for r in rows], self.cfg.model.max_response_tokens)
        datums = [D.loss_datum(self.plan, ids, resp, [0.0] * len(resp), 0.0, sc, mask, chunks)
                  for (ids, resp, mask, chunks), sc in zip(rows, scales, strict=True)]
        lr = lr_at(self.cfg.algorithm.optimizer, step, self.total)
        extra = {
            "prompt_tokens": float(prompt_tokens), "response_tokens": float(n_tokens),
            "truncated_prompts": float(truncated), "rollouts": 0.0, "failed_rollouts": 0.0,
            **length_stats("response_length", [len(r[1]) for r in rows], self.cfg.model.max_response_tokens),
            **length_stats("prompt_length", [len(r[0]) for r in rows], self.cfg.model.max_prompt_tokens),
        }
        work = StepWork(step, datums, *(self.plan.builtin or ("custom", None)), lr)
        self._attach_terms(work, [(len(ids) - 1, [0.0] * len(resp), 0.0, mask, sc, None)
                                  for (ids, resp, mask, _), sc in zip(rows, scales, strict=True)])
        return work, extra

    # ------------------------------------------------------------ checkpoints (batching, sync and modes below)

    def _checkpoint(self, step: int, stream_state: dict[str, Any] | None, sampler_path: str | None,
                    held: list[list[dict[str, Any]]] | None = None) -> None:
        label = f"s{self.cfg.stage_index or 0}-step{step:06d}"
        state = self.trainer.save_state(label)
        if held is not None:
            # train_batch_size / replay: what was explored but not trained (or is kept for replay) is part of
            # the checkpoint, so a resumed run neither loses nor repeats experiences
            stream_state = dict(stream_state or {}, rft_leftover=save_leftover(
                self.cfg.job_dir, label, [[self._as_record(item) for item in group] for group in held]))
        entry = CheckpointEntry(
            stage_index=self.cfg.stage_index or 0, stage_step=step, global_step=self.step_base + step,
            state_path=state, sampler_path=sampler_path, stream_state=stream_state,
        )
        dropped = self.book.record(entry, self.cfg.trainer.max_checkpoints_to_keep)
        self.book.save(self.cfg.job_dir)
        self._checkpointed = step
        for old in dropped:
            self._delete_checkpoint(old.state_path)
            drop_leftover(self.cfg.job_dir, old.stream_state)

    def _delete_checkpoint(self, path: str) -> None:
        import tinker  # the SDK imports torch: see loop/datums.py

        try:
            if self._rest is None:
                self._rest = tinker.RestClient(base_url=self.conn.base_url, api_key=self.conn.api_key)
            self._rest.delete_checkpoint_from_tinker_path(path).result(timeout=30)
        except Exception as exc:  # the bookkeeping no longer points at it; leaving the files is harmless
            log.info("could not delete old checkpoint %s: %s", path, exc)

    def _per_step(self) -> int:
        """Experiences from the explorer per train step (explore steps' worth when one is taken whole)."""
        return rollouts_per_step(self.cfg, self.plan.is_mix) if self.counts else self.cfg.explore_batch_size

    @staticmethod
    def _as_record(item: dict[str, Any]) -> dict[str, Any]:
        # an Exchange item ({"rollout", "model_version", "use_count", "explore_step"}) or already a record
        if "rollout" not in item:
            return item
        return to_record(item["rollout"], explore_step=int(item["explore_step"]),
                         model_version=int(item["model_version"]), use_count=int(item["use_count"]))

    # ------------------------------------------------------------ run

    def run(self, start_step: int, start_weights: tuple[int, str | None]) -> StageResult:
        """Train steps start_step+1 .. total (fewer when the experiences run out); returns the final state and
        sampler paths. start_weights: the (version, sampler path) the explorer starts from."""
        if self.cfg.mode == "train" and isinstance(self.stream, StoreFeed):
            return self._run_train_experiences(start_step)
        if self.cfg.mode == "train":
            return self._run_train(start_step)
        return self._run_both(start_step, start_weights)

    def _publish(self, step: int, exchange: Any) -> tuple[float, str]:
        t0 = time.monotonic()
        sampler_path = self.trainer.save_sampler(f"s{self.cfg.stage_index or 0}-sampler{step:06d}")
        self._last_sampler = sampler_path
        self._published_step = step
        # Trinity's files too: a serve, bench or mode-explore job in another process follows them
        published.publish(self.cfg.job_dir, self.step_base + step, sampler_path)
        if exchange is not None:
            exchange.publish(step, sampler_path)
        return time.monotonic() - t0, sampler_path

    def _finish_step(self, step: int, work: StepWork, extra: dict[str, float],
                     exchange: Any) -> tuple[float, str | None]:
        """Train the step, then save sampler weights when the synchronizer says so, and at the end."""
        result = self.trainer.train(work)
        t_sync = 0.0
        sampler_path = None
        last = step == self.total
        if last or (exchange is not None and exchange.publishes_at(step)):
            t_sync, sampler_path = self._publish(step, exchange)
        # Trinity's names: actor/* from the loss terms, grad_norm and learning_rate from the optimizer step
        extra.update({k: v for k, v in result.metrics.items() if k.startswith("actor/")})
        key = "actor/sft_loss" if self.plan.is_sft else "actor/pg_loss"
        extra.setdefault(key, result.loss)
        extra["actor/final_loss"] = result.loss
        if "optim/grad_norm" in result.metrics:
            extra["grad_norm"] = result.metrics["optim/grad_norm"]
        extra["learning_rate"] = work.lr
        extra["time/update_actor"] = result.time_training_s
        return t_sync, sampler_path

    def _log(self, step: int, explore_step: int, record: dict[str, Any], t_step: float,
             stream_state: dict[str, Any] | None, held: list[list[dict[str, Any]]] | None = None) -> None:
        record.update(step=self.step_base + step, total_steps=self.job_total,
                      explore_step=self.step_base + explore_step, timestamp=time.time(),
                      # which stage a line belongs to: the plot draws each stage's loss on its own axes
                      stage=stage_label(self.cfg), algorithm=self.algo, stage_step=step,
                      stage_total_steps=self.total)
        record["time/step"] = t_step
        self.monitor.log_step(record)
        # the checkpoint comes after the step's line: a kill in between makes the resumed run drop that
        # line and redo the step, whereas the other order could lose the line for good
        save_every = self.cfg.trainer.save_interval
        if step == self.total or (save_every and step % save_every == 0):
            self._checkpoint(step, stream_state, self._last_sampler, held)
        self._last_state = (stream_state, held)

    def _end_early(self, step: int, why: str) -> None:
        """A stage whose experiences ran out before its expected last step: final weights and checkpoint."""
        if step and self.total is not None and step < self.total:
            log.warning("%s ended after train step %d of %d: %s", stage_label(self.cfg), self.step_base + step,
                        self.step_base + self.total, why)
        if not step:
            return
        if self._published_step != step:
            self._publish(step, None)
        if self._checkpointed != step:
            stream_state, held = self._last_state
            self._checkpoint(step, stream_state, self._last_sampler, held)

    def _run_train(self, start_step: int) -> StageResult:
        it = iter(self.stream)
        last_end = time.monotonic()
        for step in range(start_step + 1, self.total + 1):
            try:
                tasks = next(it)
            except StopIteration:
                break
            stream_state = self.stream.state_dict()
            work, extra = self._dataset_steps[self.plan.data](step, tasks)
            t_sync, _ = self._finish_step(step, work, extra, None)
            record = dict(extra, weight_version_lag=0)
            record.update({"time/sampling": 0.0, "time/sync": t_sync})
            now = time.monotonic()
            self._log(step, step, record, now - last_end, stream_state)
            last_end = now
        return StageResult(self.total, self.trainer.base_state, self._last_sampler)

    def _step_record(self, step: int, batch: ExploredBatch, extra: dict[str, float], t_sync: float,
                     trained: int, versions: list[int], uses: list[int] | None = None) -> dict[str, Any]:
        record = reward_stats(batch, self.cfg)
        record.update(extra)
        record.update(batch.metrics)  # the experience pipeline's
        record["time/sampling"] = batch.time_sampling_s
        record["time/sync"] = t_sync + batch.time_sync_s
        record.update(
            prompt_tokens=float(batch.prompt_tokens),
            rollouts=float(trained),
            failed_rollouts=float(batch.failed_rollouts),
            truncated_prompts=float(batch.truncated_prompts),
            weight_version_lag=int(step - 1 - (min(versions) if versions else batch.weight_version)),
        )
        if versions and self.counts:
            record.update({"sample/model_version/mean": sum(versions) / len(versions),
                           "sample/model_version/min": float(min(versions)),
                           "sample/model_version/max": float(max(versions))})
        if uses:
            # replay: how often the step's experiences have been trained on, this time included
            record.update({"sample/use_count/mean": sum(uses) / len(uses), "sample/use_count/max": float(max(uses))})
        if batch.truncated_prompts:
            limit = prompt_limit(self.cfg)
            log.warning("step %d: %d of %d prompts were longer than %s (the longest %d tokens) and were skipped, "
                        "not sampled", self.step_base + step, batch.truncated_prompts,
                        batch.truncated_prompts + batch.sampled_prompts,
                        f"model.max_prompt_tokens ({limit})" if limit else "the model's context",
                        batch.longest_truncated)
        return record

    def _answer_sync(self, exchange: Exchange, step: int) -> None:
        """explorer_driven: the explorer asks for weights; give it those of the last trained step, if new."""
        if step > self._published_step:
            self._publish(step, exchange)
        else:
            exchange.nothing_new()

    def _run_both(self, start_step: int, start_weights: tuple[int, str | None]) -> StageResult:
        check_some_prompt_fits(self.cfg, self.encoder, self.stream)
        version, path = start_weights
        self._published_step = start_step
        evals = EvalRunner(self.cfg, self.conn, self.encoder, self.cfg.job_dir)
        if evals.sets and start_step == 0 and self.cfg.explorer.eval_on_startup:
            evals.run(self.step_base, path)
        batcher = make_batcher(self.cfg) if self.counts else None
        exchange = Exchange(self.cfg, start_version=version, start_path=path, batcher=batcher,
                            batch_experiences=self.per_step,
                            capacity=int(self.cfg.buffer.trainer_input.experience_buffer.capacity))
        leftover = (self.resume_state or {}).get("rft_leftover") if start_step else None
        if leftover and batcher is not None:
            for group in load_leftover(self.cfg.job_dir, leftover):
                batcher.add([{"rollout": from_record(r), "model_version": int(r.get("model_version", 0)),
                              "use_count": int(r.get("use_count", 0)), "explore_step": int(r.get("explore_step", 0))}
                             for r in group])

        # a queue that names a path keeps a record of every experience there, as Trinity's queue does
        eb = self.cfg.buffer.trainer_input.experience_buffer
        record_to = None
        if eb.path and can_hold(eb.path):
            record_to = open_store(eb, self.cfg.job_dir)
        elif eb.path:
            log.warning("buffer.trainer_input.experience_buffer.path %s is neither a database URL nor a .jsonl file: "
                        "the queue keeps no record of its experiences (as Trinity's)", eb.path)
        writer = record_to.register_writer() if record_to is not None else None

        def deliver(batch: ExploredBatch) -> None:
            rollouts = self.advantaged(batch)
            if record_to is not None:
                record_to.write([to_record(r, explore_step=batch.explore_step, model_version=max(batch.weight_version, 0))
                                 for r in rollouts])
            exchange.put(Explored(batch, rollouts))

        explorer = ExplorerThread(
            self.cfg, self.conn, self.encoder, self.stream, first_step=self.stream.step + 1,
            last_step=self.stream.total_steps, weights_for=exchange.weights_for, latest=exchange.latest,
            deliver=deliver, finish=exchange.finish, fail=exchange.fail,
            recovery_window=self.trainer.recovery_window, trainer_activity=lambda: self.trainer.activity)

        def explorer_activity() -> str:
            down = ""
            if self.conn.base_url and not healthy(self.conn.base_url):
                down = f"; the server at {self.conn.base_url} does not answer /api/v1/healthz"
            return f"{explorer.activity}{down}"

        explorer.start()
        last_end = time.monotonic()
        step = start_step
        try:
            while self.total is None or step < self.total:
                got = exchange.take(step + 1, explorer_activity)
                if got is SYNC_REQUESTED:
                    self._answer_sync(exchange, step)
                    continue
                if got is None:
                    break
                step += 1
                work, extra = self._rl_work(step, got.rollouts, got.explored)
                t_sync, _ = self._finish_step(step, work, extra, exchange)
                trained = len(got.rollouts) if self.counts else len(got.explored.rollouts)
                record = self._step_record(step, got.explored, extra, t_sync, trained, got.versions, got.uses)
                now = time.monotonic()
                self._log(step, got.explore_step, record, now - last_end, got.stream_state,
                          got.held if self.counts else None)
                if evals.due(step, step == self.total):
                    evals.run(self.step_base + step, self._last_sampler)
                last_end = now
        finally:
            exchange.close()
            explorer.stop()
            if record_to is not None:
                record_to.finish_writer(writer)
                record_to.close()
        self._end_early(step, f"the explorer finished and fewer than {self.per_step} experiences were left "
                              "(rollouts that failed, or groups an advantage function dropped, make fewer)")
        return StageResult(step, self.trainer.base_state, self._last_sampler)

    def _run_train_experiences(self, start_step: int) -> StageResult:
        """mode train on rollouts: train_batch_size experiences per step from the buffer another job (mode
        explore) writes; sampler weights are published in the job directory every trainer_sync_interval."""
        feed = self.stream
        interval = self.sync.trainer_sync_interval or self.sync.sync_interval
        job_dir = self.cfg.job_dir
        self._published_step = start_step
        step = start_step
        last_end = time.monotonic()
        try:
            while self.total is None or step < self.total:
                records = feed.take(step + 1, lambda seen, at=self.step_base + step: published.set_status(
                    job_dir, published.WAITING, at, seen))
                if records is None:
                    break
                published.set_status(job_dir, published.TRAINING, self.step_base + step)
                step += 1
                rollouts = [from_record(r) for r in records]
                versions = [int(r.get("model_version") or 0) for r in records]
                explored = ExploredBatch(explore_step=max(int(r.get("explore_step") or 0) for r in records),
                                         groups=[rollouts], weight_version=min(versions), stream_state={})
                explored.failed_rollouts = sum(1 for r in rollouts if r.failed)
                work, extra = self._rl_work(step, rollouts, explored)
                t_sync, _ = self._finish_step(step, work, extra, None)
                if step % interval == 0 and self._published_step != step:
                    t_sync += self._publish(step, None)[0]
                uses = [int(r.get("use_count") or 1) for r in records] if replay_on(self.cfg) else None
                record = self._step_record(step, explored, extra, t_sync, len(rollouts), versions, uses)
                record["time/sampling"] = feed.last_wait_s
                now = time.monotonic()
                self._log(step, explored.explore_step, record, now - last_end, feed.state_dict(), feed.held())
                last_end = now
            self._end_early(step, f"the explorer finished and fewer than {feed.n} experiences were left in "
                                  f"{feed.store.describe()}")
        finally:
            published.set_status(job_dir, published.STOPPED, self.step_base + step)
        return StageResult(step, self.trainer.base_state, self._last_sampler)
