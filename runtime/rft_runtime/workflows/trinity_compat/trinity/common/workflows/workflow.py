"""Stand-in for trinity.common.workflows.workflow."""

from rft_runtime.workflows.protocol import MultiTurnWorkflow, Task, Workflow
from rft_runtime.workflows.single_turn import (
           AsyncMathWorkflow,
           AsyncSimpleWorkflow,
           MathWorkflow,
           SimpleWorkflow,
)
from rft_runtime.workflows.single_turn import SingleTurnWorkflow as BaseSimpleWorkflow

__all__ = ["AsyncMathWorkflow", "AsyncSimpleWorkflow", "BaseSimpleWorkflow", "MathWorkflow", "MultiTurnWorkflow",
           "SimpleWorkflow", "Task", "Workflow"]
