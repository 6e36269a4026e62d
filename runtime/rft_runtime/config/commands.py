"""`rft validate`, `rft config show` and `rft config schema`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from rft_runtime.config.errors import ConfigError
from rft_runtime.config.loader import load_config
from rft_runtime.config.models import JobConfig, StorageConfig

EXIT_INVALID = 2


def _paths(args: Any) -> list[str]:
    value = args.config
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _load(args: Any) -> JobConfig | None:
    try:
        return load_config(_paths(args), partial=bool(getattr(args, "partial", False)))
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return None


def _count_local_rows(store: StorageConfig) -> int | None:
    """Rows in a local taskset, counted cheaply (None for hub datasets or unknown formats)."""
    if not store.path:
        return None
    path = Path(store.path).expanduser()
    if not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    split_files = [p for p in files if store.split in p.stem]
    files = split_files or files
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
                import csv

                with f.open(newline="", encoding="utf-8") as fh:
                    total += max(sum(1 for _ in csv.reader(fh)) - 1, 0)
            elif suffix == ".parquet":
                import pyarrow.parquet as pq

                total += pq.ParquetFile(f).metadata.num_rows
            else:
                continue
        except (OSError, ValueError, ImportError):
            return None
    return total or None


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
        else:
            backend = f"verl ({stage.cluster.node_num} node(s) x {stage.cluster.gpu_per_node} GPU)"
        rows.append((f"{prefix}backend", backend))
        rows.append((f"{prefix}algorithm", a.algorithm_type))
        rows.append((f"{prefix}base model", str(stage.model.tinker_base_model)))
        b = stage.buffer
        if stage.mode == "train":
            store = b.trainer_input.experience_buffer
            rows.append((f"{prefix}batch", f"{stage.train_batch_size} examples per step"))
            n = _count_local_rows(store)
            per_epoch = n // stage.train_batch_size if n else None
        else:
            store = b.explorer_input.taskset
            rows.append((f"{prefix}batch", f"{b.batch_size} tasks x {a.repeat_times} rollouts"))
            n = _count_local_rows(store)
            per_epoch = n // b.batch_size if n else None
        if per_epoch is not None:
            steps = f"{per_epoch} per epoch ({n} rows), {b.total_epochs} epoch(s)"
        else:
            steps = f"unknown until the dataset is loaded ({store.path}), {b.total_epochs} epoch(s)"
        if b.total_steps or stage.trainer.total_steps:
            steps += f", capped at {b.total_steps or stage.trainer.total_steps}"
        rows.append((f"{prefix}steps", steps))
    rows.append(("job directory", str(cfg.job_dir)))
    return rows


def validate_main(args: Any) -> int:
    """Check a config; print a summary (exit 0) or every problem (exit 2)."""
    cfg = _load(args)
    if cfg is None:
        return EXIT_INVALID
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
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
