"""A stand-in `trinity` package, so that workflow code written against Trinity-RFT runs without it.

User workflows import `trinity.common.workflows`, `trinity.common.experience`, `trinity.common.rewards`
and so on. When the real trinity-rft is installed those imports get it (and its classes work here, duck
typed); when it is not, `install()` puts the folder next to this file at the END of sys.path, where a
`trinity` package re-exports this runtime's implementation of the same names. Nothing is added unless a
workflow or plugin is being loaded, so `import rft_runtime` never changes what `import trinity` means.
Anything else under `trinity.` fails with an ImportError that says trinity-rft is not installed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
MARKER = "__rft_compat__"  # attribute of the stand-in `trinity` module
PROVIDED = (
    "trinity.common.workflows (Task, Workflow, MultiTurnWorkflow, SimpleWorkflow, MathWorkflow, WORKFLOWS), "
    "trinity.common.experience (Experience, EID), trinity.common.models.model (ModelWrapper), "
    "trinity.common.rewards (RewardFn, REWARD_FUNCTIONS), trinity.common.config (FormatConfig, "
    "GenerationConfig), trinity.utils.log (get_logger), trinity.utils.registry (Registry)"
)


class _Missing(importlib.abc.MetaPathFinder):
    """Last on sys.meta_path: a trinity.* module nobody provides gets a message saying why."""

    def find_spec(self, name, path=None, target=None):  # noqa: D102 - the finder protocol
        if name.startswith("trinity.") and getattr(sys.modules.get("trinity"), MARKER, False):
            raise ModuleNotFoundError(
                f"No module named {name!r}: trinity-rft is not installed, and this runtime's stand-in provides "
                f"only {PROVIDED}. Install trinity-rft (pip install trinity-rft==0.6.0) to use the rest",
                name=name)
        return None


_installed = False


def install() -> bool:
    """Make `import trinity...` work for workflow code; True when the stand-in is in use (idempotent)."""
    global _installed
    from rft_runtime.workflows.registry import real_trinity_root

    if real_trinity_root() is not None:
        return False
    if not _installed:
        _installed = True
        sys.meta_path.append(_Missing())
    # checked every time: code that saves and restores sys.path (test runners, embedding apps) may drop it
    if ROOT not in sys.path:
        sys.path.append(ROOT)
        importlib.invalidate_caches()
    return True
