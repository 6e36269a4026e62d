"""Workflows turn a task row into chat messages and score a response; reward functions do the scoring.

    from rft_runtime.workflows import get_workflow, known_workflows
    wf = get_workflow("math_workflow")(taskset.format, taskset.workflow_args, taskset.reward_fn_args)
    wf.messages(row) -> [{"role": "system", ...}, {"role": "user", ...}]
    wf.score(row, response_text) -> Score(reward=1.1, metrics={"accuracy": 1.0, "format_score": 0.1})

User code plugs in by import path, `package.module:Name`, wherever a built-in name is accepted.
Importing this package is light (no torch, no datasets): the config validator reads the registry.
"""

from rft_runtime.workflows.base import Score, Workflow, WorkflowError
from rft_runtime.workflows.registry import (
    get_reward_fn,
    get_workflow,
    known_reward_fns,
    known_workflows,
    register_reward_fn,
    register_workflow,
)

__all__ = [
    "Score",
    "Workflow",
    "WorkflowError",
    "get_reward_fn",
    "get_workflow",
    "known_reward_fns",
    "known_workflows",
    "register_reward_fn",
    "register_workflow",
]
