"""Stand-in for trinity.common.workflows: the protocol and the WORKFLOWS registry."""

from trinity.utils.registry import Registry

from rft_runtime.workflows.protocol import MultiTurnWorkflow, Task, Workflow

WORKFLOWS = Registry("workflows")

__all__ = ["MultiTurnWorkflow", "Task", "WORKFLOWS", "Workflow"]
