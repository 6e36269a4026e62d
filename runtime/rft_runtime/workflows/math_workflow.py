"""math_workflow: the reference's math task (think/answer tags, numeric answer, format bonus)."""

from __future__ import annotations

from rft_runtime.workflows.base import Workflow

# The reference's instruction (DeepSeek-R1 style), used when the taskset sets no system_prompt.
MATH_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>."
)


class MathWorkflow(Workflow):
    """System prompt asking for <think>/<answer>; the question from format.prompt_key; the reward is
    accuracy (the <answer> number against the ground truth in format.response_key, GSM8K `#### N` read)
    plus +0.1 for the think/answer shape or -0.1 without it. Metrics: accuracy, format_score."""

    default_system_prompt = MATH_SYSTEM_PROMPT
    default_reward_fn = "math_reward"
