"""How many experiences a train step takes, and how many train steps a stage has.

Trinity's trainer reads `buffer.train_batch_size` experiences per step (default: batch_size x
repeat_times, one explorer step's worth) from the experience buffer, while the explorer keeps its own
batch. With the default and no replay buffer, each train step simply takes one whole explore step (what
Trinity's launcher describes: the trainer consumes what the explorer made in the latest step); then a task
whose rollouts were all dropped does not hold the next step up. With train_batch_size set, or the replay
buffer on, steps take exactly that many experiences through a Batcher.

mix (sample_strategy mix) fills ceil(expert_data_ratio x train_batch_size) of the batch with expert rows,
so the rollouts are the rest, as Trinity's mix sample strategy reads them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rft_runtime.buffers import Batcher, ReplayPool, priority_fn
from rft_runtime.config import JobConfig
from rft_runtime.loop.errors import RunError

LEFTOVER_DIR = "buffer"


def replay_on(cfg: JobConfig) -> bool:
    """Whether the experience buffer's replay buffer is enabled."""
    replay = cfg.buffer.trainer_input.experience_buffer.replay_buffer
    return bool(replay is not None and replay.enable)


def counts_experiences(cfg: JobConfig) -> bool:
    """True when train steps take exactly train_batch_size experiences rather than one explore step each."""
    return cfg.mode != "both" or bool(cfg.buffer.train_batch_size) or replay_on(cfg)


def expert_rows(cfg: JobConfig, is_mix: bool) -> int:
    """Expert SFT rows per step of a mix step (0 for other algorithms)."""
    if not is_mix:
        return 0
    ratio = float((cfg.algorithm.sample_strategy_args or {}).get("expert_data_ratio", 0.5))
    return math.ceil(ratio * cfg.train_batch_size)


def rollouts_per_step(cfg: JobConfig, is_mix: bool) -> int:
    """Experiences from the explorer each train step takes (train_batch_size less mix's expert rows)."""
    n = cfg.train_batch_size - expert_rows(cfg, is_mix)
    if n < 1:
        raise RunError(f"buffer.train_batch_size {cfg.train_batch_size} leaves no room for rollouts beside mix's "
                       f"{expert_rows(cfg, is_mix)} expert rows (sample_strategy_args.expert_data_ratio); raise it")
    return n


def train_steps(cfg: JobConfig, explore_steps: int, is_mix: bool) -> int | None:
    """Train steps of a mode-both stage whose explorer runs `explore_steps` steps (None: not known ahead,
    as with the replay buffer and no trainer.total_steps, which reuses experiences as long as it explores)."""
    if not counts_experiences(cfg):
        return explore_steps
    if replay_on(cfg):
        return cfg.trainer.total_steps or None
    made = explore_steps * cfg.explore_batch_size // rollouts_per_step(cfg, is_mix)
    return min(made, cfg.trainer.total_steps) if cfg.trainer.total_steps else made


def check_schedule(cfg: JobConfig, total: int | None) -> None:
    """A learning-rate schedule that needs the number of steps cannot run when it is not known."""
    opt = cfg.algorithm.optimizer
    if total is None and (opt.lr_scheduler_type != "constant" or
                          (opt.lr_warmup_steps < 0 and opt.lr_warmup_steps_ratio > 0)):
        raise RunError("algorithm.optimizer's learning-rate schedule needs the number of train steps, which this "
                       "job does not know ahead (it trains until the explorer's experiences run out): set "
                       "trainer.total_steps")


def make_batcher(cfg: JobConfig) -> Batcher:
    """A Batcher for the experience buffer: through the replay pool when replay is on."""
    store = cfg.buffer.trainer_input.experience_buffer
    if not replay_on(cfg):
        return Batcher()
    replay = store.replay_buffer
    where = "buffer.trainer_input.experience_buffer.replay_buffer"
    fn = priority_fn(replay.priority_fn, replay.priority_fn_args, where)
    return Batcher(ReplayPool(int(store.capacity), fn, replay.reuse_cooldown_time))


# ---------------------------------------------------------------- what a checkpoint keeps of the buffer


def save_leftover(job_dir: Path, label: str, groups: list[list[dict[str, Any]]]) -> str:
    """Write the groups a checkpoint keeps (explored, not yet trained, or kept for replay); returns the
    file's path relative to the job directory."""
    rel = f"{LEFTOVER_DIR}/leftover-{label}.jsonl"
    path = job_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(group) + "\n" for group in groups))
    os.replace(tmp, path)
    return rel


def load_leftover(job_dir: Path, rel: str) -> list[list[dict[str, Any]]]:
    """The groups save_leftover wrote (none when the file is gone)."""
    path = job_dir / rel
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drop_leftover(job_dir: Path, stream_state: dict[str, Any] | None) -> None:
    """Delete the leftover file of a checkpoint that is no longer kept."""
    rel = (stream_state or {}).get("rft_leftover")
    if rel:
        (job_dir / rel).unlink(missing_ok=True)
