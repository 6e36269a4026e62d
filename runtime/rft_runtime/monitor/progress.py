"""The console's view of a run: one tqdm bar per stage on a terminal, else one log line per step (pod logs).

`--no-progress` turns the bar off, never the log lines: a pod's `kubectl logs` must show the job moving.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger("rft_runtime.progress")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def summary(record: dict[str, Any]) -> dict[str, str]:
    """The few numbers worth a glance: reward, accuracy (when it says more than reward), loss."""
    out: dict[str, str] = {}
    for key, short in (("critic/rewards/mean", "reward"), ("rollout/accuracy/mean", "acc"),
                       ("actor/pg_loss", "loss"), ("actor/sft_loss", "loss")):
        if record.get(key) is not None:
            out[short] = _fmt(record[key])
    if out.get("acc") is not None and out.get("acc") == out.get("reward"):
        del out["acc"]  # a 0/1 accuracy reward: the same number twice only crowds the line
    if record.get("truncated_prompts"):
        # prompts over model.max_prompt_tokens were not sampled: a step that trained on less says so
        out["skipped_prompts"] = _fmt(int(record["truncated_prompts"]))
    return out


def _terminal_sized() -> bool:
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return size.columns > 0 and size.lines > 0


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Progress:
    """Train steps of each stage: a named bar per stage on a terminal, one log line per step otherwise."""

    def __init__(self, enabled: bool = True, desc: str = "train"):
        self.enabled = enabled
        self.desc = desc
        self._bar: Any = None
        self._stage: str | None = None
        # A bar full of carriage returns is unreadable in `kubectl logs`: only draw one on a terminal.
        self._tty = enabled and sys.stderr.isatty()

    def start_stage(self, name: str, total: int | None, done: int = 0) -> None:
        """Open the stage's bar now, so its rate counts from the stage's start, not from its first step."""
        self._stage = name
        if self._tty:
            self._open(name, total, done)

    def _open(self, name: str, total: int | None, done: int) -> None:
        # tqdm only when a bar is drawn (on a terminal)
        from tqdm import tqdm

        self.close()
        # a pty that reports a 0x0 size (some CI runners, `script`) would make tqdm draw nothing
        sized = _terminal_sized()
        self._bar = tqdm(total=total, initial=done, desc=name, unit="step", dynamic_ncols=sized,
                         ncols=None if sized else 120, nrows=None if sized else 24, smoothing=0.1)

    def update(self, record: dict[str, Any]) -> None:
        """Advance to the record's step and show its summary."""
        stage = record.get("stage") if isinstance(record.get("stage"), str) else None
        stage_step, stage_total = _int(record.get("stage_step")), _int(record.get("stage_total_steps"))
        step, total = record.get("step"), record.get("total_steps")
        if stage_step is None:  # a record without stage keys counts against the job's steps
            stage_step, stage_total = _int(step), _int(total)
        info = summary(record)
        if not self._tty:
            text = " ".join(f"{k}={v}" for k, v in info.items())
            seconds = record.get("time/step")
            if isinstance(seconds, (int, float)):
                text += f" ({seconds:.2f}s/step)"
            where = f" [{stage} {stage_step}/{stage_total}]" if stage and stage_total else ""
            log.info("step %s/%s%s %s", step, total if total is not None else "?", where, text.strip())
            return
        if self._bar is None or (stage is not None and stage != self._stage):
            self._stage = stage or self._stage
            # first seen mid-stage (no start_stage): count the steps before this one as done already
            done = stage_step - 1 if stage_step else 0
            self._open(self._stage or self.desc, stage_total, max(done, 0))
        if stage_total is not None and self._bar.total != stage_total:
            self._bar.total = stage_total
        # the postfix first, so the redraw that advancing the count makes shows this step's numbers
        self._bar.set_postfix(info, refresh=False)
        if stage_step is not None and stage_step > self._bar.n:
            self._bar.update(stage_step - self._bar.n)
        else:
            self._bar.refresh()

    def close(self) -> None:
        """Finish the current bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
