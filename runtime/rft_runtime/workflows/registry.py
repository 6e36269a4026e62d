"""Names of the workflows and reward functions, and loading user ones by import path.

Every name Trinity-RFT 0.6 registers is known here (37 workflows, 6 reward functions). Built-ins are kept
as import strings so that reading the registry (the config validator does) imports nothing beyond this
module. A name resolves, in order, to:

1. this runtime's implementation, or a name a plugin registered;
2. a name registered in an installed trinity-rft (its registry, or a plugin's @register_module);
3. for a workflow bound to an external environment, Trinity's own class (trinity-rft must be installed);
4. an import path, `package.module:Name` or Trinity's `package.module.Name`.

Trinity's own class of any name stays reachable by its import path (e.g.
`trinity.common.workflows.workflow.MathWorkflow`) when trinity-rft is installed.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from difflib import get_close_matches
from typing import Any

from rft_runtime.import_paths import is_import_path, split_import_path
from rft_runtime.workflows import requirements, trinity_compat
from rft_runtime.workflows.base import WorkflowError
from rft_runtime.workflows.protocol import as_reward_class

_ST = "rft_runtime.workflows.single_turn"
_JD = "rft_runtime.workflows.judged"
_WORKFLOWS: dict[str, Any] = {
    "simple_workflow": f"{_ST}:SimpleWorkflow",
    "async_simple_workflow": f"{_ST}:AsyncSimpleWorkflow",
    "math_workflow": f"{_ST}:MathWorkflow",
    "async_math_workflow": f"{_ST}:AsyncMathWorkflow",
    "math_boxed_workflow": f"{_ST}:MathBoxedWorkflow",
    "async_math_boxed_workflow": f"{_ST}:AsyncMathBoxedWorkflow",
    "math_eval_workflow": f"{_ST}:MathEvalWorkflow",
    "async_math_eval_workflow": f"{_ST}:AsyncMathEvalWorkflow",
    "math_rm_workflow": f"{_JD}:MathRMWorkflow",
    "async_math_rm_workflow": f"{_JD}:AsyncMathRMWorkflow",
    "math_ruler_workflow": f"{_JD}:MathRULERWorkflow",
    "async_math_ruler_workflow": f"{_JD}:AsyncMathRULERWorkflow",
    "math_trainable_ruler_workflow": f"{_JD}:MathTrainableRULERWorkflow",
    "rubric_judge_workflow": f"{_JD}:RubricJudgeWorkflow",
    "rubric_judge_openai_workflow": f"{_JD}:RubricJudgeWorkflowWithAPI",
    "on_policy_distill_workflow": "rft_runtime.workflows.distill:OnPolicyDistillWorkflow",
    "on_policy_distill_math_workflow": "rft_runtime.workflows.distill:OnPolicyDistillMathWorkflow",
    "tool_call_workflow": "rft_runtime.workflows.tool_call:ToolCallWorkflow",
    "simple_mm_workflow": "rft_runtime.workflows.multimodal:SimpleMMWorkflow",
    "async_simple_mm_workflow": "rft_runtime.workflows.multimodal:AsyncSimpleMMWorkflow",
    "frozen_lake_workflow": "rft_runtime.workflows.games.frozen_lake:FrozenLakeWorkflow",
    "sudoku_workflow": "rft_runtime.workflows.games.sudoku:SudokuWorkflow",
}
_RW = "rft_runtime.workflows.rewards"
_REWARD_FNS: dict[str, Any] = {
    "math_reward": f"{_RW}:math_reward",
    "math_boxed_reward": f"{_RW}:math_boxed_reward",
    "accuracy_reward": f"{_RW}:accuracy_reward",
    "format_reward": f"{_RW}:format_reward",
    "countdown_reward": f"{_RW}:countdown_reward",
    "math_dapo_reward": f"{_RW}:math_dapo_reward",
    "exact_match_reward": f"{_RW}:exact_match_reward",
}
# Trinity-RFT 0.6's registry (name -> its class): facts. The names this runtime has no implementation of are
# bound to an external environment (or agent framework): they run as Trinity's own class, so they need
# trinity-rft and the environment's package (rft_runtime.workflows.requirements).
_TW = "trinity.common.workflows"
TRINITY_CLASSES: dict[str, str] = {
    "simple_workflow": f"{_TW}.workflow.SimpleWorkflow",
    "async_simple_workflow": f"{_TW}.workflow.AsyncSimpleWorkflow",
    "math_workflow": f"{_TW}.workflow.MathWorkflow",
    "async_math_workflow": f"{_TW}.workflow.AsyncMathWorkflow",
    "math_boxed_workflow": f"{_TW}.customized_math_workflows.MathBoxedWorkflow",
    "async_math_boxed_workflow": f"{_TW}.customized_math_workflows.AsyncMathBoxedWorkflow",
    "math_eval_workflow": f"{_TW}.eval_workflow.MathEvalWorkflow",
    "async_math_eval_workflow": f"{_TW}.eval_workflow.AsyncMathEvalWorkflow",
    "math_rm_workflow": f"{_TW}.math_rm_workflow.MathRMWorkflow",
    "async_math_rm_workflow": f"{_TW}.math_rm_workflow.AsyncMathRMWorkflow",
    "tool_call_workflow": f"{_TW}.customized_toolcall_workflows.ToolCallWorkflow",
    "agentscope_workflow_adapter": f"{_TW}.agentscope_workflow.AgentScopeWorkflowAdapter",
    "agentscope_workflow_adapter_v1": f"{_TW}.agentscope_workflow.AgentScopeWorkflowAdapterV1",
    "agentscope_react_workflow": f"{_TW}.agentscope.react.react_workflow.AgentScopeReActWorkflow",
    "agentscope_react_math_workflow": f"{_TW}.envs.agentscope.agentscopev1_react_workflow.AgentScopeReactMathWorkflow",
    "as_react_workflow": f"{_TW}.agentscope.react.react_workflow.AgentScopeReActWorkflow",
    "agentscopev0_react_math_workflow":
        f"{_TW}.envs.agentscope.agentscopev0_react_workflow.AgentScopeV0ReactMathWorkflow",
    "agentscope_v1_react_search_workflow":
        f"{_TW}.envs.agentscope.agentscopev1_search_workflow.AgentScopeV1ReactSearchWorkflow",
    "email_search_workflow": f"{_TW}.envs.email_searcher.workflow.EmailSearchWorkflow",
    "alfworld_workflow": f"{_TW}.envs.alfworld.alfworld_workflow.AlfworldWorkflow",
    "RAFT_alfworld_workflow": f"{_TW}.envs.alfworld.RAFT_alfworld_workflow.RAFTAlfworldWorkflow",
    "RAFT_reflect_alfworld_workflow": f"{_TW}.envs.alfworld.RAFT_reflect_alfworld_workflow.RAFTReflectAlfworldWorkflow",
    "frozen_lake_workflow": f"{_TW}.envs.frozen_lake.workflow.FrozenLakeWorkflow",
    "sciworld_workflow": f"{_TW}.envs.sciworld.sciworld_workflow.SciWorldWorkflow",
    "webshop_workflow": f"{_TW}.envs.webshop.webshop_workflow.WebShopWorkflow",
    "intercode_sql_workflow": f"{_TW}.envs.intercode_sql.intercode_sql_workflow.InterCodeSQLWorkflow",
    "step_wise_alfworld_workflow": f"{_TW}.envs.alfworld.alfworld_workflow.StepWiseAlfworldWorkflow",
    "async_math_ruler_workflow": f"{_TW}.math_ruler_workflow.AsyncMathRULERWorkflow",
    "math_ruler_workflow": f"{_TW}.math_ruler_workflow.MathRULERWorkflow",
    "math_trainable_ruler_workflow": f"{_TW}.math_trainable_ruler_workflow.MathTrainableRULERWorkflow",
    "rubric_judge_workflow": f"{_TW}.rubric_judge_workflow.RubricJudgeWorkflow",
    "rubric_judge_openai_workflow": f"{_TW}.rubric_judge_workflow.RubricJudgeWorkflowWithAPI",
    "simple_mm_workflow": f"{_TW}.simple_mm_workflow.SimpleMMWorkflow",
    "async_simple_mm_workflow": f"{_TW}.simple_mm_workflow.AsyncSimpleMMWorkflow",
    "on_policy_distill_workflow": f"{_TW}.on_policy_distill_workflow.OnPolicyDistillWorkflow",
    "on_policy_distill_math_workflow": f"{_TW}.on_policy_distill_workflow.OnPolicyDistillMathWorkflow",
    "sudoku_workflow": f"{_TW}.envs.sudoku.sudoku_workflow.SudokuWorkflow",
}
TRINITY_ONLY: dict[str, str] = {n: p for n, p in TRINITY_CLASSES.items() if n not in _WORKFLOWS}
# Trinity's class path -> this runtime's implementation of it, for configs that name Trinity's class by path
# where trinity-rft is not installed
_OURS_BY_TRINITY_PATH: dict[str, str] = {p: _WORKFLOWS[n] for n, p in TRINITY_CLASSES.items() if n in _WORKFLOWS}
_KINDS = {"workflows": "workflows", "reward_functions": "rewards"}


def known_workflows() -> tuple[str, ...]:
    """Every workflow name this runtime accepts: its own, Trinity's environment-bound ones, names plugins
    registered, and an installed trinity-rft's (read from its source, not imported)."""
    names = dict.fromkeys([*_WORKFLOWS, *TRINITY_CLASSES])
    names.update(dict.fromkeys(trinity_compat.trinity_registry("workflows")))
    names.update(dict.fromkeys(trinity_compat.trinity_registered("workflows")))
    return tuple(names)


