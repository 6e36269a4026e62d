"""Stand-in for trinity.common.workflows: the protocol and the WORKFLOWS registry."""

from pkgutil import extend_path

# other folders' trinity/... (a plugin dir holding Trinity's own env workflows, unchanged) join this package
__path__ = extend_path(__path__, __name__)

from trinity.utils.registry import Registry

from rft_runtime.workflows.protocol import MultiTurnWorkflow, Task, Workflow

WORKFLOWS = Registry("workflows")

__all__ = ["MultiTurnWorkflow", "Task", "WORKFLOWS", "Workflow"]
