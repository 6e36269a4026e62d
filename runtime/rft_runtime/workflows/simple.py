"""simple_workflow: the prompt column as the user's message, scored by the configured reward function."""

from __future__ import annotations

from rft_runtime.workflows.base import Workflow


class SimpleWorkflow(Workflow):
    """No built-in system prompt (format.system_prompt if set); reward from `default_reward_fn_type`,
    accuracy_reward (the answer equals format.response_key, as a number when it is one) when none is set."""

    default_reward_fn = "accuracy_reward"
