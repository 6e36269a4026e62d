"""Single-turn workflows: one prompt from the row, `repeat_times` replies, each scored by a reward function.

The built-ins simple_workflow, math_workflow, math_boxed_workflow, math_eval_workflow and their async_
twins are these (the judged ones, scored by another model, are in `judged`). A subclass only needs
`messages(row)` and/or `score(row, response)`; run() does the sampling through `self.model`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rft_runtime.workflows.base import Score, WorkflowError, as_score, call_reward_fn
from rft_runtime.workflows.experience import Experience
from rft_runtime.workflows.math_grading import verify_math_answer
from rft_runtime.workflows.protocol import FormatConfig, Task, Workflow
from rft_runtime.workflows.registry import get_reward_fn

# The reference's instruction (DeepSeek-R1 style), used when the taskset sets no system_prompt.
MATH_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>."
)
BOXED_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
BOXED_THINK_PROMPT = (
    "You are a helpful assistant that solves MATH problems. You should first think about the reasoning "
    "process in mind and then provide the user with the answer. Present your reasoning in the format "
    "<think>\n ...your reasoning process here... </think>\n first, and always put your final answer in "
    "\\boxed{} as a closed-form result."
)


def _format_from(cfg: Any) -> FormatConfig:
    if isinstance(cfg, FormatConfig):
        return cfg
    out = FormatConfig()
    for name in FormatConfig.__dataclass_fields__:
        value = getattr(cfg, name, None) if cfg is not None else None
        if value is not None:
            setattr(out, name, value)
    return out


class SingleTurnWorkflow(Workflow):
    """A row becomes chat messages (system prompt + the prompt column); each reply is scored.

    Constructed the Trinity way (`task=`, `model=`), or, to use `messages` and `score` without a model,
    with (format, workflow_args, reward_fn_args) where reward_fn_args may name the reward function under
    "reward_fn".
    """

    can_reset = True
    can_repeat = True
    default_system_prompt: str | None = None
    default_reward_fn: str | None = None

    def __init__(self, format_cfg: Any = None, workflow_args: dict | None = None,
                 reward_fn_args: dict | None = None, *, task: Task | None = None, model: Any = None,
                 auxiliary_models: list[Any] | None = None):
        if task is None:
            args = dict(reward_fn_args or {})
            reward_fn = args.pop("reward_fn", None) or (workflow_args or {}).get("reward_fn")
            task = Task(format_args=_format_from(format_cfg), workflow_args=dict(workflow_args or {}),
                        reward_fn_args=args, reward_fn=reward_fn, raw_task={})
        super().__init__(task=task, model=model, auxiliary_models=auxiliary_models)
        self.repeat_times = 1
        # the base attributes first: a subclass written for Trinity overrides reset() and sets only its own
        SingleTurnWorkflow.reset(self, task)
        if type(self).reset is not SingleTurnWorkflow.reset:
            self.reset(task)

    def reset(self, task: Task) -> None:
        """Take a new task (its row, format, arguments and reward function)."""
        self.task = task
        self.format = self.format_args = task.format_args
        self.workflow_args = dict(task.workflow_args or {})
        self.reward_fn_args = dict(task.reward_fn_args or {})
        self.prompt_key = self.format.prompt_key or "prompt"
        self.response_key = self.format.response_key or "response"
        self.system_prompt = self.format.system_prompt or self.default_system_prompt
        self.reply_prefix = self.format.reply_prefix
        self.raw_task = task.raw_task or {}
        # plain attributes, as Trinity's (its workflows assign them in their own reset)
        self.task_desc = self.raw_task.get(self.prompt_key)
        self.truth = self.raw_task.get(self.response_key)
        self._reward_fn: Any = None

    def set_repeat_times(self, repeat_times: int, run_id_base: int) -> None:
        """Sample `repeat_times` replies per run() (one request with n samples)."""
        self.repeat_times = repeat_times
        self.task.rollout_args.n = repeat_times
        self.run_id_base = run_id_base

    @property
    def rollout_args(self) -> dict[str, Any]:
        """The taskset's rollout_args as model.chat() keyword arguments."""
        return asdict(self.task.rollout_args)

    # ------------------------------------------------------------ prompts

    def prompt_text(self, row: dict[str, Any]) -> str:
        """The user's message: the row's prompt column."""
        if row.get(self.prompt_key) is None:
            raise WorkflowError(f"the task has no {self.prompt_key!r} value (format.prompt_key); "
                                f"its columns: {', '.join(sorted(row))}")
        return str(row[self.prompt_key])

    def system_text(self, row: dict[str, Any]) -> str | None:
        """The row's format.system_prompt_key column when set, else format.system_prompt, else the default."""
        key = self.format.system_prompt_key
        if key and row.get(key):
            return str(row[key])
        return self.system_prompt

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """Chat messages for the row: the system prompt (if any), then the prompt as the user's turn.

        With format.prompt_type "messages" the row's messages_key column already is the conversation;
        the system prompt is put first unless it starts with one.
        """
        system = self.system_text(row)
        if self.format.prompt_type == "messages":
            key = self.format.messages_key or "message"
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

    def format_messages(self) -> list[dict[str, str]]:
        """This task's messages, with format.reply_prefix as the start of the assistant's reply."""
        messages = self.messages(self.raw_task)
        if self.reply_prefix:
            messages.append({"role": "assistant", "content": self.reply_prefix})
        return messages

    # ------------------------------------------------------------ scoring

    @property
    def reward_fn(self) -> Any:
        """The reward function this workflow scores with (resolved once, reward_fn_args bound)."""
        if self._reward_fn is None:
            spec = self.task.reward_fn or self.default_reward_fn
            if not spec:
                raise WorkflowError(f"{type(self).__name__} needs a reward function: set "
                                    "buffer.explorer_input.default_reward_fn_type")
            self._reward_fn = get_reward_fn(spec, self.reward_fn_args)
        return self._reward_fn

    @reward_fn.setter
    def reward_fn(self, value: Any) -> None:
        # Trinity's workflows set their reward function instance themselves
        self._reward_fn = value

    def score(self, row: dict[str, Any], response: str, **extra: Any) -> Score:
        """The response's Score from the reward function (`extra`: Trinity's response_token and info)."""
        result = call_reward_fn(self.reward_fn, response=response, truth=row.get(self.response_key),
                                prompt=row.get(self.prompt_key), row=row, **extra)
        return as_score(result)

    def _scored(self, experiences: list[Experience]) -> list[Experience]:
        for i, exp in enumerate(experiences):
            exp.eid.run = i + self.run_id_base
            if exp.truncate_status == "prompt_truncated":
                exp.reward = 0.0
                continue
            try:
                score = self.score(self.raw_task, exp.response_text or "",
                                   response_token=exp.tokens[exp.prompt_length:], info=exp.info)
            except Exception as exc:  # the user's reward bug fails this reply, not the batch
                exp.reward = 0.0
                exp.info["reward_error"] = f"{type(exc).__name__}: {exc}"
                continue
            exp.reward = float(score.reward)
            exp.metrics.update({k: float(v) for k, v in score.metrics.items()})
        return experiences

    def run(self) -> list[Experience]:
        """Sample repeat_times replies to the task's messages and score each."""
        return self._scored(self.model.chat(self.format_messages(), **self.rollout_args))


