"""Trinity-RFT 0.6's workflow protocol: Task, Workflow, MultiTurnWorkflow, RewardFn.

A workflow is a program: constructed with `task=`, `model=` and `auxiliary_models=`, its `run()` (or
`run_async()` when `is_async`) talks to `self.model` as often as it likes and returns Experiences.
`can_repeat` workflows produce all of a task's `repeat_times` runs in one call (`set_repeat_times`);
the others are run that many times. `can_reset` workflows are reused for the next task via `reset(task)`.
Nothing here imports torch, tinker or trinity.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

from rft_runtime.workflows.base import WorkflowError, call_reward_fn
from rft_runtime.workflows.experience import Experience, as_floats, as_ints, make_seq


@dataclass
class FormatConfig:
    """A taskset's `format` section, with Trinity's field names (a dataclass, as Trinity's)."""

    prompt_type: str = "plaintext"
    prompt_key: str = "prompt"
    response_key: str = "response"
    system_prompt_key: str | None = None
    system_prompt: str | None = None
    messages_key: str = "message"
    tools_key: str = "tools"
    image_key: str | None = None
    video_key: str | None = None
    reply_prefix: str | None = None
    workflow_key: str = ""
    reward_fn_key: str = ""
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    enable_concatenated_multi_turn: bool = False


@dataclass
class GenerationConfig:
    """A taskset's `rollout_args` (None: the model section's default); `n` is set from repeat_times."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int = -1
    logprobs: int | None = None
    max_tokens: int | None = None
    n: int = 1


@dataclass
class Task(dict):
    """One task of a batch: the dataset row (`raw_task`) and how to run and score it."""

    workflow: Any = None
    repeat_times: int | None = None
    format_args: FormatConfig = field(default_factory=FormatConfig)
    rollout_args: GenerationConfig = field(default_factory=GenerationConfig)
    workflow_args: dict = field(default_factory=dict)
    reward_fn_args: dict = field(default_factory=dict)
    is_eval: bool = False
    reward_fn: Any = None
    raw_task: dict | None = None
    batch_id: int | str = ""
    task_id: int | str = ""
    index: dict = field(default_factory=dict)

    def to_workflow(self, model: Any, auxiliary_models: list[Any] | None = None) -> Workflow:
        """An instance of the task's workflow class on these models."""
        return self.workflow(model=model, task=self, auxiliary_models=auxiliary_models)

    @property
    def task_desc(self) -> str | None:
        """The row's prompt column (format.prompt_key), or None."""
        row = self.raw_task or {}
        return row.get(self.format_args.prompt_key)

    @property
    def truth(self) -> Any:
        """The row's reference answer (format.response_key), or None."""
        row = self.raw_task or {}
        return row.get(self.format_args.response_key)

    def to_dict(self) -> dict:
        """The dataset row."""
        return self.raw_task or {}


class RewardFn:
    """Base of class-style reward functions: constructed with reward_fn_args, called with keyword
    arguments (response, truth, prompt, ...), returning a dict of named parts whose sum is the reward."""

    def __init__(self, **kwargs: Any) -> None:
        pass

    def __call__(self, **kwargs: Any) -> dict[str, float]:
        raise NotImplementedError


def as_reward_class(fn: Any, base: type = RewardFn) -> type:
    """A reward function as Trinity's reward class (a `base` subclass constructed with reward_fn_args and
    called with keyword arguments): what Task.reward_fn holds, whatever the name resolved to."""
    if isinstance(fn, type):
        return fn

    def __init__(self: Any, **args: Any) -> None:
        params = inspect.signature(fn).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(args) - set(params))
            if unknown:
                raise WorkflowError(f"reward function {getattr(fn, '__name__', fn)!r} does not accept "
                                    f"reward_fn_args {unknown}; it takes: {', '.join(params)}")
        self.args = args

    def __call__(self: Any, *positional: Any, **kwargs: Any) -> Any:
        if positional:  # Trinity's math_rm style: (experience, messages, ground_truth=...)
            names = ("response", "messages")
            kwargs = {**dict(zip(names, positional, strict=False)), **kwargs}
            if hasattr(kwargs.get("response"), "response_text"):
                kwargs["response"] = kwargs["response"].response_text
            kwargs.setdefault("truth", kwargs.get("ground_truth"))
        return call_reward_fn(fn, **{**kwargs, **self.args})

    name = getattr(fn, "__name__", "reward")
    return type(name, (base,), {"__init__": __init__, "__call__": __call__, "__doc__": fn.__doc__,
                                "__module__": getattr(fn, "__module__", __name__), "function": staticmethod(fn)})


