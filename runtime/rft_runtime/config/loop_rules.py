"""The loop's rules on Tinker: modes, sync styles, train_batch_size and the replay buffer.

What Trinity 0.6's Tinker mode runs, this runtime runs: every mode but colocate (a veRL layout of one GPU),
every sync style, a train_batch_size of its own, and the replay buffer. What is left to refuse is what
Trinity refuses too, or what cannot mean anything here; each issue names the field and what to do.
"""

from __future__ import annotations

from typing import Any

from rft_runtime.buffers.replay import PRIORITY_FNS
from rft_runtime.config.catalog import OFFLINE_ALGORITHMS, TINKER_ALGORITHMS
from rft_runtime.config.errors import ConfigIssue

# modes that train nothing: each is a job of its own, not a stage of one, keeping its files in a folder of
# the job directory (rft_runtime.loop.roles)
ROLE_MODES = ("explore", "bench", "serve")


def check_tinker_loop(cfg: Any) -> list[ConfigIssue]:
    """Every problem of the mode, synchronizer and buffer settings of a Tinker job."""
    issues: list[ConfigIssue] = []
    algo = cfg.algorithm.algorithm_type
    offline = algo in OFFLINE_ALGORITHMS
    if cfg.mode == "colocate":
        issues.append(ConfigIssue("mode", "mode 'colocate' puts veRL's explorer and trainer on one GPU; on Tinker "
                                          "there is no GPU to share: use 'both'"))
    elif cfg.mode == "both" and offline:
        issues.append(ConfigIssue("algorithm.algorithm_type", f"{algo} learns from a fixed dataset: set mode: "
                                                              "train and buffer.trainer_input.experience_buffer.path"))
    elif cfg.mode == "explore" and offline:
        issues.append(ConfigIssue("mode", f"mode 'explore' makes rollouts for a trainer, and {algo} learns from a "
                                          "fixed dataset: use mode train with its dataset"))
    elif cfg.mode == "train" and not offline and algo in TINKER_ALGORITHMS:
        eb = cfg.buffer.trainer_input.experience_buffer
        if eb.storage_type == "file" and eb.path and not str(eb.path).endswith((".jsonl", ".json")):
            issues.append(ConfigIssue(
                "buffer.trainer_input.experience_buffer.path",
                f"mode train with {algo} trains on the experiences a mode-explore job writes, and a file of them "
                "is a .jsonl; for a database use storage_type: sql and a SQLAlchemy URL"))
    for i, stage in enumerate(cfg.stages or []):
        if isinstance(stage, dict) and stage.get("mode") in ROLE_MODES:
            issues.append(ConfigIssue(f"stages[{i}].mode", f"mode {stage['mode']!r} runs as a job of its own (it "
                                                           "trains nothing), not as a stage: give it its own config"))
    if cfg.mode == "bench" and not cfg.buffer.explorer_input.eval_tasksets:
        issues.append(ConfigIssue("buffer.explorer_input.eval_tasksets", "mode bench scores checkpoints on the eval "
                                                                         "tasksets: add at least one", soft=True))
    if cfg.synchronizer.sync_style == "fully_async" and cfg.buffer.explorer_input.eval_tasksets \
            and cfg.mode in ("both", "explore"):
        issues.append(ConfigIssue("synchronizer.sync_style", "fully_async does not evaluate eval_tasksets (Trinity "
                                                             "refuses the pair too): remove the eval tasksets, or "
                                                             "use explorer_driven"))
    issues += _explorer_pacing(cfg)
    eb = cfg.buffer.trainer_input.experience_buffer
    # Trinity's dataclasses type these fields without bounds; the loop needs them in range
    bounds = [("buffer.trainer_input.experience_buffer.capacity", eb.capacity, 1, ">= 1"),
              ("buffer.trainer_input.experience_buffer.max_read_timeout", eb.max_read_timeout, 1e-9, "> 0 seconds"),
              ("buffer.trainer_input.experience_buffer.max_retry_times", eb.max_retry_times, 0, ">= 0"),
              ("buffer.trainer_input.experience_buffer.max_retry_interval", eb.max_retry_interval, 0, ">= 0 seconds"),
              ("synchronizer.explorer_sync_interval", cfg.synchronizer.explorer_sync_interval, 1, ">= 1, or null"),
              ("synchronizer.trainer_sync_interval", cfg.synchronizer.trainer_sync_interval, 1, ">= 1, or null"),
              ("explorer.service_status_check_interval", cfg.explorer.service_status_check_interval, 1,
               ">= 1 second"),
              ("explorer.proxy_port", cfg.explorer.proxy_port, 0, "a port, 0-65535")]
    for path, value, low, what in bounds:
        if value is not None and value < low:
            issues.append(ConfigIssue(path, f"must be {what}, got {value!r}"))
    if cfg.explorer.proxy_port > 65535:
        issues.append(ConfigIssue("explorer.proxy_port", f"must be a port, 0-65535, got {cfg.explorer.proxy_port}"))
    replay = eb.replay_buffer
    if replay is not None and replay.enable:
        where = "buffer.trainer_input.experience_buffer.replay_buffer"
        fn = PRIORITY_FNS.get(replay.priority_fn)
        takes = tuple(fn.defaults) if fn is not None else None
        if takes is None:
            issues.append(ConfigIssue(f"{where}.priority_fn", f"unknown priority function {replay.priority_fn!r}; "
                                                              f"Trinity 0.6 has {', '.join(PRIORITY_FNS)}"))
        else:
            unknown = sorted(set(replay.priority_fn_args or {}) - set(takes))
            if unknown:
                issues.append(ConfigIssue(f"{where}.priority_fn_args", f"{replay.priority_fn} takes "
                                                                       f"{', '.join(takes)}, not {', '.join(unknown)}"))
        if replay.reuse_cooldown_time is not None and replay.reuse_cooldown_time < 0:
            issues.append(ConfigIssue(f"{where}.reuse_cooldown_time", "must be >= 0 seconds, or null for no reuse"))
    return issues


