"""Experience and EID, with Trinity-RFT 0.6's fields: what a workflow returns for the trainer.

An Experience is one sequence: `tokens` (prompt + response), `prompt_length`, and per response token
`logprobs` and `action_mask` (1 where the model produced the token and it carries loss, 0 for tool or
environment text spliced into a multi-turn conversation). Sequences are torch tensors when torch is
installed, as in Trinity (workflows written for it do tensor arithmetic on them), and plain lists when it
is not; the loop reads both through `as_ints` / `as_floats`. Importing this module imports neither.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

_TORCH: Any = None
_TORCH_CHECKED = False


def _torch() -> Any:
    global _TORCH, _TORCH_CHECKED
    if not _TORCH_CHECKED:
        _TORCH_CHECKED = True
        try:
            # torch takes ~1.5 s to import and is optional: workflow code and the validator import this module
            import torch

            _TORCH = torch
        except ImportError:
            _TORCH = None
    return _TORCH


def make_seq(values: Any, kind: str) -> Any:
    """`values` as the sequence type Experience fields hold: a tensor of int32/float32/bool, or a list."""
    if values is None:
        return None
    torch = _torch()
    if torch is None:
        if kind == "int":
            return [int(v) for v in values]
        if kind == "bool":
            return [bool(v) for v in values]
        return [float(v) for v in values]
    if isinstance(values, torch.Tensor):
        return values
    dtype = {"int": torch.int32, "float": torch.float32, "bool": torch.bool}[kind]
    return torch.tensor(list(values), dtype=dtype)


def as_ints(values: Any) -> list[int]:
    """A tensor, array or list of token ids as a list of ints."""
    if values is None:
        return []
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [int(v) for v in values]


def as_floats(values: Any) -> list[float]:
    """A tensor, array or list of numbers as a list of floats."""
    if values is None:
        return []
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [float(v) for v in values]


@dataclass
class EID:
    """Identifies an experience: batch (explore step), task (index in the batch), run, step, suffix."""

    batch: int | str = ""
    task: int | str = ""
    run: int = 0
    step: int = 0
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    @property
    def uid(self) -> str:
        """Unique id: batch/task/run/step/suffix."""
        return f"{self.batch}/{self.task}/{self.run}/{self.step}/{self.suffix}"

    @property
    def sid(self) -> str:
        """Step id: the same for every run of a task at one step."""
        return f"{self.batch}/{self.task}/{self.step}"

    @property
    def rid(self) -> str:
        """Run id: the same for every step of one run of a task."""
        return f"{self.batch}/{self.task}/{self.run}"

    @property
    def tid(self) -> str:
        """Task id: the group a group-relative advantage (GRPO) is computed over."""
        return f"{self.batch}/{self.task}"

    def __str__(self) -> str:
        return self.uid

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
        return {"batch": self.batch, "task": self.task, "run": self.run, "step": self.step,
                "suffix": self.suffix}


class Experience:
    """One trainable sequence and its reward (Trinity-RFT's constructor: keyword arguments only).

    Without an action_mask the experience is single-turn: every token after prompt_length is the model's.
    """

    def __init__(  # noqa: PLR0913 - Trinity's signature, kept whole so user code can pass any of it
        self, *, eid: Any = None, tokens: Any, logprobs: Any = None, reward: float | None = None,
        token_level_reward: Any = None, advantages: Any = None, returns: Any = None,
        truncate_status: str | None = None, info: dict | None = None, metrics: dict | None = None,
        prompt_length: int = 1, response_text: str | None = None, prompt_text: str | None = None,
        action_mask: Any = None, messages: list[dict] | None = None, tools: list[dict] | None = None,
        chosen: Any = None, rejected: Any = None, chosen_messages: list[dict] | None = None,
        rejected_messages: list[dict] | None = None, multi_modal_inputs: dict | None = None,
        teacher_logprobs: Any = None, routed_experts: Any = None, custom_fields: list | None = None,
    ):
        if action_mask is not None:
            self.experience_type = "multi_turn"
        elif chosen is not None and rejected is not None:
            self.experience_type = "dpo"
        else:
            self.experience_type = "single_turn"
        n_tokens = len(tokens)
        if self.experience_type == "single_turn":
            if prompt_length <= 0:
                raise ValueError("an Experience needs prompt_length > 0")
            if truncate_status == "prompt_truncated":
                action_mask = [False] * len(logprobs if logprobs is not None else [])
            else:
                if n_tokens <= prompt_length:
                    raise ValueError(f"an Experience needs more tokens than its prompt: got {n_tokens} tokens "
                                     f"and prompt_length {prompt_length}")
                action_mask = [True] * (n_tokens - prompt_length)
        elif self.experience_type == "dpo":
            prompt_length = n_tokens
        if eid is None:
            eid = EID()
        elif isinstance(eid, dict):
            eid = EID(**eid)
        self.eid = eid
        self.tokens = make_seq(tokens, "int")
        self.logprobs = make_seq(logprobs, "float")
        self.reward = reward
        self.token_level_reward = make_seq(token_level_reward, "float")
        self.advantages = make_seq(advantages, "float")
        self.returns = make_seq(returns, "float")
        self.truncate_status = truncate_status
        self.info = info or {}
        self.metrics = metrics or {}
        self.prompt_length = int(prompt_length)
        self.response_text = response_text
        self.prompt_text = prompt_text
        self.action_mask = make_seq(action_mask, "bool")
        self.messages = messages
        self.tools = tools
        self.chosen = make_seq(chosen, "int")
        self.rejected = make_seq(rejected, "int")
        self.chosen_messages = chosen_messages
        self.rejected_messages = rejected_messages
        self.multi_modal_inputs = multi_modal_inputs
        self.teacher_logprobs = make_seq(teacher_logprobs, "float")
        self.routed_experts = routed_experts
        self.custom_fields = custom_fields or []

    def __repr__(self) -> str:
        return (f"Experience(eid={self.eid}, tokens={len(self.tokens)}, prompt_length={self.prompt_length}, "
                f"reward={self.reward}, truncate_status={self.truncate_status})")


_FIELDS = ("tokens", "logprobs", "reward", "token_level_reward", "advantages", "returns", "truncate_status", "info",
           "metrics", "prompt_length", "response_text", "prompt_text", "action_mask", "messages", "tools", "chosen",
           "rejected", "chosen_messages", "rejected_messages", "multi_modal_inputs", "teacher_logprobs",
           "routed_experts", "custom_fields")


def to_runtime_experience(exp: Any) -> Any:
    """An Experience of this runtime for what a workflow returned: itself when it already is one; a copy of
    the fields of any other Experience-like object (trinity-rft's, with torch tensors, masks and its EID).
    Teacher logprobs (on-policy distillation) are also put in info["teacher_logprobs"], where the trainer
    reads them. Anything without tokens is returned unchanged, for the runner to report."""
    if not isinstance(exp, Experience):
        if not hasattr(exp, "tokens") or not hasattr(exp, "prompt_length"):
            return exp
        values = {name: getattr(exp, name) for name in _FIELDS if hasattr(exp, name)}
        if values.get("action_mask") is None and values.get("truncate_status") != "prompt_truncated":
            values.pop("action_mask", None)
        eid = getattr(exp, "eid", None)
        if eid is not None and not isinstance(eid, EID):
            values["eid"] = EID(batch=getattr(eid, "batch", ""), task=getattr(eid, "task", ""),
                                run=int(getattr(eid, "run", 0) or 0), step=int(getattr(eid, "step", 0) or 0),
                                suffix=str(getattr(eid, "suffix", "") or uuid.uuid4().hex[:6]))
        values["info"] = dict(values.get("info") or {})
        values["metrics"] = dict(values.get("metrics") or {})
        try:
            exp = Experience(**values)
        except (TypeError, ValueError):
            return exp  # the runner names what is wrong with it
    teacher = exp.teacher_logprobs
    if teacher is not None and "teacher_logprobs" not in exp.info:
        exp.info["teacher_logprobs"] = as_floats(teacher)
    return exp
