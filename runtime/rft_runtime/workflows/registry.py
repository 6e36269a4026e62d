"""Names of the built-in workflows and reward functions, and loading user ones by import path.

Built-ins are kept as import strings so that reading the registry (the config validator does) imports
nothing beyond this module. A name resolves, in order, to: a built-in or plugin-registered entry, an
installed trinity-rft's registered entry, an import path.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
from typing import Any

from rft_runtime.workflows.base import WorkflowError

_ST = "rft_runtime.workflows.single_turn"
_WORKFLOWS: dict[str, Any] = {
    "simple_workflow": f"{_ST}:SimpleWorkflow",
    "async_simple_workflow": f"{_ST}:AsyncSimpleWorkflow",
    "math_workflow": f"{_ST}:MathWorkflow",
    "async_math_workflow": f"{_ST}:AsyncMathWorkflow",
    "math_boxed_workflow": f"{_ST}:MathBoxedWorkflow",
    "async_math_boxed_workflow": f"{_ST}:AsyncMathBoxedWorkflow",
    "math_rm_workflow": f"{_ST}:MathRMWorkflow",
    "async_math_rm_workflow": f"{_ST}:AsyncMathRMWorkflow",
}
_REWARD_FNS: dict[str, Any] = {
    "math_reward": "rft_runtime.workflows.rewards:math_reward",
    "math_boxed_reward": "rft_runtime.workflows.rewards:math_boxed_reward",
    "accuracy_reward": "rft_runtime.workflows.rewards:accuracy_reward",
    "format_reward": "rft_runtime.workflows.rewards:format_reward",
    "countdown_reward": "rft_runtime.workflows.rewards:countdown_reward",
    "exact_match_reward": "rft_runtime.workflows.rewards:exact_match_reward",
}


def known_workflows() -> tuple[str, ...]:
    """Workflow names this runtime runs on Tinker: the built-ins, names registered by plugins, and, when the
    real trinity-rft is installed, Trinity's own registered names (read from its source, not imported)."""
    names = list(_WORKFLOWS)
    names += [n for n in trinity_registry("workflows") if n not in _WORKFLOWS]
    return tuple(names)


def known_reward_fns() -> tuple[str, ...]:
    """Reward function names, as known_workflows() (built-ins, plugins, an installed trinity-rft's)."""
    names = list(_REWARD_FNS)
    names += [n for n in trinity_registry("rewards") if n not in _REWARD_FNS]
    return tuple(names)


def register_workflow(name: str, workflow: Any) -> None:
    """Make a workflow class (or its import path) available under `name`."""
    _WORKFLOWS[name] = workflow


def register_reward_fn(name: str, fn: Any) -> None:
    """Make a reward function (or its import path) available under `name`."""
    _REWARD_FNS[name] = fn


@functools.cache
def real_trinity_root() -> str | None:
    """The folder of an installed trinity-rft package (not this runtime's stand-in), else None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("trinity")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    ours = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trinity_compat")
    for location in spec.submodule_search_locations:
        if os.path.dirname(os.path.abspath(location)) != ours:
            return location
    return None


@functools.cache
def _trinity_mapping(kind: str) -> dict[str, str]:
    root = real_trinity_root()
    if root is None:
        return {}
    path = os.path.join(root, "common", kind, "__init__.py")
    try:
        tree = ast.parse(open(path, encoding="utf-8").read())
    except (OSError, SyntaxError):
        return {}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "default_mapping" and isinstance(node.value, ast.Dict):
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values, strict=True)
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
    return {}


def trinity_registry(kind: str) -> dict[str, str]:
    """Name -> dotted class path of an installed trinity-rft's workflows ("workflows") or reward functions
    ("rewards"); empty without trinity-rft. Read from the registry's source so that listing costs no import."""
    return _trinity_mapping(kind)


