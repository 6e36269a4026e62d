"""The config's workflow and reward function names, and what the named workflows need to run.

Every name Trinity-RFT 0.6 registers is accepted on both backends (on Tinker this runtime runs it). On
Tinker the validator also says, before anything starts, what a workflow needs that the job lacks: an
auxiliary model (a judge, a teacher, a reward model: an error naming explorer.auxiliary_models), a package
of its environment (a warning naming the install line: the job's image may have it), a judge API's model
name, a vision-language model. `rft validate` then imports the classes the config names
(`load_named`), so "valid" means they load. Reads the workflow registry, which imports nothing heavy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from rft_runtime.algorithms import AlgorithmError, loss_plan
from rft_runtime.config import catalog
from rft_runtime.config.errors import ConfigIssue
from rft_runtime.config.models import JobConfig
from rft_runtime.workflows import WorkflowError, registry, requirements

_EI = "buffer.explorer_input"


def _named(cfg: JobConfig) -> Iterator[tuple[str, str, str]]:
    """(path, "workflow" | "reward function", name) of every name the config sets."""
    ei = cfg.buffer.explorer_input
    for key in ("default_workflow_type", "default_eval_workflow_type"):
        if getattr(ei, key):
            yield f"{_EI}.{key}", "workflow", getattr(ei, key)
    if ei.default_reward_fn_type:
        yield f"{_EI}.default_reward_fn_type", "reward function", ei.default_reward_fn_type
    for where, ts in _tasksets(cfg, used_only=False):
        if ts.default_workflow_type:
            yield f"{where}.default_workflow_type", "workflow", ts.default_workflow_type
        if ts.default_reward_fn_type:
            yield f"{where}.default_reward_fn_type", "reward function", ts.default_reward_fn_type


def _tasksets(cfg: JobConfig, used_only: bool = True) -> Iterator[tuple[str, Any]]:
    ei = cfg.buffer.explorer_input
    if not used_only or ei.taskset.path or not ei.tasksets:
        yield f"{_EI}.taskset", ei.taskset
    for i, ts in enumerate(ei.tasksets):
        yield f"{_EI}.tasksets[{i}]", ts
    for i, ts in enumerate(ei.eval_tasksets):
        yield f"{_EI}.eval_tasksets[{i}]", ts


def _effective(cfg: JobConfig) -> Iterator[tuple[str, Any, str, str, Any]]:
    """(taskset path, taskset, path of the workflow name, workflow name, reward name) of each used taskset."""
    ei = cfg.buffer.explorer_input
    for where, ts in _tasksets(cfg):
        is_eval = ".eval_tasksets[" in where
        if ts.default_workflow_type:
            source, name = f"{where}.default_workflow_type", ts.default_workflow_type
        elif is_eval and ei.default_eval_workflow_type:
            source, name = f"{_EI}.default_eval_workflow_type", ei.default_eval_workflow_type
        elif ei.default_workflow_type:
            source, name = f"{_EI}.default_workflow_type", ei.default_workflow_type
        else:
            continue
        yield where, ts, source, name, ts.default_reward_fn_type or ei.default_reward_fn_type


def check_workflows(cfg: JobConfig, warnings: list[str],
                    suggest: Callable[[str, tuple[str, ...]], str | None] | None = None) -> list[ConfigIssue]:
    """Unknown names (soft: a plugin may register them), and on Tinker what each used workflow needs.
    `suggest` picks the closest known name for a misspelt one (the validator's own rule)."""
    known = {"workflow": (*catalog.TRINITY_WORKFLOWS, *catalog.known_workflows()),
             "reward function": (*catalog.TRINITY_REWARD_FNS, *catalog.known_reward_fns())}
    issues = []
    for path, what, name in _named(cfg):
        choices = tuple(dict.fromkeys(known[what]))
        if name not in choices and not catalog.is_import_path(name):
            issues.append(ConfigIssue(path, registry.unknown_name_message(what, name, choices, suggest(name, choices) if suggest else None), soft=True))
    if cfg.backend == "tinker":
        issues += _dataset_images(cfg, warnings)
        seen: set[tuple[str, str]] = set()
        for where, ts, source, name, reward in _effective(cfg):
            if (source, where) not in seen:
                seen.add((source, where))
                issues += _needs(cfg, where, ts, source, name, reward, warnings)
    return issues


def _image_datasets(cfg: JobConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """({path: store} of the training datasets whose rows' images are sent, {path: why not} of the trainer
    stores whose format.image_key nothing reads)."""
    ti = cfg.buffer.trainer_input
    stores = {"buffer.trainer_input.experience_buffer": ti.experience_buffer,
              **{f"buffer.trainer_input.auxiliary_buffers.{k}": v for k, v in ti.auxiliary_buffers.items()}}
    stores = {where: s for where, s in stores.items() if s is not None and s.format.image_key}
    try:
        plan = loss_plan(cfg)
    except AlgorithmError:
        return {}, {}  # the algorithm's own check says what is wrong
    read: dict[str, Any] = {}
    if cfg.mode == "train" and plan.data in ("sft", "dpo"):
        read["buffer.trainer_input.experience_buffer"] = ti.experience_buffer
    if plan.is_mix:
        name = (cfg.algorithm.sample_strategy_args or {}).get("sft_dataset_name", "sft_dataset")
        read[f"buffer.trainer_input.auxiliary_buffers.{name}"] = ti.auxiliary_buffers.get(name)
    sent, unread = {}, {}
    for where, store in stores.items():
        if where not in read:
            unread[where] = ("nothing reads this buffer's rows as a dataset" if plan.data != "cpt" else
                             "cpt trains on raw text (Trinity's CPT formatter reads no images)")
        elif store.format.prompt_type != "plaintext":
            unread[where] = ("with prompt_type messages the images are the messages' image parts, as in Trinity "
                             "(set prompt_type: plaintext to take them from this column)")
        else:
            sent[where] = store
    return sent, unread


def _dataset_images(cfg: JobConfig, warnings: list[str]) -> list[ConfigIssue]:
    """A training dataset's images (SFT, DPO, expert data) go to the Tinker service as image chunks; the
    local engine serves text models and refuses them."""
    sent, unread = _image_datasets(cfg)
    for where, why in unread.items():
        warnings.append(f"{where}.format.image_key is not read: {why}")
    if cfg.model.tinker.base_url != "local":
        return []
    return [ConfigIssue(f"{where}.format.image_key", (
        f"{store.format.image_key!r}: this dataset's rows' images are sent to Tinker as image chunks, which needs a "
        "vision-language base model; the local engine (model.tinker.base_url: local) serves text models and "
        "refuses image chunks. Use the Tinker service (model.tinker.base_url: null) or another Tinker-compatible "
        "server with a vision-language model_path, or remove image_key to train on the rows' text"))
        for where, store in sent.items()]


def _needs(cfg: JobConfig, where: str, ts: Any, source: str, name: str, reward: str | None,
           warnings: list[str]) -> list[ConfigIssue]:
    needs = requirements.needs(name)
    issues = []
    missing = requirements.missing_packages(name)
    if missing:
        warnings.append(f"{source}: {requirements.install_hint(name, missing)}; `rft run` stops before step 1 "
                        "where they are missing")
    # Trinity's math_rm grades with a reward function it names; this runtime's default grader is a model
    rm_by_function = name in ("math_rm_workflow", "async_math_rm_workflow") and reward
    if needs.auxiliary and not cfg.explorer.auxiliary_models and not rm_by_function:
        issues.append(ConfigIssue("explorer.auxiliary_models", (
            f"workflow {name!r} ({source}) needs {needs.auxiliary}: add it as the first entry, e.g. "
            "explorer.auxiliary_models: [{model_path: <a Tinker base model or local directory>}]")))
    if name == "rubric_judge_openai_workflow":
        args = ts.workflow_args or {}
        if not args.get("judge_model_name"):
            issues.append(ConfigIssue(f"{where}.workflow_args.judge_model_name", (
                "is required by rubric_judge_openai_workflow: the judge's model name at the OpenAI-compatible API "
                "whose base URL is in the environment variable judge_api_base_url_env (OPENAI_BASE_URL)")))
        url_env = args.get("judge_api_base_url_env", "OPENAI_BASE_URL")
        if not os.environ.get(url_env):
            warnings.append(f"{where}.workflow_args: rubric_judge_openai_workflow reads the judge API's base URL "
                            f"from ${url_env}, which is not set here; set it where the job runs (explorer.env_vars)")
    if needs.vision and cfg.model.tinker.base_url == "local":
        issues.append(ConfigIssue(source, (
            f"{name!r} sends the row's images to the sampler as image chunks, which needs a vision-language base "
            "model on the Tinker service; the local engine (model.tinker.base_url: local) serves text models. "
            "Use the Tinker service with a vision-language model_path")))
    return issues


def load_named(cfg: JobConfig, plugins_given: bool) -> tuple[list[str], list[str]]:
    """Import every workflow class and reward function a Tinker config names: (problems, warnings).

    A module that cannot be found is a warning when no --plugin-dir was given (the job's image may hold it)
    and a problem when one was; a module that fails, a missing attribute, a class that is no workflow are
    problems. Workflows bound to an environment that is not installed are left to check_workflows' warning.
    """
    problems: list[str] = []
    warnings: list[str] = []
    if cfg.backend != "tinker":
        return problems, warnings  # Trinity loads them itself, from its own registry and plugins
    known = {"workflow": registry.known_workflows(), "reward function": registry.known_reward_fns()}
    for path, what, name in _named(cfg):
        if what == "workflow" and requirements.missing_packages(name):
            continue
        if name not in known[what] and not catalog.is_import_path(name):
            continue  # check_workflows has said it is unknown
        try:
            if what == "workflow":
                registry.get_workflow(name)
            else:
                registry.resolve_reward_fn(name)
        except WorkflowError as exc:
            cause = exc.__cause__
            absent = isinstance(cause, ModuleNotFoundError) and not plugins_given and \
                (cause.name or "").split(".")[0] == name.split(":")[0].split(".")[0]
            if absent:
                warnings.append(f"{path}: {exc} (not checked here: pass --plugin-dir DIR to check it)")
            else:
                problems.append(f"{path}: {exc}")
    return problems, warnings
