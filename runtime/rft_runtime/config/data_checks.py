"""Load-time rules for data pipelines, data selectors and external models on the Tinker backend.

What Trinity-RFT 0.6 would only find when its explorer starts (an unknown operator or selector, an
operator's wrong argument, an external model outside mode bench) is an error here; what may be true only
where the job runs (Data-Juicer installed, an endpoint's environment variable set) is a warning, and
`rft run` checks it again before the first step.
"""

from __future__ import annotations

import os
from typing import Any

from rft_runtime.buffers.sql import is_database_url
from rft_runtime.config.errors import ConfigIssue
from rft_runtime.config.models import JobConfig
from rft_runtime.config.trinity_facts import REGISTRIES
from rft_runtime.data import juicer
from rft_runtime.data.operators import operator_problem
from rft_runtime.data.pipeline import task_pipeline_target
from rft_runtime.data.tasksets import training_tasksets

_EP = "data_processor.experience_pipeline"
# Trinity's selectors, every one of which rft_runtime.data.selectors runs (read from the facts, not from that
# module, whose numpy would cost the validator ~0.15 s)
SELECTORS = REGISTRIES["selectors"]


def _pipelines(cfg: JobConfig, issues: list[ConfigIssue], warnings: list[str]) -> None:
    dp = cfg.data_processor
    juicer_paths = []
    if cfg.mode != "train":
        for i, op in enumerate(dp.experience_pipeline.operators):
            problem = operator_problem(op.name, dict(op.args))
            if problem is not None:
                field = "name" if problem.startswith("unknown") else "args"
                issues.append(ConfigIssue(f"{_EP}.operators[{i}].{field}", problem))
            if op.name == "data_juicer":
                juicer_paths.append(f"{_EP}.operators[{i}]")
        where = dp.experience_pipeline.input_save_path
        if where and not (where.startswith("sqlite:///") or where.endswith((".jsonl", ".json"))):
            issues.append(ConfigIssue(f"{_EP}.input_save_path", f"{where!r}: on Tinker the pipeline's input is kept "
                                                                "in a .jsonl file or a sqlite:/// database"))
    elif dp.experience_pipeline.operators:
        warnings.append(f"{_EP}.operators: mode train reads a dataset, so no experiences pass the pipeline "
                        "(as in Trinity)")
    tp = dp.task_pipeline
    if tp is not None and cfg.mode in ("both", "explore", "train"):
        juicer_paths.append("data_processor.task_pipeline")
        where, target = task_pipeline_target(cfg)
        if not target.path:
            issues.append(ConfigIssue(f"{where}.path", "the task pipeline writes its tasks into this folder: set it"))
        if not tp.operators and not tp.config_path:
            issues.append(ConfigIssue("data_processor.task_pipeline.operators", "give Data-Juicer operators, or "
                                                                               "config_path"))
        for i, path in enumerate(tp.inputs):
            if not os.path.isfile(os.path.expanduser(path)):
                warnings.append(f"data_processor.task_pipeline.inputs[{i}]: {path} is not a file here; `rft run` "
                                "needs it where the job runs")
    if juicer_paths and not juicer.available():
        warnings.append(f"{juicer.missing_message(', '.join(juicer_paths))}; `rft run` stops before the first "
                        "step without it")


def _selectors(cfg: JobConfig, issues: list[ConfigIssue], warnings: list[str]) -> None:
    ei = cfg.buffer.explorer_input
    for i, ts in enumerate(ei.eval_tasksets):
        if any(s is not None and "selector_type" in s.model_fields_set for s in (ts.data_selector, ts.task_selector)):
            warnings.append(f"buffer.explorer_input.eval_tasksets[{i}].data_selector has no effect: an eval taskset "
                            "is read whole, in file order")
    stores: list[tuple[str, Any]] = [*training_tasksets(cfg),
                                     ("buffer.trainer_input.experience_buffer", cfg.buffer.trainer_input.experience_buffer)]
    for path, store in stores:
        for field in ("task_selector", "data_selector"):
            sel = getattr(store, field, None)
            if sel is None or "selector_type" not in sel.model_fields_set:
                continue
            where = f"{path}.{field}"
            if field == "task_selector":
                warnings.append(f"{where} is Trinity's older name of data_selector, and wins over it")
            if sel.selector_type not in SELECTORS:
                issues.append(ConfigIssue(f"{where}.selector_type", f"unknown selector {sel.selector_type!r}; "
                                                                    f"Trinity-RFT's: {', '.join(SELECTORS)}"))
            elif sel.selector_type == "difficulty_based" and len(sel.feature_keys) != 2:
                issues.append(ConfigIssue(f"{where}.feature_keys", "difficulty_based needs exactly two columns: "
                                                                   "pass rates of a weaker and a stronger "
                                                                   "reference model"))
            elif sel.selector_type == "offline_easy2hard" and not sel.feature_keys:
                issues.append(ConfigIssue(f"{where}.feature_keys", "offline_easy2hard sorts by these columns: "
                                                                   "name at least one"))
            if sel.selector_type == "difficulty_based" and not any(
                    op.name == "pass_rate_calculator" for op in cfg.data_processor.experience_pipeline.operators):
                warnings.append(f"{where}: difficulty_based learns from the pass_rate_calculator operator, which "
                                f"{_EP}.operators does not have: its estimates stay the feature columns' prior")


