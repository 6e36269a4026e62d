"""Continued pre-training: cross-entropy on every token of raw text after the first (Trinity's prompt_length 1)."""

from __future__ import annotations

from typing import Any

from rft_runtime.algorithms.base import Algorithm, register
from rft_runtime.algorithms.types.sft import no_kl_term
from rft_runtime.config.errors import ConfigIssue
from rft_runtime.config.paths import JOB


@register
class CPT(Algorithm):
    name = "cpt"
    data = "cpt"
    policy_loss_fn = "sft"
    kl_loss_fn = "none"
    entropy_loss_fn = "none"

    @classmethod
    def check(cls, cfg: Any, plan: Any) -> list[ConfigIssue]:
        """Raw text only (plaintext), and no KL term."""
        issues = no_kl_term("cpt", plan)
        buffer = getattr(cfg, "buffer", None)
        if buffer is not None and buffer.trainer_input.experience_buffer.format.prompt_type != "plaintext":
            issues.append(ConfigIssue(
                str(JOB.buffer.trainer_input.experience_buffer.format.prompt_type),
                "cpt reads raw text from format.prompt_key (Trinity's CPT formatter supports only plaintext); set "
                "prompt_type: plaintext"))
        return issues
