"""`rft validate`, `rft config show` and `rft config schema`."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from rft_runtime.config import loop_rules
from rft_runtime.config.errors import ConfigError
from rft_runtime.config.loader import load_config
from rft_runtime.config.local_model import model_checks
from rft_runtime.config.models import JobConfig, StorageConfig
from rft_runtime.config.workflow_checks import load_named
from rft_runtime.data.errors import DataError
from rft_runtime.data.tasksets import builder_for, check_rows, training_tasksets
from rft_runtime.workflows.placement import runners_where

EXIT_INVALID = 2


def _paths(args: Any) -> list[str]:
    value = args.config
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _load(args: Any) -> JobConfig | None:
    try:
        # without --partial a file that names no model and no data (an overlay) is checked as a fragment
        return load_config(_paths(args), partial=True if getattr(args, "partial", False) else None)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return None


def _local_files(store: StorageConfig) -> list[Path] | None:
    """The data files of a local taskset (those of its split when named so); None for hub datasets."""
    if not store.path:
        return None
    path = Path(store.path).expanduser()
    if not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [p for p in files if store.split in p.stem] or files


def _count_local_rows(store: StorageConfig) -> int | None:
    """Rows in a local taskset, counted cheaply (None for hub datasets or unknown formats)."""
    files = _local_files(store)
    if not files:
        return None
    total = 0
    for f in files:
        suffix = f.suffix.lower()
        try:
            if suffix == ".jsonl":
                with f.open("rb") as fh:
                    total += sum(1 for line in fh if line.strip())
            elif suffix == ".json":
                data = json.loads(f.read_text(encoding="utf-8"))
                if not isinstance(data, list):
                    return None
                total += len(data)
            elif suffix == ".csv":
                with f.open(newline="", encoding="utf-8") as fh:
                    total += max(sum(1 for _ in csv.reader(fh)) - 1, 0)
            elif suffix == ".parquet":
                # pyarrow takes ~0.1 s to import (and may be absent): only a parquet taskset's count needs it
                import pyarrow.parquet as pq

                total += pq.ParquetFile(f).metadata.num_rows
            else:
                continue
        except (OSError, ValueError, ImportError):
            return None
    return total or None


def _first_rows(store: StorageConfig, n: int = 5) -> list[dict[str, Any]] | None:
    """The first rows of a local JSON-lines, JSON or CSV taskset (None when they cannot be read cheaply)."""
    files = _local_files(store)
    if not files:
        return None
    f = files[0]
    suffix = f.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            with f.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        rows.append(json.loads(line))
                    if len(rows) == n:
                        break
        elif suffix == ".json":
            data = json.loads(f.read_text(encoding="utf-8"))
            rows = data[:n] if isinstance(data, list) else []
        elif suffix == ".csv":
            with f.open(newline="", encoding="utf-8") as fh:
                rows = [row for _, row in zip(range(n), csv.DictReader(fh), strict=False)]
        else:
            return None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return [r for r in rows if isinstance(r, dict)] or None


def _stores(cfg: JobConfig) -> list[tuple[str, StorageConfig, bool]]:
    """(config key, dataset, whether the response column is needed) of each dataset the job reads."""
    inputs = cfg.buffer.explorer_input
    if cfg.mode == "train":
        return [("buffer.trainer_input.experience_buffer", cfg.buffer.trainer_input.experience_buffer, True)]
    out: list[tuple[str, StorageConfig, bool]] = []
    if cfg.mode in ("both", "explore"):
        out += [(where, ts, False) for where, ts in training_tasksets(cfg)]
    out += [(f"buffer.explorer_input.eval_tasksets[{i}]", ts, False) for i, ts in enumerate(inputs.eval_tasksets)]
    return out


def data_checks(cfg: JobConfig) -> tuple[list[str], list[str]]:
    """(problems, warnings) found cheaply in the local datasets: missing files, rows without the columns.

    A path that does not exist here may exist where the job runs (a pod's volume), so it is a warning; a
    local file whose first rows lack the prompt column fails `rft run` in its first second on Tinker.
    """
    problems: list[str] = []
    warnings: list[str] = []
    for stage in cfg.stage_configs():
        prefix = f"stages[{stage.stage_index}] ({stage.stage_name}): " if stage.stage_name else ""
        for key, store, needs_response in _stores(stage):
            if not store.path or (store.storage_type != "file"):
                continue
            local = Path(store.path).expanduser()
            if not local.exists():
                if builder_for(local) is not None or str(store.path).startswith((".", "/", "~")):
                    warnings.append(f"{prefix}{key}.path: {store.path} does not exist here "
                                    f"({local.absolute()}); `rft run` needs it where the job runs")
                continue
            rows = _first_rows(store)
            if not rows:
                continue
            try:
                check_rows(rows, store, source=str(store.path), require_response=needs_response)
            except DataError as exc:
                where = f"{prefix}{key}.format: {exc}"
                (problems if stage.backend == "tinker" else warnings).append(where)
    return list(dict.fromkeys(problems)), list(dict.fromkeys(warnings))


def summary(cfg: JobConfig) -> list[tuple[str, str]]:
    """The lines `rft validate` prints for a valid config."""
    rows: list[tuple[str, str]] = []
    configs = cfg.stage_configs()
    for stage in configs:
        prefix = f"[{stage.stage_name}] " if stage.stage_name else ""
        a = stage.algorithm
        rows.append((f"{prefix}mode", stage.mode))
        backend = stage.backend
        if backend == "tinker":
            url = stage.model.tinker.base_url
            where = "Tinker service" if url is None else ("local engine" if url == "local" else url)
            backend = f"tinker ({where}, LoRA rank {stage.model.tinker.rank})"
            if stage.mode != "train":
                rows.append((f"{prefix}workflow runners", runners_where(stage)))
        else:
            backend = f"verl ({stage.cluster.node_num} node(s) x {stage.cluster.gpu_per_node} GPU)"
        rows.append((f"{prefix}backend", backend))
        rows.append((f"{prefix}algorithm", a.algorithm_type))
        rows.append((f"{prefix}base model", str(stage.model.tinker_base_model)))
        b = stage.buffer
        loop_rows = loop_rules.summary_rows(stage, prefix)
        if loop_rows is not None and stage.mode in ("train", "bench", "serve"):
            rows.extend(loop_rows)
            continue
        if stage.mode == "train":
            store = b.trainer_input.experience_buffer
            rows.append((f"{prefix}batch", f"{stage.train_batch_size} examples per step"))
            n = _count_local_rows(store)
            per_epoch = n // stage.train_batch_size if n else None
        else:
            tasksets = [ts for _, ts in training_tasksets(stage)]
            store = tasksets[0]
            rows.extend(loop_rows or [(f"{prefix}batch", f"{b.batch_size} tasks x {a.repeat_times} rollouts")])
            counts = [_count_local_rows(ts) for ts in tasksets]
            n = sum(counts) if all(counts) else None  # type: ignore[arg-type]
            per_epoch = n // b.batch_size if n else None
            if len(tasksets) > 1:
                rows.append((f"{prefix}tasksets", f"{len(tasksets)} mixed in every step, as Trinity mixes them"))
        limits = [s for s in (b.total_steps, store.total_steps, stage.trainer.total_steps) if s]
        cap = min(limits) if limits else None
        if cap and per_epoch:
            # as the runtime: total_steps wins over total_epochs, going on into more passes if it must
            steps = f"runs {cap} steps ({cap / per_epoch:.3g} passes over the data: {per_epoch} per epoch, {n} rows)"
        elif cap:
            steps = f"runs {cap} steps (rows unknown until the dataset is loaded: {store.path})"
        elif per_epoch is not None:
            steps = f"{per_epoch} per epoch ({n} rows), {b.total_epochs} epoch(s)"
        else:
            steps = f"unknown until the dataset is loaded ({store.path}), {b.total_epochs} epoch(s)"
        rows.append((f"{prefix}steps", steps))
    rows.append(("job directory", str(cfg.job_dir)))
    return rows


def validate_main(args: Any) -> int:
    """Check a config; print a summary (exit 0) or every problem (exit 2)."""
    cfg = _load(args)
    if cfg is None:
        return EXIT_INVALID
    problems, data_warnings = data_checks(cfg) if not cfg.partial else ([], [])
    if not cfg.partial:
        model_problems, model_warnings = model_checks(cfg)
        loaded, load_warnings = load_named(cfg, bool(getattr(args, "plugin_dir", None) or
                                                     os.environ.get("TRINITY_PLUGIN_DIRS")))
        problems = [*model_problems, *problems, *loaded]
        data_warnings = [*model_warnings, *data_warnings, *load_warnings]
    for warning in [*cfg.warnings, *data_warnings]:
        print(f"warning: {warning}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {', '.join(_paths(args))}:",
              file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    if cfg.partial:
        print(f"{', '.join(_paths(args))}: valid as a fragment (only the keys it sets were checked; "
              "overlay it on a job: -c JOB.yaml -c FRAGMENT.yaml)")
        return 0
    print(f"{', '.join(_paths(args))}: valid")
    rows = summary(cfg)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    return 0


def show_main(args: Any) -> int:
    """Print the resolved config as YAML, secrets redacted."""
    cfg = _load(args)
    if cfg is None:
        return EXIT_INVALID
    yaml.safe_dump(cfg.resolved_dict(), sys.stdout, sort_keys=False, allow_unicode=True, width=120)
    return 0


def schema_main(args: Any) -> int:
    """Print the JSON schema of the job config."""
    json.dump(JobConfig.model_json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