def _explorer_pacing(cfg: Any) -> list[ConfigIssue]:
    """explorer.over_rollout and explorer.dynamic_timeout: Trinity's bounds and its one refused pairing."""
    issues: list[ConfigIssue] = []
    over = cfg.explorer.over_rollout
    if over.ratio:
        if not 0.0 <= over.ratio < 1.0:
            issues.append(ConfigIssue("explorer.over_rollout.ratio", f"must be in [0, 1): the share of a step's "
                                                                     f"tasks it need not wait for; got {over.ratio}"))
        elif cfg.synchronizer.sync_style == "fixed" and cfg.mode in ("both", "explore"):
            issues.append(ConfigIssue("explorer.over_rollout.ratio", (
                "over_rollout does not go with synchronizer.sync_style fixed (Trinity refuses the pair too): set "
                "sync_style to explorer_driven or trainer_driven, or the ratio to 0")))
    if over.wait_after_min < 0:
        issues.append(ConfigIssue("explorer.over_rollout.wait_after_min", f"must be >= 0 seconds, got "
                                                                         f"{over.wait_after_min}"))
    dt = cfg.explorer.dynamic_timeout
    if dt.enable:
        if dt.ratio <= 0:
            issues.append(ConfigIssue("explorer.dynamic_timeout.ratio", f"must be > 0: the timeout is the mean run "
                                                                       f"time times this; got {dt.ratio}"))
        if dt.warmup_min_steps < 0:
            issues.append(ConfigIssue("explorer.dynamic_timeout.warmup_min_steps", f"must be >= 0, got "
                                                                                  f"{dt.warmup_min_steps}"))
    return issues


def summary_rows(stage: Any, prefix: str = "") -> list[tuple[str, str]] | None:
    """`rft validate`'s batch and steps lines for a Tinker stage whose batches are not simply a dataset's
    (None: the usual lines apply)."""
    if stage.backend != "tinker":
        return None
    b = stage.buffer
    eb = b.trainer_input.experience_buffer
    where = f"the {eb.storage_type} buffer at {eb.path or '<job dir>/buffer/' + (eb.name or 'experience_buffer')}"
    caps = " (trainer.total_steps caps it)" if stage.trainer.total_steps else ""
    if stage.mode == "train" and stage.algorithm.algorithm_type not in OFFLINE_ALGORITHMS:
        return [(f"{prefix}batch", f"{stage.train_batch_size} experiences per step from {where}, which a "
                                   "mode-explore job writes"),
                (f"{prefix}steps", f"{stage.trainer.total_steps} steps" if stage.trainer.total_steps else
                 "until the explore jobs have finished and less than a batch is left")]
    if stage.mode == "bench":
        return [(f"{prefix}scores", f"the checkpoints in the job directory on "
                                    f"{len(b.explorer_input.eval_tasksets)} eval taskset(s)")]
    if stage.mode == "serve":
        return [(f"{prefix}serves", f"http://{stage.explorer.listen_address}:{stage.explorer.proxy_port}/v1 with "
                                    "the newest weights published in the job directory")]
    if stage.mode == "explore":
        return [(f"{prefix}batch", f"{b.batch_size} tasks x {stage.algorithm.repeat_times} rollouts per step, "
                                   f"written to {where}")]
    replay = eb.replay_buffer is not None and eb.replay_buffer.enable
    if stage.mode == "both" and (b.train_batch_size or replay):
        how = " by replay priority" if replay else ""
        return [(f"{prefix}batch", f"{b.batch_size} tasks x {stage.algorithm.repeat_times} rollouts per explore "
                                   f"step; each train step takes {stage.train_batch_size} experiences{how}{caps}")]
    return None
