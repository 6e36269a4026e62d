"""The console's view of a run: a tqdm bar on a terminal, one log line per step elsewhere (pod logs)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger("rft_runtime.progress")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary(record: dict[str, Any]) -> dict[str, str]:
    """The few numbers worth a glance: reward (or accuracy), loss, seconds per step."""
    out: dict[str, str] = {}
    for key, short in (("reward_mean", "reward"), ("accuracy", "acc"), ("policy_loss", "loss"),
                       ("time_step_s", "s/step")):
        if record.get(key) is not None:
            out[short] = _fmt(record[key])
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


class Progress:
    """A progress bar of train steps (step/total, reward, loss, time per step)."""

    def __init__(self, enabled: bool = True, desc: str = "train"):
        self.enabled = enabled
        self.desc = desc
        self._bar: Any = None
        # A bar full of carriage returns is unreadable in `kubectl logs`: only draw one on a terminal.
        self._tty = enabled and sys.stderr.isatty()

    def update(self, record: dict[str, Any]) -> None:
        """Advance to the record's step and show its summary."""
        step = record.get("step")
        total = record.get("total_steps")
        info = summary(record)
        if not self._tty:
            if self.enabled:
                text = " ".join(f"{k}={v}" for k, v in info.items())
                log.info("step %s/%s %s", step, total if total is not None else "?", text)
            return
        if self._bar is None:
            from tqdm import tqdm

            start = int(step) - 1 if isinstance(step, int) and step > 0 else 0
            # a pty that reports a 0x0 size (some CI runners, `script`) would make tqdm draw nothing
            sized = _terminal_sized()
            self._bar = tqdm(total=total, initial=start, desc=self.desc, unit="step", dynamic_ncols=sized,
                             ncols=None if sized else 100, nrows=None if sized else 24)
        if total is not None and self._bar.total != total:
            self._bar.total = total
        if isinstance(step, int) and step > self._bar.n:
            self._bar.update(step - self._bar.n)
        self._bar.set_postfix(info, refresh=True)

    def close(self) -> None:
        """Finish the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
