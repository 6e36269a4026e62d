"""Cross-field rules of the job config: what pydantic's per-field checks cannot see.

Each rule returns issues instead of raising, so that a user sees every problem of a file at once. The
Tinker rules are checked here, at load time; Trinity-RFT only finds them when its trainer starts.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from rft_runtime.algorithms import AlgorithmError, loss_plan
from rft_runtime.config import catalog, loop_rules, support, workflow_checks
from rft_runtime.config.data_checks import check_data_features
from rft_runtime.config.errors import ConfigIssue, did_you_mean, short, suggest
from rft_runtime.config.models import JobConfig


def _check_tinker_support(cfg: JobConfig, issues: list[ConfigIssue], warnings: list[str]) -> None:
    """Refuse what would train differently on Tinker; list once what has no effect there."""
    idle: dict[str, list[str]] = {}
    roots: list[str] = []
    for path, owner, name, value in support.set_fields(cfg):
        kind, rule = support.placed(owner, name, path)
        if kind == support.REFUSED and rule is not None:
            accepts, why = rule
            if not accepts(value, cfg):
                issues.append(ConfigIssue(path, (
                    f"{short(value)} is not available on the Tinker backend (model.tinker.enable: true): {why}; "
                    "remove it, or train with veRL (model.tinker.enable: false)")))
        elif kind == support.NO_EFFECT and rule is not None:
            # a setting Trinity's Tinker mode ignores too: said with the reason when it asks for something else
            accepts, why = rule
            if not accepts(value, cfg):
                warnings.append(f"{path}: {short(value)} has no effect on the Tinker backend: {why}")
        elif kind == support.NO_EFFECT:
            # what is inside an idle field is idle too; lora_configs has a warning of its own
            if not any(path.startswith((f"{p}.", f"{p}[")) for p in roots):
                roots.append(path)
                if (owner, name) != ("ModelConfig", "lora_configs"):
                    idle.setdefault(path.split(".")[0].split("[")[0], []).append(path)
    for paths in idle.values():
        warnings.append(f"no effect on the Tinker backend: {', '.join(paths)}")


def _check_algorithm(cfg: JobConfig, warnings: list[str]) -> list[ConfigIssue]:
    """Every algorithm setting the runtime would reject at its first step (unknown arguments, losses and
    settings Tinker cannot train, what the algorithm type checks itself), found at load time by building the
    loss plan (rft_runtime.algorithms.losses); its warnings are the file's."""
    if cfg.algorithm.algorithm_type not in catalog.TINKER_ALGORITHMS:
        return []
    try:
        plan = loss_plan(cfg)
    except AlgorithmError as exc:
        return [i if i.path else ConfigIssue("algorithm", i.message) for i in exc.issues]
    warnings.extend(plan.warnings)
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

    # --- algorithm (Trinity's, or one a file in rft_runtime/algorithms/types adds for Tinker)
    if algo not in catalog.KNOWN_ALGORITHMS and not (backend == "tinker" and algo in catalog.TINKER_ALGORITHMS):
        issues.append(
            ConfigIssue(
                "algorithm.algorithm_type",
                f"unknown algorithm {algo!r}; {did_you_mean(algo, catalog.KNOWN_ALGORITHMS)}"
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
        issues.extend(_check_algorithm(cfg, warnings))
        _check_tinker_support(cfg, issues, warnings)
        issues.extend(check_data_features(cfg, warnings))
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

    # --- workflows and reward functions of the tasksets, and what the named workflows need
    issues += workflow_checks.check_workflows(cfg, warnings, suggest)
    explorer_input = buffer.explorer_input
    for i, ts in enumerate(explorer_input.eval_tasksets):
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
        has_workflow = explorer_input.default_workflow_type or any(ts.default_workflow_type or ts.format.workflow_key
                                                                    for ts in tasksets)
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