def known_reward_fns() -> tuple[str, ...]:
    """Reward function names, as known_workflows() (this runtime's, plugins', an installed trinity-rft's)."""
    names = dict.fromkeys(_REWARD_FNS)
    names.update(dict.fromkeys(trinity_compat.trinity_registry("rewards")))
    names.update(dict.fromkeys(trinity_compat.trinity_registered("rewards")))
    return tuple(names)


def register_workflow(name: str, workflow: Any) -> None:
    """Make a workflow class (or its import path) available under `name`."""
    _WORKFLOWS[name] = workflow


def register_reward_fn(name: str, fn: Any) -> None:
    """Make a reward function (or its import path) available under `name`."""
    _REWARD_FNS[name] = fn


def trinity_class_path(name: str) -> str | None:
    """The dotted path of Trinity-RFT's own class registered as workflow `name`, where this runtime knows it."""
    return trinity_compat.trinity_registry("workflows").get(name) or TRINITY_CLASSES.get(name)


def load_object(spec: str, what: str) -> Any:
    """The object named by `package.module:Name` or `package.module.Name`, with an error that says what
    failed and what to do."""
    parts = split_import_path(spec)
    if parts is None:
        raise WorkflowError(f"{what} {spec!r} is neither a registered name nor an import path "
                            "'package.module:Name' (or 'package.module.Name')")
    module_name, attr = parts
    if module_name == "trinity" or module_name.startswith("trinity."):
        standing_in = trinity_compat.install()
        ours = _OURS_BY_TRINITY_PATH.get(f"{module_name}.{attr}") if standing_in else None
        if ours is not None:
            try:
                importlib.import_module(module_name)
            except ImportError:  # not in the stand-in nor a plugin folder: this runtime's implementation
                return load_object(ours, what)
    try:
        module = importlib.import_module(module_name)
        trinity_compat.settle()
    except ImportError as exc:
        raise WorkflowError(
            f"cannot import {what} {spec!r}: {exc}. Install the package that holds it, put its folder "
            "on PYTHONPATH, or pass the folder with --plugin-dir"
        ) from exc
    except Exception as exc:  # the user's module ran and failed at import time
        raise WorkflowError(f"importing module {module_name!r} for {what} {spec!r} failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        public = sorted(n for n in dir(module) if not n.startswith("_"))
        raise WorkflowError(f"module {module_name!r} has no {attr!r} for {what} {spec!r}; it defines: "
                            f"{', '.join(public[:20]) or 'nothing public'}")
    return getattr(module, attr)


def unknown_name_message(what: str, name: str, known: tuple[str, ...], suggestion: str | None = None) -> str:
    """Why `name` is not a workflow / reward function, and the two ways to name one of your own
    (`suggestion`: the closest known name, when the caller has its own rule for it)."""
    if suggestion is None:
        suggestion = next(iter(get_close_matches(name, known, n=1)), None)
    hint = f"did you mean {suggestion!r}? " if suggestion else ""
    form = "ClassName" if what == "workflow" else "function_name"
    deco = "WORKFLOWS" if what == "workflow" else "REWARD_FUNCTIONS"
    return (f"unknown {what} {name!r}; {hint}known: {', '.join(known)}. To use your own, name it by import "
            f"path, 'my_module.{form}' (or 'my_module:{form}'), and pass the folder holding my_module.py with "
            f"--plugin-dir DIR (or put it on PYTHONPATH); or register it under this name with "
            f"@{deco}.register_module({name!r}) in a file of that folder")


def _resolve(kind: str, name: Any, what: str) -> Any:
    if not isinstance(name, str):
        return name  # already a class or function
    if not name:
        raise WorkflowError(f"no {what} given")
    table = _WORKFLOWS if kind == "workflows" else _REWARD_FNS
    entry = table.get(name)
    if entry is None:
        entry = trinity_compat.trinity_registered(_KINDS[kind]).get(name)
    if entry is None:
        entry = trinity_compat.trinity_registry(_KINDS[kind]).get(name)
    if entry is None and kind == "workflows" and name in TRINITY_ONLY:
        missing = requirements.missing_packages(name)
        raise WorkflowError(requirements.install_hint(name, missing or [requirements.TRINITY_PIP]))
    if entry is None:
        if not is_import_path(name):
            known = known_workflows() if kind == "workflows" else known_reward_fns()
            raise WorkflowError(unknown_name_message(what, name, known))
        entry = name
    return load_object(entry, what) if isinstance(entry, str) else entry


def get_workflow(name: Any) -> type:
    """The workflow class for a registered name or an import path (`package.module:Class` or
    `package.module.Class`)."""
    cls = _resolve("workflows", name, "workflow")
    if not isinstance(cls, type):
        raise WorkflowError(f"workflow {name!r} must be a class with run() (or run_async() and is_async = True), "
                            f"got a {type(cls).__name__}")
    wants = "run_async" if getattr(cls, "is_async", False) else "run"
    if not callable(getattr(cls, wants, None)):
        raise WorkflowError(f"workflow {name!r} must be a class with run() (or run_async() and is_async = True); "
                            f"it lacks {wants}()")
    return cls


def resolve_reward_fn(name: Any) -> Any:
    """The reward function or class registered as `name` (or at that import path), not yet constructed."""
    return _resolve("reward_functions", name, "reward function")


def get_reward_fn(name: Any, args: dict[str, Any] | None = None) -> Any:
    """A ready-to-call reward function: a function (args bound) or an instance of a reward class.

    A class (Trinity-RFT's RewardFn style) is constructed with `args` as keyword arguments; a function gets
    them on every call.
    """
    obj = resolve_reward_fn(name)
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


def _register_hook(kind: str, name: str, obj: Any) -> None:
    (register_workflow if kind == "workflows" else register_reward_fn)(name, obj)


def _resolve_hook(kind: str, name: str) -> Any:
    # Trinity's REWARD_FUNCTIONS.get gives a class, constructed by the workflow with reward_fn_args
    return get_workflow(name) if kind == "workflows" else as_reward_class(resolve_reward_fn(name))


# the stand-in trinity package's Registry reaches these tables through trinity_compat (no import back here)
trinity_compat.HOOKS.update(register=_register_hook, resolve=_resolve_hook)
