"""Workflows: Trinity-RFT's workflow protocol on Tinker, the built-in workflows and reward functions.

    from rft_runtime.workflows import Workflow, Task, Experience, get_workflow, known_workflows
    class MyWorkflow(Workflow):
        def run(self):
            (reply,) = self.model.chat([{"role": "user", "content": self.task.raw_task["q"]}])
            reply.reward = 1.0 if "yes" in reply.response_text else 0.0
            return [reply]

A workflow is constructed with task=, model= (a ModelWrapper on the current sampler) and
auxiliary_models=, and returns Experiences. Single-turn workflows only need `messages(row)` and/or
`score(row, response)` (SingleTurnWorkflow). User code plugs in by import path (`package.module:Name` or
Trinity's `package.module.Name`) wherever a built-in name is accepted, or registers names from a
--plugin-dir. Importing this package is light (no torch, tinker, datasets or trinity): the config
validator reads the registry.
"""

from rft_runtime.workflows.base import Score, WorkflowError
from rft_runtime.workflows.experience import EID, Experience
from rft_runtime.workflows.protocol import (
    FormatConfig,
    GenerationConfig,
    MultiTurnWorkflow,
    RewardFn,
    Task,
    Workflow,
)
from rft_runtime.workflows.registry import (
    get_reward_fn,
    get_workflow,
    is_import_path,
    known_reward_fns,
    known_workflows,
    register_reward_fn,
    register_workflow,
)
from rft_runtime.workflows.single_turn import SingleTurnWorkflow

__all__ = [
    "EID",
    "Experience",
    "FormatConfig",
    "GenerationConfig",
    "MultiTurnWorkflow",
    "RewardFn",
    "Score",
    "SingleTurnWorkflow",
    "Task",
    "Workflow",
    "WorkflowError",
    "get_reward_fn",
    "get_workflow",
    "is_import_path",
    "known_reward_fns",
    "known_workflows",
    "register_reward_fn",
    "register_workflow",
]
