"""Cross-field rules of the job config: what pydantic's per-field checks cannot see.

Each rule returns issues instead of raising, so that a user sees every problem of a file at once. The
Tinker rules are checked here, at load time; Trinity-RFT only finds them when its trainer starts.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from rft_runtime.algorithms import registry
from rft_runtime.config import catalog, loop_rules, support
from rft_runtime.config.errors import ConfigIssue
from rft_runtime.config.loader import _short, suggest
from rft_runtime.config.models import JobConfig, TasksetConfig


def _suggest(name: str, choices: tuple[str, ...]) -> str:
    hint = suggest(name, choices)
    return f"did you mean '{hint}'? " if hint else ""


def _check_named(path: str, name: str | None, what: str, trinity: tuple[str, ...], ours: tuple[str, ...],
                 backend: str, issues: list[ConfigIssue]) -> None:
    """A workflow or reward name: Trinity's (veRL), this runtime's (Tinker) or an import path (both)."""
    if name is None or catalog.is_import_path(name):
        return
    runnable = ours if backend == "tinker" else tuple(dict.fromkeys((*trinity, *ours)))
    if name in runnable:
        return
    form = "package.module.ClassName" if what == "workflow" else "package.module.function"
    if backend == "tinker" and name in trinity:
        issues.append(ConfigIssue(path, (
            f"{what} {name!r} is Trinity-RFT's and runs only in Trinity (the veRL backend); on Tinker this "
            f"runtime runs: {', '.join(ours)}; or give your own as '{form}'")))
        return
    issues.append(ConfigIssue(path, (
        f"unknown {what} {name!r}; {_suggest(name, runnable)}known: {', '.join(runnable)}; "
        f"or give your own as '{form}'"), soft=True))


def _check_storage(path: str, store: TasksetConfig, backend: str, issues: list[ConfigIssue]) -> None:
    _check_named(f"{path}.default_workflow_type", store.default_workflow_type, "workflow",
                 catalog.TRINITY_WORKFLOWS, catalog.known_workflows(), backend, issues)
    _check_named(f"{path}.default_reward_fn_type", store.default_reward_fn_type, "reward function",
                 catalog.TRINITY_REWARD_FNS, catalog.known_reward_fns(), backend, issues)


def _check_tinker_support(cfg: JobConfig, issues: list[ConfigIssue], warnings: list[str]) -> None:
    """Refuse what would train differently on Tinker; list once what has no effect there."""
    idle: dict[str, list[str]] = {}
    roots: list[str] = []
    for path, owner, name, value in support.set_fields(cfg):
        rule = support.REFUSED_ON_TINKER.get((owner, name))
        if rule is not None:
            accepts, why = rule
            if not accepts(value, cfg):
                issues.append(ConfigIssue(path, (
                    f"{_short(value)} is not available on the Tinker backend (model.tinker.enable: true): {why}; "
                    "remove it, or train with veRL (model.tinker.enable: false)")))
        elif support.treatment(owner, name) == support.NO_EFFECT:
            # what is inside an idle field is idle too; lora_configs has a warning of its own
            if not any(path.startswith((f"{p}.", f"{p}[")) for p in roots):
                roots.append(path)
                if (owner, name) != ("ModelConfig", "lora_configs"):
                    idle.setdefault(path.split(".")[0].split("[")[0], []).append(path)
    for paths in idle.values():
        warnings.append(f"no effect on the Tinker backend: {', '.join(paths)}")


def _check_algorithm_args(cfg: JobConfig, warnings: list[str]) -> list[ConfigIssue]:
    """Every algorithm setting the runtime would reject at its first step (unknown arguments, losses and
    settings Tinker cannot train), found at load time by building the loss plan; its notes (where the
    trained loss differs from Trinity's) become warnings."""
    from rft_runtime.algorithms import AlgorithmError, loss_plan

    if cfg.algorithm.algorithm_type not in catalog.TINKER_ALGORITHMS:
        return []
    try:
        plan = loss_plan(cfg)
    except AlgorithmError as exc:
        message = str(exc)
        path = "algorithm"
        if message.split(" ", 1)[0].rstrip(":").split(".")[0] in ("algorithm", "explorer", "buffer"):
            head, _, rest = message.partition(" ")
            path, message = head.rstrip(":"), rest
        elif message.startswith("advantage_fn "):
            path = "algorithm.advantage_fn"
        return [ConfigIssue(path, message)]
    warnings.extend(f"algorithm: {note}" for note in plan.notes)
    return []


def check_config(cfg: JobConfig, raw: dict[str, Any], partial: bool, warnings: list[str]) -> list[ConfigIssue]:
    """Every cross-field problem of a structurally valid config (`partial` skips completeness rules).

    A veRL job is run by Trinity, whose loader takes any name (plugins register more) and whose own checks
    run when the job starts: there unknown names and missing parts are warnings, not errors.
    """
    issues = _check(cfg, raw, partial, warnings)
    if cfg.backend == "tinker":
        return issues
    warnings += [f"{i.path}: {i.message} (Trinity checks this when the job starts)" for i in issues if i.soft]
    return [i for i in issues if not i.soft]


def _check(cfg: JobConfig, raw: dict[str, Any], partial: bool, warnings: list[str]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    algo = cfg.algorithm.algorithm_type
    model = cfg.model
    tinker = model.tinker
    buffer = cfg.buffer
    backend = cfg.backend

    # --- algorithm
    if algo not in catalog.KNOWN_ALGORITHMS:
        issues.append(
            ConfigIssue(
                "algorithm.algorithm_type",
                f"unknown algorithm {algo!r}; {_suggest(algo, catalog.KNOWN_ALGORITHMS)}"
                f"Trinity-RFT knows: {', '.join(catalog.KNOWN_ALGORITHMS)}",
                soft=True,
            )
        )
    kl = (cfg.algorithm.kl_loss_fn_args or {}).get("kl_coef")
    if kl is not None:
        if isinstance(kl, bool) or not isinstance(kl, (int, float)):
            issues.append(ConfigIssue("algorithm.kl_loss_fn_args.kl_coef", f"must be a number, got {kl!r}"))
        elif kl < 0:
            issues.append(ConfigIssue("algorithm.kl_loss_fn_args.kl_coef", f"must be >= 0, got {kl!r}"))
    for i, beta in enumerate(cfg.algorithm.optimizer.betas):
        if not 0 <= beta < 1:
            issues.append(ConfigIssue(f"algorithm.optimizer.betas[{i}]", f"must be in [0, 1), got {beta!r}"))

    # --- backend
    if tinker.enable:
        if "trainer_type" in (raw.get("trainer") or {}) and cfg.trainer.trainer_type == "verl":
            # a veRL config with the Tinker block added (what the seed document tells users to do)
            warnings.append("trainer.trainer_type 'verl' is replaced by 'tinker' because model.tinker.enable is true")
        if algo in catalog.KNOWN_ALGORITHMS and algo not in catalog.TINKER_ALGORITHMS:
            why = catalog.TINKER_REFUSALS.get(algo, catalog.TINKER_REFUSAL_DEFAULT)
            issues.append(
                ConfigIssue(
                    "algorithm.algorithm_type",
                    f"{algo!r} cannot run on the Tinker backend (model.tinker.enable: true): {why}. "
                    f"Supported on Tinker: {', '.join(catalog.TINKER_ALGORITHMS)}; "
                    "or set model.tinker.enable: false to train with veRL on GPUs",
                )
            )
        issues.extend(loop_rules.check_tinker_loop(cfg))
        if "sync_method" in (raw.get("synchronizer") or {}) and cfg.synchronizer.sync_method == "nccl":
            warnings.append("synchronizer.sync_method 'nccl' becomes 'checkpoint' on Tinker (as in Trinity): "
                            "new weights reach the sampler as saved sampler weights")
        issues.extend(_check_algorithm_args(cfg, warnings))
        _check_tinker_support(cfg, issues, warnings)
        if algo == "grpo" and cfg.algorithm.repeat_times == 1 and cfg.mode == "both":
            warnings.append(
                "algorithm.repeat_times is 1: grpo compares rollouts of the same task, and a group of one has "
                "no baseline (its advantage is its reward, as in Trinity); use repeat_times >= 2"
            )
        spec = registry.ALGORITHMS.get(algo)
        if (spec and not spec.refusal and spec.kl_loss_fn != "none" and cfg.algorithm.kl_loss_fn is None
                and cfg.algorithm.kl_loss_fn_args is None):
            warnings.append(
                f"algorithm.kl_loss_fn_args is not set: Trinity adds a KL loss ({spec.kl_loss_fn}, kl_coef 0.001) "
                "to {algo} by default; on Tinker this runtime adds none unless kl_loss_fn or "
                "kl_loss_fn_args.kl_coef is set".replace("{algo}", algo)
            )
        if model.lora_configs:
            warnings.append(
                "model.lora_configs is ignored with model.tinker.enable: true; "
                f"the adapter's rank comes from model.tinker.rank ({tinker.rank})"
            )
        url = tinker.base_url
        if url is not None and url != "local":
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                issues.append(
                    ConfigIssue(
                        "model.tinker.base_url",
                        f"{url!r} is not an http(s) URL; use null for the Tinker service, 'local' for "
                        "the local engine, or a URL like http://127.0.0.1:8765",
                    )
                )
    elif "trainer_type" in (raw.get("trainer") or {}) and cfg.trainer.trainer_type == "tinker":
        issues.append(
            ConfigIssue(
                "trainer.trainer_type",
                "'tinker' needs model.tinker.enable: true; set it, or remove trainer_type",
            )
        )

    # --- token budgets
    p, r, limit = model.max_prompt_tokens, model.max_response_tokens, model.max_model_len
    if p and r and limit and p + r > limit:
        issues.append(
            ConfigIssue(
                "model.max_model_len",
                f"max_prompt_tokens + max_response_tokens = {p} + {r} = {p + r} exceeds max_model_len {limit}; "
                "raise max_model_len or lower the token budgets",
            )
        )

    # --- workflows and reward functions of the tasksets
    explorer_input = buffer.explorer_input
    for key in ("default_workflow_type", "default_eval_workflow_type"):
        _check_named(f"buffer.explorer_input.{key}", getattr(explorer_input, key), "workflow",
                     catalog.TRINITY_WORKFLOWS, catalog.known_workflows(), backend, issues)
    _check_named("buffer.explorer_input.default_reward_fn_type", explorer_input.default_reward_fn_type,
                 "reward function", catalog.TRINITY_REWARD_FNS, catalog.known_reward_fns(), backend, issues)
    _check_storage("buffer.explorer_input.taskset", explorer_input.taskset, backend, issues)
    for i, ts in enumerate(explorer_input.tasksets):
        _check_storage(f"buffer.explorer_input.tasksets[{i}]", ts, backend, issues)
    for i, ts in enumerate(explorer_input.eval_tasksets):
        _check_storage(f"buffer.explorer_input.eval_tasksets[{i}]", ts, backend, issues)
        if not ts.path:
            issues.append(ConfigIssue(f"buffer.explorer_input.eval_tasksets[{i}].path", _NO_PATH, soft=True))

    if partial:
        # a fragment is judged only on what it sets, not on the defaults it will be merged over
        return [i for i in issues if _is_set(raw, i.path)]

    # --- completeness: only a whole job needs these
    if not model.model_path and not tinker.base_model:
        issues.append(
            ConfigIssue(
                "model.model_path",
                "is required: a hub model name or a local directory (or set model.tinker.base_model)",
                soft=True,
            )
        )
    # bench and serve read no taskset (bench evaluates the eval_tasksets)
    if cfg.mode in ("both", "explore"):
        tasksets = [explorer_input.taskset, *explorer_input.tasksets]
        if not any(ts.path for ts in tasksets):
            issues.append(ConfigIssue("buffer.explorer_input.taskset.path", _NO_PATH, soft=True))
        has_workflow = explorer_input.default_workflow_type or any(ts.default_workflow_type for ts in tasksets)
        if not has_workflow and algo not in catalog.OFFLINE_ALGORITHMS:
            issues.append(
                ConfigIssue(
                    "buffer.explorer_input.default_workflow_type",
                    "is required to turn tasks into rollouts; e.g. math_workflow, or 'package.module.Class'",
                    soft=True,
                )
            )
    if cfg.mode == "train" and algo in catalog.OFFLINE_ALGORITHMS:
        eb = buffer.trainer_input.experience_buffer
        if not eb.path:
            issues.append(
                ConfigIssue(
                    "buffer.trainer_input.experience_buffer.path",
                    f"{algo} in mode train reads its dataset from here; set path (a local file or folder, "
                    "or a hub dataset) and storage_type: file",
                    soft=True,
                )
            )
        elif eb.storage_type == "queue":
            issues.append(
                ConfigIssue(
                    "buffer.trainer_input.experience_buffer.storage_type",
                    f"{algo} reads a dataset, not the rollout queue; set storage_type: file",
                    soft=True,
                )
            )
    return issues


_NO_PATH = "a taskset needs a path: a hub dataset name (e.g. openai/gsm8k) or a local file or folder"


def _is_set(raw: dict[str, Any], path: str) -> bool:
    """True when the dotted path (list indices as [i]) names a key the user's data holds."""
    node: Any = raw
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(node, list) or index >= len(node):
                return False
            node = node[index]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True
