"""Cross-field rules of the job config: what pydantic's per-field checks cannot see.

Each rule returns issues instead of raising, so that a user sees every problem of a file at once. The
Tinker rules are checked here, at load time; Trinity-RFT only finds them when its trainer starts.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from rft_runtime.config import catalog
from rft_runtime.config.errors import ConfigIssue
from rft_runtime.config.models import JobConfig, StorageConfig

# Why each refused algorithm cannot run behind the Tinker API (shown to the user).
_TINKER_REFUSALS = {
    "ppo": "it trains a critic (value model), and Tinker trains only the policy's LoRA adapter",
    "on_policy_distill": "it needs a teacher model's logprobs for every token, which this runtime does not fetch",
    "dpo": "it needs chosen/rejected pairs, which this runtime does not train on Tinker yet",
    "mix": "it mixes expert data into the policy loss in veRL's trainer",
    "jsd": "it needs a teacher model",
    "grpo_verl": "it is veRL's own GRPO implementation; use grpo",
    "gspo": "its sequence-level ratio is not one of Tinker's built-in losses yet",
    "cispo": "this runtime does not map it to Tinker's cispo loss yet",
}


def _known_reward_fns() -> tuple[str, ...] | None:
    try:
        from rft_runtime.workflows import known_reward_fns
    except ImportError:
        return None
    return tuple(known_reward_fns())


def _check_workflow(path: str, name: str | None, issues: list[ConfigIssue]) -> None:
    if name is None or catalog.is_import_path(name):
        return
    known = catalog.known_workflows()
    if name in known:
        return
    from rft_runtime.config.loader import suggest

    hint = suggest(name, known)
    did = f"did you mean '{hint}'? " if hint else ""
    issues.append(
        ConfigIssue(
            path,
            f"unknown workflow {name!r}; {did}built-in: {', '.join(known)}; "
            "or give your own as 'package.module:ClassName'",
        )
    )


def _check_reward_fn(path: str, name: str | None, issues: list[ConfigIssue]) -> None:
    if name is None or catalog.is_import_path(name):
        return
    known = _known_reward_fns()
    if known is None or name in known:
        return
    issues.append(
        ConfigIssue(
            path,
            f"unknown reward function {name!r}; built-in: {', '.join(known) or 'none'}; "
            "or give your own as 'package.module:function'",
        )
    )


def _check_storage(path: str, store: StorageConfig, issues: list[ConfigIssue]) -> None:
    _check_workflow(f"{path}.default_workflow_type", store.default_workflow_type, issues)
    _check_reward_fn(f"{path}.default_reward_fn_type", store.default_reward_fn_type, issues)


def _check_algorithm_args(cfg: JobConfig) -> list[ConfigIssue]:
    """advantage_fn_args and clip ranges the runtime would reject at its first step, found at load time."""
    from rft_runtime.algorithms import ADVANTAGE_ALGORITHMS, AlgorithmError, check_advantage_args, loss_spec

    issues = []
    algo = cfg.algorithm.algorithm_type
    if algo in ADVANTAGE_ALGORITHMS:
        try:
            check_advantage_args(algo, cfg.algorithm.advantage_fn_args)
        except AlgorithmError as exc:
            issues.append(ConfigIssue("algorithm.advantage_fn_args", str(exc).split(": ", 1)[-1]))
    if algo in catalog.TINKER_ALGORITHMS:
        try:
            loss_spec(cfg)
        except AlgorithmError as exc:
            message = str(exc)
            path = "algorithm.policy_loss_fn_args"
            if message.startswith("algorithm.policy_loss_fn_args."):
                path, _, message = message.partition(" ")
            issues.append(ConfigIssue(path, message))
    return issues


def check_config(cfg: JobConfig, raw: dict[str, Any], partial: bool, warnings: list[str]) -> list[ConfigIssue]:
    """Every cross-field problem of a structurally valid config (`partial` skips completeness rules)."""
    from rft_runtime.config.loader import suggest

    issues: list[ConfigIssue] = []
    algo = cfg.algorithm.algorithm_type
    model = cfg.model
    tinker = model.tinker
    buffer = cfg.buffer

    # --- algorithm
    if algo not in catalog.KNOWN_ALGORITHMS:
        hint = suggest(algo, catalog.KNOWN_ALGORITHMS)
        did = f"did you mean '{hint}'? " if hint else ""
        issues.append(
            ConfigIssue(
                "algorithm.algorithm_type",
                f"unknown algorithm {algo!r}; {did}known: {', '.join(catalog.KNOWN_ALGORITHMS)}",
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
        if cfg.trainer.trainer_type == "verl":
            # a veRL config with the Tinker block added (what the seed document tells users to do)
            warnings.append("trainer.trainer_type 'verl' is replaced by 'tinker' because model.tinker.enable is true")
        if algo in catalog.KNOWN_ALGORITHMS and algo not in catalog.TINKER_ALGORITHMS:
            why = _TINKER_REFUSALS.get(algo, "it is not implemented for Tinker")
            issues.append(
                ConfigIssue(
                    "algorithm.algorithm_type",
                    f"{algo!r} cannot run on the Tinker backend (model.tinker.enable: true): {why}. "
                    f"Supported on Tinker: {', '.join(catalog.TINKER_ALGORITHMS)}; "
                    "or set model.tinker.enable: false to train with veRL on GPUs",
                )
            )
        if cfg.mode not in catalog.TINKER_MODES:
            issues.append(
                ConfigIssue(
                    "mode",
                    f"mode {cfg.mode!r} is not available on the Tinker backend; use 'both' "
                    "(explore and train) or 'train' (with algorithm_type sft)",
                )
            )
        sync_set = "sync_method" in (raw.get("synchronizer") or {})
        if sync_set and cfg.synchronizer.sync_method not in catalog.TINKER_SYNC_METHODS:
            issues.append(
                ConfigIssue(
                    "synchronizer.sync_method",
                    f"{cfg.synchronizer.sync_method!r} is not available on Tinker, where new weights reach "
                    "the sampler only as saved sampler weights; set sync_method: checkpoint",
                )
            )
        if cfg.mode == "train" and algo in catalog.TINKER_ALGORITHMS and algo != "sft":
            issues.append(
                ConfigIssue(
                    "mode",
                    f"mode 'train' on Tinker trains from a dataset and needs algorithm_type sft; "
                    f"{algo!r} learns from rollouts: use mode 'both'",
                )
            )
        if cfg.mode == "both" and algo == "sft":
            issues.append(
                ConfigIssue(
                    "algorithm.algorithm_type",
                    "sft learns from a fixed dataset: set mode: train and "
                    "buffer.trainer_input.experience_buffer.path",
                )
            )
        issues.extend(_check_algorithm_args(cfg))
        if algo == "grpo" and cfg.algorithm.repeat_times == 1 and cfg.mode == "both":
            warnings.append(
                "algorithm.repeat_times is 1: grpo compares rollouts of the same task, so a group of one has "
                "advantage 0 and nothing is learned; use repeat_times >= 2"
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
    else:
        if cfg.trainer.trainer_type == "tinker":
            issues.append(
                ConfigIssue(
                    "trainer.trainer_type",
                    "'tinker' needs model.tinker.enable: true; set it, or remove trainer_type",
                )
            )
        if cfg.cluster.gpu_per_node < 1:
            issues.append(
                ConfigIssue(
                    "cluster.gpu_per_node",
                    "the veRL backend needs at least one GPU per node; set gpu_per_node, "
                    "or set model.tinker.enable: true to train without GPUs",
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

    # --- sampling overrides of tasksets
    explorer_input = buffer.explorer_input
    _check_workflow("buffer.explorer_input.default_workflow_type", explorer_input.default_workflow_type, issues)
    _check_workflow(
        "buffer.explorer_input.default_eval_workflow_type", explorer_input.default_eval_workflow_type, issues
    )
    _check_reward_fn("buffer.explorer_input.default_reward_fn_type", explorer_input.default_reward_fn_type, issues)
    _check_storage("buffer.explorer_input.taskset", explorer_input.taskset, issues)
    for i, ts in enumerate(explorer_input.tasksets):
        _check_storage(f"buffer.explorer_input.tasksets[{i}]", ts, issues)
    for i, ts in enumerate(explorer_input.eval_tasksets):
        _check_storage(f"buffer.explorer_input.eval_tasksets[{i}]", ts, issues)
        if not ts.path:
            issues.append(ConfigIssue(f"buffer.explorer_input.eval_tasksets[{i}].path", _NO_PATH))

    if partial:
        # a fragment is judged only on what it sets, not on the defaults it will be merged over
        return [i for i in issues if _is_set(raw, i.path)]

    # --- completeness: only a whole job needs these
    if not model.model_path and not tinker.base_model:
        issues.append(
            ConfigIssue(
                "model.model_path",
                "is required: a hub model name or a local directory (or set model.tinker.base_model)",
            )
        )
    explores = cfg.mode in ("both", "explore", "bench")
    if explores:
        tasksets = [explorer_input.taskset, *explorer_input.tasksets]
        if not any(ts.path for ts in tasksets):
            issues.append(ConfigIssue("buffer.explorer_input.taskset.path", _NO_PATH))
        has_workflow = explorer_input.default_workflow_type or any(ts.default_workflow_type for ts in tasksets)
        if not has_workflow and algo != "sft":
            issues.append(
                ConfigIssue(
                    "buffer.explorer_input.default_workflow_type",
                    "is required to turn tasks into rollouts; e.g. math_workflow, or 'package.module:Class'",
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
                )
            )
        elif eb.storage_type == "queue":
            issues.append(
                ConfigIssue(
                    "buffer.trainer_input.experience_buffer.storage_type",
                    f"{algo} reads a dataset, not the rollout queue; set storage_type: file",
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
