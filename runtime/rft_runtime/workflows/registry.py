"""Names of the built-in workflows and reward functions, and loading user ones by import path.

Built-ins are kept as import strings so that reading the registry (the config validator does) imports
nothing beyond this module.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

from rft_runtime.workflows.base import WorkflowError

_WORKFLOWS: dict[str, Any] = {
    "math_workflow": "rft_runtime.workflows.math_workflow:MathWorkflow",
    "simple_workflow": "rft_runtime.workflows.simple:SimpleWorkflow",
}
_REWARD_FNS: dict[str, Any] = {
    "math_reward": "rft_runtime.workflows.rewards:math_reward",
    "accuracy_reward": "rft_runtime.workflows.rewards:accuracy_reward",
    "format_reward": "rft_runtime.workflows.rewards:format_reward",
    "exact_match_reward": "rft_runtime.workflows.rewards:exact_match_reward",
}


def known_workflows() -> tuple[str, ...]:
    """Registered workflow names."""
    return tuple(_WORKFLOWS)


def known_reward_fns() -> tuple[str, ...]:
    """Registered reward function names."""
    return tuple(_REWARD_FNS)


def register_workflow(name: str, workflow: Any) -> None:
    """Make a workflow class (or its import path) available under `name`."""
    _WORKFLOWS[name] = workflow


def register_reward_fn(name: str, fn: Any) -> None:
    """Make a reward function (or its import path) available under `name`."""
    _REWARD_FNS[name] = fn


def load_object(spec: str, what: str) -> Any:
    """The object named by `package.module:Name`, with an error that says what failed and what to do."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise WorkflowError(f"{what} {spec!r} is neither a built-in name nor an import path "
                            "'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkflowError(
            f"cannot import {what} {spec!r}: {exc}. Install the package that holds it, or put its folder "
            "on PYTHONPATH"
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


def _resolve(table: dict[str, Any], name: str, what: str) -> Any:
    if not name:
        raise WorkflowError(f"no {what} given")
    entry = table.get(name)
    if entry is None:
        if ":" not in name:
            raise WorkflowError(f"unknown {what} {name!r}; built-in: {', '.join(table)}; or give your own "
                                "as 'package.module:Name'")
        entry = name
    return load_object(entry, what) if isinstance(entry, str) else entry


def get_workflow(name: str) -> type:
    """The workflow class for a registered name or an import path `package.module:ClassName`."""
    cls = _resolve(_WORKFLOWS, name, "workflow")
    missing = [m for m in ("messages", "score") if not callable(getattr(cls, m, None))]
    if not callable(cls) or missing:
        raise WorkflowError(f"workflow {name!r} must be a class with messages(row) and score(row, response)"
                            f"{'; it lacks ' + ', '.join(missing) if missing else ''}")
    return cls


def get_reward_fn(name: str, args: dict[str, Any] | None = None) -> Any:
    """A ready-to-call reward function: a function (args bound) or an instance of a reward class.

    A class (Trinity-RFT's RewardFn style) is constructed with `args` as keyword arguments; a function gets
    them on every call.
    """
    obj = _resolve(_REWARD_FNS, name, "reward function")
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
