"""On-policy distillation: the student (the policy) samples, the teacher (explorer.auxiliary_models[0])
scores the same tokens, and the trainer's advantage is teacher logprob - student logprob per token
(algorithm on_policy_distill / jsd). Trinity-RFT 0.6's on_policy_distill_workflow and its math form.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rft_runtime.workflows.base import WorkflowError
from rft_runtime.workflows.experience import Experience, as_floats, as_ints, make_seq
from rft_runtime.workflows.math_grading import verify_math_answer
from rft_runtime.workflows.protocol import Task
from rft_runtime.workflows.single_turn import BOXED_PROMPT, EVAL_SYSTEM_PROMPT, SingleTurnWorkflow


class OnPolicyDistillWorkflow(SingleTurnWorkflow):
    """The student answers the task's prompt (system prompt, prompt column, reply prefix from the taskset's
    format); each reply's teacher logprobs go to experience.teacher_logprobs (what the distillation
    advantage reads). The reward is 0 (compute_reward can say otherwise); metric kl_divergence, the sum of
    student - teacher logprobs over the reply. workflow_args temperature is Trinity's (the teacher scores
    at the sampler's temperature on Tinker)."""

    is_async = True

    def __init__(self, *, task: Task, model: Any, auxiliary_models: list[Any] | None = None):
        super().__init__(task=task, model=model, auxiliary_models=auxiliary_models)
        self.temperature = task.workflow_args.get("temperature", 1.0)

    @property
    def teacher_model(self) -> Any:
        """explorer.auxiliary_models[0]: the teacher."""
        if not self.auxiliary_model_wrappers:
            raise WorkflowError("on-policy distillation needs a teacher: name it in explorer.auxiliary_models (the "
                                "first entry's model_path is the teacher's Tinker base model)")
        return self.auxiliary_model_wrappers[0]

    def compute_reward(self, response: Experience) -> float:
        """The reward of a reply: 0 here (the advantage comes from the teacher)."""
        return 0.0

    async def _distilled(self, i: int, response: Experience) -> None:
        tokens = as_ints(response.tokens)
        teacher = as_floats(await self.teacher_model.logprobs_async(tokens, temperature=self.temperature))
        mine = as_floats(response.logprobs)
        theirs = teacher[response.prompt_length - 1:]
        if len(theirs) != len(mine):
            raise WorkflowError(f"the teacher scored {len(theirs)} reply tokens for {len(mine)} sampled: the teacher "
                                "and the student must share a tokenizer")
        response.teacher_logprobs = make_seq(theirs, "float")
        response.reward = self.compute_reward(response)
        response.eid.run = i + self.run_id_base
        response.metrics["kl_divergence"] = sum(m - t for m, t in zip(mine, theirs, strict=True))

    async def run_async(self) -> list[Experience]:
        """Sample the replies, then have the teacher score each."""
        responses = await self.model.chat_async(self.format_messages(), **self.rollout_args)
        await asyncio.gather(*[self._distilled(i, r) for i, r in enumerate(responses)
                               if r.truncate_status != "prompt_truncated"])
        return responses


class OnPolicyDistillMathWorkflow(OnPolicyDistillWorkflow):
    """on_policy_distill_math_workflow: Qwen2.5-Math's prompt ("You are a helpful assistant.", the question
    and "Please reason step by step, and put your final answer within \\\\boxed{}.") and the answer's
    accuracy as reward and metric."""

    def format_messages(self) -> list[dict[str, str]]:
        """Qwen2.5-Math's prompt for the task's prompt column."""
        return [{"role": "system", "content": EVAL_SYSTEM_PROMPT},
                {"role": "user", "content": f"{self.task_desc}\n{BOXED_PROMPT}"}]

    def compute_reward(self, response: Experience) -> float:
        """1.0 when the boxed answer matches the truth, else 0.0 (also recorded as metric accuracy)."""
        if not response.response_text or not self.truth:
            return 0.0
        accuracy, _ = verify_math_answer(response.response_text, self.truth)
        response.metrics["accuracy"] = accuracy
        return accuracy
