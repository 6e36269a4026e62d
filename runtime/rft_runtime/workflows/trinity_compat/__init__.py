"""`import trinity...` for workflow code: the real trinity-rft when installed, else a stand-in package.

User workflows import `trinity.common.workflows`, `trinity.common.experience`, `trinity.common.rewards`
and so on. `install()` is called before a workflow or plugin is loaded:

- with trinity-rft installed, its own modules answer (and its classes run on this runtime's model wrapper,
  duck typed); Trinity imports vLLM at module level in places a workflow reaches only for a type hint, so
  a small import shim (`vllm_stub`) stands in for the few vLLM names Trinity imports when vLLM is absent;
- without it, the folder next to this file goes at the END of sys.path, where a `trinity` package
  re-exports this runtime's implementation of the same names. Any `trinity.` module a plugin folder holds
  (Trinity's own files, unchanged) joins the stand-in's packages; any other fails with an ImportError that
  says trinity-rft is not installed.

Nothing is added unless a workflow or plugin is being loaded, so `import rft_runtime` never changes what
`import trinity` means. This module imports nothing of the workflow registry: the registry reads it, and
the stand-in's `Registry` reaches the runtime's tables through the hooks set here (`HOOKS`).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.abc
import importlib.util
import os
import sys
from typing import Any

from rft_runtime.workflows.trinity_compat import vllm_stub

ROOT = os.path.dirname(os.path.abspath(__file__))
MARKER = "__rft_compat__"  # attribute of the stand-in `trinity` module
PROVIDED = (
    "trinity.common.workflows (Task, Workflow, MultiTurnWorkflow, SimpleWorkflow, MathWorkflow, WORKFLOWS, "
    "step_wise_workflow), trinity.common.experience (Experience, EID), trinity.common.models.model "
    "(ModelWrapper), trinity.common.rewards (RewardFn, REWARD_FUNCTIONS and the registered reward modules), "
    "trinity.common.config (FormatConfig, GenerationConfig), trinity.utils.log (get_logger), "
    "trinity.utils.registry (Registry)"
)
# Set by rft_runtime.workflows.registry when it is imported (always before a stand-in module runs):
# "register": (kind, name, obj) -> None and "resolve": (kind, name) -> obj, kind "workflows" or
# "reward_functions". The stand-in's Registry calls them, so a name registered by a plugin is a name the
# runtime knows, and a name the plugin did not register resolves as the runtime resolves it.
HOOKS: dict[str, Any] = {}


class _Missing(importlib.abc.MetaPathFinder):
    """Last on sys.meta_path: a trinity.* module nobody provides gets a message saying why."""

    def find_spec(self, name, path=None, target=None):  # noqa: D102 - the finder protocol
        if name.startswith("trinity.") and getattr(sys.modules.get("trinity"), MARKER, False):
            raise ModuleNotFoundError(
                f"No module named {name!r}: trinity-rft is not installed, and this runtime's stand-in provides "
                f"only {PROVIDED}. Install trinity-rft (pip install 'rft-platform[trinity]') to use the rest",
                name=name)
        return None


_installed = False


@functools.cache
def real_trinity_root() -> str | None:
    """The folder of an installed trinity-rft package (not this runtime's stand-in), else None."""
    try:
        spec = importlib.util.find_spec("trinity")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if os.path.dirname(os.path.abspath(location)) != ROOT:
            return location
    return None


@functools.cache
def trinity_registry(kind: str) -> dict[str, str]:
    """Name -> dotted class path of an installed trinity-rft's workflows ("workflows") or reward functions
    ("rewards"); empty without trinity-rft. Read from the registry's source so that listing costs no import."""
    root = real_trinity_root()
    if root is None:
        return {}
    path = os.path.join(root, "common", kind, "__init__.py")
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError):
        return {}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "default_mapping" and isinstance(node.value, ast.Dict):
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values, strict=True)
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
    return {}


def trinity_registered(kind: str) -> dict[str, Any]:
    """Classes registered at run time (plugins' @register_module) in an installed trinity-rft's registry
    ("workflows" or "rewards"), when that registry has been imported; else empty."""
    if real_trinity_root() is None:
        return {}
    module = sys.modules.get(f"trinity.common.{kind}")
    registry = getattr(module, "WORKFLOWS" if kind == "workflows" else "REWARD_FUNCTIONS", None)
    return dict(getattr(registry, "modules", None) or {})


def settle() -> None:
    """After importing an installed trinity-rft's modules: take the vLLM shim's modules out of sys.modules."""
    if real_trinity_root() is not None:
        vllm_stub.forget()


def install() -> bool:
    """Make `import trinity...` work for workflow code; True when the stand-in is in use (idempotent)."""
    global _installed
    if real_trinity_root() is not None:
        vllm_stub.install()
        return False
    if not _installed:
        _installed = True
        sys.meta_path.append(_Missing())
    # checked every time: code that saves and restores sys.path (test runners, embedding apps) may drop it
    if ROOT not in sys.path:
        sys.path.append(ROOT)
        importlib.invalidate_caches()
    return True