def split_import_path(spec: str) -> tuple[str, str] | None:
    """(module, attribute) of `package.module:Name` or Trinity's `package.module.Name` (split at the last
    dot), else None."""
    if ":" in spec:
        module, _, attr = spec.partition(":")
    else:
        module, _, attr = spec.rpartition(".")
    if not module or not attr:
        return None
    if not all(p.isidentifier() for p in module.split(".")) or not all(p.isidentifier() for p in attr.split(".")):
        return None
    return module, attr


def is_import_path(spec: str) -> bool:
    """True for `package.module:Name` or `package.module.Name`."""
    return split_import_path(spec) is not None


def load_object(spec: str, what: str) -> Any:
    """The object named by `package.module:Name` or `package.module.Name`, with an error that says what
    failed and what to do."""
    parts = split_import_path(spec)
    if parts is None:
        raise WorkflowError(f"{what} {spec!r} is neither a built-in name nor an import path "
                            "'package.module:Name' (or 'package.module.Name')")
    module_name, attr = parts
    if module_name == "trinity" or module_name.startswith("trinity."):
        from rft_runtime.workflows import trinity_compat

        trinity_compat.install()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkflowError(
            f"cannot import {what} {spec!r}: {exc}. Install the package that holds it, put its folder "
            "on PYTHONPATH, or pass the folder with --plugin-dir"
        ) from exc
    except Exception as exc:  # the user's module ran and failed at import time
        raise WorkflowError(f"importing module {module_name!r} for {what} {spec!r} failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            raise WorkflowError(f"module {module_name!r} has no {attr!r} for {what} {spec!r}; it defines: "
                                f"{', '.join(public[:20]) or 'nothing public'}")
        obj = getattr(obj, part)
    return obj


def _resolve(table: dict[str, Any], trinity_kind: str, name: Any, what: str) -> Any:
    if not isinstance(name, str):
        return name  # already a class or function
    if not name:
        raise WorkflowError(f"no {what} given")
    entry = table.get(name)
    if entry is None:
        entry = trinity_registry(trinity_kind).get(name)
    if entry is None:
        if not is_import_path(name):
            raise WorkflowError(f"unknown {what} {name!r}; built-in: {', '.join(table)}; or give your own "
                                "as 'package.module:Name' (with --plugin-dir for a folder of your code)")
        entry = name
    return load_object(entry, what) if isinstance(entry, str) else entry


def get_workflow(name: Any) -> type:
    """The workflow class for a registered name or an import path (`package.module:Class` or
    `package.module.Class`)."""
    cls = _resolve(_WORKFLOWS, "workflows", name, "workflow")
    if not isinstance(cls, type):
        raise WorkflowError(f"workflow {name!r} must be a class with run() (or run_async() and is_async = True), "
                            f"got a {type(cls).__name__}")
    wants = "run_async" if getattr(cls, "is_async", False) else "run"
    if not callable(getattr(cls, wants, None)):
        raise WorkflowError(f"workflow {name!r} must be a class with run() (or run_async() and is_async = True); "
                            f"it lacks {wants}()")
    return cls


def get_reward_fn(name: str, args: dict[str, Any] | None = None) -> Any:
    """A ready-to-call reward function: a function (args bound) or an instance of a reward class.

    A class (Trinity-RFT's RewardFn style) is constructed with `args` as keyword arguments; a function gets
    them on every call.
    """
    obj = _resolve(_REWARD_FNS, "rewards", name, "reward function")
    args = dict(args or {})
    if isinstance(obj, type):
        try:
            return obj(**args)
        except TypeError as exc:
            raise WorkflowError(f"reward function class {name!r} does not accept reward_fn_args "
                                f"{sorted(args)}: {exc}") from exc
    if not callable(obj):
        raise WorkflowError(f"reward function {name!r} is a {type(obj).__name__}, not callable")
    if not args:
        return obj

    def bound(**kwargs: Any) -> Any:
        return obj(**kwargs, **args)

    # keep the signature visible so that only declared arguments are passed in
    functools.update_wrapper(bound, obj)
    sig = inspect.signature(obj)
    bound.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[p for n, p in sig.parameters.items() if n not in args])
    return bound