class _LazyClients(list):
    """OpenAI clients of the auxiliary models, made on first use (the openai package is then needed)."""

    def __init__(self, wrappers: list[Any], asynchronous: bool):
        super().__init__()
        self._wrappers = wrappers
        self._async = asynchronous
        self._made = False

    def _make(self) -> None:
        if not self._made:
            self._made = True
            self.extend(w.get_openai_async_client() if self._async else w.get_openai_client()
                        for w in self._wrappers)

    def __getitem__(self, i: Any) -> Any:
        self._make()
        return super().__getitem__(i)

    def __iter__(self) -> Any:
        self._make()
        return super().__iter__()

    def __len__(self) -> int:
        return len(self._wrappers)

    def __bool__(self) -> bool:
        return bool(self._wrappers)


class Workflow:
    """Base class: set `self.task`, `self.model`, the auxiliary models; subclasses implement run()."""

    can_reset: bool = False
    can_repeat: bool = False
    is_async: bool = False

    def __init__(self, *, task: Task, model: Any, auxiliary_models: list[Any] | None = None):
        self.task = task
        self.model = model
        self.auxiliary_model_wrappers = auxiliary_models
        # Trinity hands workflows OpenAI clients of the auxiliary models; made lazily here so that a
        # workflow that never uses them does not need the openai package
        self.auxiliary_models = (_LazyClients(list(auxiliary_models), type(self).is_async)
                                 if auxiliary_models else None)
        self.run_id_base = 0
        self.logger = logging.getLogger(type(self).__module__)

    @property
    def resettable(self) -> bool:
        """Deprecated alias of can_reset."""
        return type(self).can_reset

    @property
    def repeatable(self) -> bool:
        """Deprecated alias of can_repeat."""
        return type(self).can_repeat

    @property
    def asynchronous(self) -> bool:
        """Deprecated alias of is_async."""
        return type(self).is_async

    def reset(self, task: Task) -> None:
        """Take the next task (only for can_reset workflows)."""
        raise NotImplementedError

    def set_repeat_times(self, repeat_times: int, run_id_base: int) -> None:
        """Produce `repeat_times` runs per run() call, numbered from run_id_base (only for can_repeat)."""
        raise NotImplementedError("set_repeat_times() must be implemented for a repeatable workflow")

    def run(self) -> list[Experience]:
        """Run the task; return its experiences."""
        raise NotImplementedError

    async def run_async(self) -> list[Experience]:
        """Run the task (async workflows); return its experiences."""
        raise NotImplementedError


def _masked(values: Any, mask: Any) -> list[float]:
    vals = as_floats(values)
    bits = as_ints(mask)
    return [v * b for v, b in zip(vals, bits, strict=False)] + vals[len(bits):]


class MultiTurnWorkflow(Workflow):
    """Base of concatenated multi-turn workflows: run() plays the whole conversation, then turns the
    messages into one Experience whose action mask covers only the assistant's turns."""

    def set_repeat_times(self, repeat_times: int, run_id_base: int) -> None:
        """Remember how many runs to produce and where their ids start."""
        self.repeat_times = repeat_times
        self.run_id_base = run_id_base

    def _build_experience_from_converted(self, converted: Experience, reward: float, info: dict | None = None,
                                         truncate_status: str | None = None) -> Experience:
        info = dict(info or {})
        if converted.truncate_status == "response_truncated":
            # Trinity: a conversation cut at max_model_len earns nothing
            reward = 0.0
        metrics = {k: float(v) for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return Experience(
            tokens=converted.tokens, action_mask=converted.action_mask, prompt_length=converted.prompt_length,
            prompt_text=converted.prompt_text, response_text=converted.response_text,
            truncate_status=converted.truncate_status or truncate_status, reward=reward,
            logprobs=make_seq(_masked(converted.logprobs, converted.action_mask), "float"), info=info,
            metrics=metrics, messages=converted.messages,
        )

    def process_messages_to_experience(self, messages: list[dict], reward: float, info: dict | None = None,
                                       truncate_status: str | None = None) -> Experience:
        """The conversation as one Experience with this reward (logprobs recomputed by the model)."""
        converted = self.model.convert_messages_to_experience(messages)
        return self._build_experience_from_converted(converted, reward, info,
                                                     converted.truncate_status or truncate_status)

    async def process_messages_to_experience_async(self, messages: list[dict], reward: float,
                                                   info: dict | None = None,
                                                   truncate_status: str | None = None) -> Experience:
        """process_messages_to_experience, for async workflows."""
        converted = await self.model.convert_messages_to_experience_async(messages)
        return self._build_experience_from_converted(converted, reward, info,
                                                     converted.truncate_status or truncate_status)