class AsyncSingleTurnWorkflow(SingleTurnWorkflow):
    """SingleTurnWorkflow, sampled with chat_async."""

    is_async = True

    async def run_async(self) -> list[Experience]:
        """Sample repeat_times replies to the task's messages and score each."""
        return self._scored(await self.model.chat_async(self.format_messages(), **self.rollout_args))


class SimpleWorkflow(SingleTurnWorkflow):
    """No built-in system prompt (format.system_prompt if set); reward from `default_reward_fn_type`,
    accuracy_reward (the answer equals format.response_key, as a number when it is one) when none is set."""

    default_reward_fn = "accuracy_reward"


class AsyncSimpleWorkflow(AsyncSingleTurnWorkflow, SimpleWorkflow):
    """simple_workflow, sampled with chat_async."""


class MathWorkflow(SingleTurnWorkflow):
    """System prompt asking for <think>/<answer>; the question from format.prompt_key; the reward is
    accuracy (the <answer> number against the ground truth in format.response_key, GSM8K `#### N` read)
    plus +0.1 for the think/answer shape or -0.1 without it. Metrics: accuracy, format_score."""

    default_system_prompt = MATH_SYSTEM_PROMPT
    default_reward_fn = "math_reward"


class AsyncMathWorkflow(AsyncSingleTurnWorkflow, MathWorkflow):
    """math_workflow, sampled with chat_async."""


