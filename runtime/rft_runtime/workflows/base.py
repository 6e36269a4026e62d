"""What every workflow is: messages for a row, and a Score for a response."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any


class WorkflowError(ValueError):
    """A workflow or reward function that cannot be found, imported or used; the message says which."""


@dataclass
class Score:
    """A rollout's reward, and the named parts behind it (logged as metrics, e.g. accuracy)."""

    reward: float
    metrics: dict[str, float] = field(default_factory=dict)


class Workflow:
    """Base class: a row becomes chat messages (system prompt + the prompt column); score is abstract.

    format_cfg is the taskset's `format` section (prompt_key, response_key, system_prompt); workflow_args
    and reward_fn_args are the taskset's dicts. reward_fn_args may carry "reward_fn", the reward function's
    name or import path (the config's default_reward_fn_type).
    """

    default_system_prompt: str | None = None
    default_reward_fn: str | None = None

    def __init__(self, format_cfg: Any = None, workflow_args: dict[str, Any] | None = None,
                 reward_fn_args: dict[str, Any] | None = None):
        self.format = format_cfg
        self.workflow_args = dict(workflow_args or {})
        args = dict(reward_fn_args or {})
        self.reward_fn_name = args.pop("reward_fn", None) or self.workflow_args.get("reward_fn") \
            or self.default_reward_fn
        self.reward_fn_args = args
        self.prompt_key = getattr(format_cfg, "prompt_key", None) or "prompt"
        self.response_key = getattr(format_cfg, "response_key", None) or "response"
        self.system_prompt = getattr(format_cfg, "system_prompt", None) or self.default_system_prompt
        self._reward_fn: Any = None

    # ------------------------------------------------------------ prompts

    def prompt_text(self, row: dict[str, Any]) -> str:
        """The user's message: the row's prompt column."""
        if row.get(self.prompt_key) is None:
            raise WorkflowError(f"the task has no {self.prompt_key!r} value (format.prompt_key); "
                                f"its columns: {', '.join(sorted(row))}")
        return str(row[self.prompt_key])

    def system_text(self, row: dict[str, Any]) -> str | None:
        """The system prompt: the row's format.system_prompt_key column when set, else format.system_prompt,
        else the workflow's default."""
        key = getattr(self.format, "system_prompt_key", None)
        if key and row.get(key):
            return str(row[key])
        return self.system_prompt

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """Chat messages for the row: the system prompt (if any), then the prompt as the user's turn.

        With format.prompt_type "messages" the row's messages_key column already is the conversation;
        the system prompt is put first unless it starts with one.
        """
        system = self.system_text(row)
        if getattr(self.format, "prompt_type", "plaintext") == "messages":
            key = getattr(self.format, "messages_key", None) or "message"
            convo = row.get(key)
            if not isinstance(convo, list) or not all(isinstance(m, dict) and "role" in m for m in convo):
                raise WorkflowError(f"format.prompt_type is 'messages' but the task's {key!r} value is not a "
                                    "list of {role, content} messages (format.messages_key)")
            messages = [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in convo]
            if system and (not messages or messages[0]["role"] != "system"):
                messages.insert(0, {"role": "system", "content": system})
            return messages
        messages = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": self.prompt_text(row)})
        return messages

    def truth(self, row: dict[str, Any]) -> Any:
        """The row's reference answer (response column), or None."""
        return row.get(self.response_key)

    # ------------------------------------------------------------ scoring

    @property
    def reward_fn(self) -> Any:
        """The reward function this workflow scores with (resolved once)."""
        if self._reward_fn is None:
            from rft_runtime.workflows.registry import get_reward_fn

            if not self.reward_fn_name:
                raise WorkflowError(f"{type(self).__name__} needs a reward function: set "
                                    "buffer.explorer_input.default_reward_fn_type")
            self._reward_fn = get_reward_fn(self.reward_fn_name, self.reward_fn_args)
        return self._reward_fn

    def score(self, row: dict[str, Any], response: str) -> Score:
        """The response's Score from the reward function."""
        result = call_reward_fn(self.reward_fn, response=response, truth=self.truth(row),
                                prompt=row.get(self.prompt_key), row=row)
        return as_score(result)


def call_reward_fn(fn: Any, **available: Any) -> Any:
    """Call a reward function with the keyword arguments it declares (all of them if it takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(**available)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**available)
    return fn(**{k: v for k, v in available.items() if k in params})


def as_score(result: Any) -> Score:
    """A reward function's result as a Score: a number, a Score, or a dict whose values sum to the reward.

    The dict form is Trinity-RFT's: {"accuracy": 1.0, "format_score": 0.1} is a reward of 1.1.
    """
    if isinstance(result, Score):
        return result
    if isinstance(result, dict):
        metrics = {str(k): float(v) for k, v in result.items()}
        return Score(sum(metrics.values()), metrics)
    if isinstance(result, str) or not hasattr(result, "__float__"):
        raise WorkflowError(f"a reward function returned {result!r}; return a number, a Score, or a dict "
                            "of numbers")
    return Score(float(result))
