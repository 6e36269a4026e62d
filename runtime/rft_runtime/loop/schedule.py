"""Learning-rate schedules (Trinity's names): constant or cosine, each with linear warm-up."""

from __future__ import annotations

import math

from rft_runtime.config.models import OptimizerConfig


def warmup_steps(opt: OptimizerConfig, total_steps: int) -> int:
    """Warm-up length: lr_warmup_steps when set (>= 0), else lr_warmup_steps_ratio x total steps."""
    if opt.lr_warmup_steps >= 0:
        return opt.lr_warmup_steps
    return int(opt.lr_warmup_steps_ratio * total_steps)


def lr_at(opt: OptimizerConfig, step: int, total_steps: int) -> float:
    """Learning rate of 1-based train `step` out of `total_steps`."""
    warm = warmup_steps(opt, total_steps)
    if warm > 0 and step <= warm:
        return opt.lr * step / warm
    if opt.lr_scheduler_type == "constant":
        return opt.lr
    span = max(1, total_steps - warm)
    progress = min(1.0, max(0.0, (step - warm) / span))
    floor = opt.lr * opt.min_lr_ratio
    return floor + (opt.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