class MathBoxedWorkflow(SingleTurnWorkflow):
    """Trinity's math_boxed_workflow: the answer in \\boxed{}; workflow_args with_think (ask for and
    check a <think> block, -format_score_coef without it), format_score_coef (0.1), use_base (prompt a
    base model with plain `User:/Assistant:` text instead of the chat template)."""

    default_reward_fn = "math_boxed_reward"

    def reset(self, task: Task) -> None:
        """Read with_think / format_score_coef / use_base and pick the matching system prompt."""
        super().reset(task)
        self.use_base = bool(self.workflow_args.get("use_base", False))
        self.with_think = bool(self.workflow_args.get("with_think", False))
        self.format_score_coef = float(self.workflow_args.get("format_score_coef", 0.1))
        if self.format.system_prompt is None:
            self.system_prompt = BOXED_THINK_PROMPT if self.with_think else BOXED_PROMPT

    def format_prompt(self) -> str:
        """The plain-text prompt of use_base mode."""
        head = f"System:{self.system_prompt}\n" if self.system_prompt else ""
        return f"{head}User:\n{self.prompt_text(self.raw_task)}\nAssistant:\n"

    def score(self, row: dict[str, Any], response: str, **extra: Any) -> Score:
        """math_boxed_reward with this workflow's with_think and format_score_coef."""
        result = call_reward_fn(self.reward_fn, response=response, truth=row.get(self.response_key),
                                prompt=row.get(self.prompt_key), row=row, with_think=self.with_think,
                                format_score_coef=self.format_score_coef, **extra)
        return as_score(result)

    def run(self) -> list[Experience]:
        """Chat (or, with use_base, plain-text generate) and score."""
        if self.use_base:
            return self._scored(self.model.generate([self.format_prompt()], **self.rollout_args))
        return super().run()


class AsyncMathBoxedWorkflow(AsyncSingleTurnWorkflow, MathBoxedWorkflow):
    """math_boxed_workflow, sampled with chat_async / generate_async."""

    async def run_async(self) -> list[Experience]:
        """Chat (or, with use_base, plain-text generate) and score."""
        if self.use_base:
            return self._scored(await self.model.generate_async([self.format_prompt()], **self.rollout_args))
        return await super().run_async()


EVAL_SYSTEM_PROMPT = "You are a helpful assistant."


class MathEvalWorkflow(SingleTurnWorkflow):
    """Trinity's math_eval_workflow (Qwen2.5-Math's evaluation): the row's `question` column plus "Please
    reason step by step, and put your final answer within \\boxed{}." under "You are a helpful assistant.",
    sampled at temperature 0.6, top_p 0.8; metric accuracy (the boxed answer against format.response_key,
    compared as text, number or expression). The reward is left at 0: it is an evaluation workflow."""

    can_reset = False
    can_repeat = False

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """Qwen2.5-Math's prompt for the row's `question`."""
        if "question" not in row:
            raise WorkflowError("math_eval_workflow reads the task's 'question' column; its columns: "
                                f"{', '.join(sorted(row))}")
        return [{"role": "system", "content": EVAL_SYSTEM_PROMPT},
                {"role": "user", "content": f"{row['question']}\n{BOXED_PROMPT}"}]

    def format_messages(self) -> list[dict[str, str]]:
        """This task's messages (no reply prefix: the evaluation prompt is fixed)."""
        return self.messages(self.raw_task)

    @property
    def rollout_args(self) -> dict[str, Any]:
        """Trinity's fixed evaluation sampling: temperature 0.6, top_p 0.8, one reply per run."""
        return {"temperature": 0.6, "top_p": 0.8, "n": 1}

    def _graded(self, experiences: list[Experience]) -> list[Experience]:
        for exp in experiences:
            exp.reward = 0.0 if exp.reward is None else exp.reward
            if exp.response_text is None or self.truth is None:
                continue
            accuracy, _ = verify_math_answer(exp.response_text, self.truth)
            exp.metrics["accuracy"] = accuracy
        return experiences

    def run(self) -> list[Experience]:
        """One reply, graded."""
        return self._graded(self.model.chat(self.format_messages(), **self.rollout_args))


class AsyncMathEvalWorkflow(MathEvalWorkflow):
    """math_eval_workflow, sampled with chat_async."""

    is_async = True

    async def run_async(self) -> list[Experience]:
        """One reply, graded."""
        return self._graded(await self.model.chat_async(self.format_messages(), **self.rollout_args))