def _tasksets(cfg: JobConfig, issues: list[ConfigIssue]) -> None:
    """Several tasksets, and tasksets in a database: what Trinity's explorer reads, and how."""
    ei = cfg.buffer.explorer_input
    if ei.tasksets and ei.taskset.path:
        issues.append(ConfigIssue("buffer.explorer_input.tasksets", "set either taskset or tasksets, not both "
                                                                    "(Trinity refuses the pair): put the taskset in "
                                                                    "the list"))
    training = training_tasksets(cfg) if cfg.mode in ("both", "explore") else []
    evals = [(f"buffer.explorer_input.eval_tasksets[{i}]", ts) for i, ts in enumerate(ei.eval_tasksets)]
    for where, ts in [*training, *evals]:
        if ts.storage_type not in ("file", "sql"):
            issues.append(ConfigIssue(f"{where}.storage_type", f"a taskset is read from a file, a folder or the hub "
                                                               f"(file) or from a database table (sql), not a "
                                                               f"{ts.storage_type}"))
        elif ts.storage_type == "sql" and ts.path and not is_database_url(ts.path):
            issues.append(ConfigIssue(f"{where}.path", f"storage_type sql reads the tasks from a database: give a "
                                                       f"SQLAlchemy URL (sqlite:///FILE, postgresql://USER@HOST/DB, "
                                                       f"...), got {ts.path!r}"))
    for where, ts in training:
        if ts.storage_type != "sql":
            continue
        if len(training) > 1:
            issues.append(ConfigIssue(f"{where}.storage_type", "several tasksets are mixed from files only (Trinity's "
                                                               "TasksetScheduler reads no database): train on a SQL "
                                                               "taskset alone, or export it to a file"))
        for field in ("task_selector", "data_selector"):
            sel = getattr(ts, field, None)
            if sel is None or "selector_type" not in sel.model_fields_set or sel.selector_type == "sequential":
                continue
            issues.append(ConfigIssue(f"{where}.{field}.selector_type", (
                "a SQL taskset is read in id order, a batch at a time, as Trinity reads it (its selectors read "
                "files only): drop the selector, or export the table to a file")))
            break


def _endpoint(path: str, ext: Any, issues: list[ConfigIssue], warnings: list[str]) -> None:
    if not ext.model_name:
        issues.append(ConfigIssue(f"{path}.model_name", "is required: the model name the endpoint serves"))
    if not ext.base_url_env:
        issues.append(ConfigIssue(f"{path}.base_url_env", "is required: the environment variable that holds "
                                                          "the endpoint's address"))
    elif not os.environ.get(ext.base_url_env):
        warnings.append(f"{path}.base_url_env: {ext.base_url_env} is not set here; `rft run` needs it set to the "
                        "endpoint's address where the job runs")


def _external_models(cfg: JobConfig, issues: list[ConfigIssue], warnings: list[str]) -> None:
    ext = cfg.model.external_model
    if ext.enable:
        if cfg.mode != "bench":
            issues.append(ConfigIssue("model.external_model.enable", (
                f"an external model stands in for the policy only in mode bench, as in Trinity (mode is "
                f"{cfg.mode!r}): it cannot be trained; for a judge, use an auxiliary model with engine_type "
                "external")))
        _endpoint("model.external_model", ext, issues, warnings)
    for i, aux in enumerate(cfg.explorer.auxiliary_models):
        if aux.engine_type == "external":
            _endpoint(f"explorer.auxiliary_models[{i}].external_model_config", aux.external_model_config, issues,
                      warnings)


def check_data_features(cfg: JobConfig, warnings: list[str]) -> list[ConfigIssue]:
    """Problems of a Tinker job's data pipelines, data selectors and external models (warnings appended)."""
    issues: list[ConfigIssue] = []
    _pipelines(cfg, issues, warnings)
    _tasksets(cfg, issues)
    _selectors(cfg, issues, warnings)
    _external_models(cfg, issues, warnings)
    return issues
