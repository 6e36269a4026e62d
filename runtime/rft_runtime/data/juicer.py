"""Data-Juicer in this process: the `data_juicer` experience operator and the task pipeline.

Trinity-RFT talks to a Data-Juicer server it starts (service.data_juicer); here the same operators run in
the job's own process through the `data_juicer` package (py-data-juicer), which is optional: without it,
`rft validate` warns and `rft run` stops before the first step, naming what to install.

Facts kept from Trinity 0.6.0: an operator list is `[{op_name: {arg: value}}]` (or a Data-Juicer config
file), experiences go in as rows named after the Experience fields (so an operator reads `response_text`
through its `text_key`), a filter drops rows, and every stat an operator computed lands in the
experience's info (where reward_shaping_mapper finds it). The task pipeline reads the input files, runs
the operators with `target_fields` as the text keys, scores each task (quality and difficulty from the
stats, then a weighted priority), keeps the `top_k` of highest priority and writes `output.jsonl` into
the taskset's path.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from rft_runtime.data.errors import DataError
from rft_runtime.data.tasksets import builder_for

log = logging.getLogger(__name__)

INSTALL = "pip install 'rft-platform[datajuicer]' (the py-data-juicer package)"
_STATS = "__dj__stats__"
_INDEX = "__rft_index__"
_OPERATOR_ARGS = {"operators", "config_path", "np", "service_config"}
# Trinity's server-side defaults for the task pipeline's priority
DEFAULT_PRIORITY_WEIGHTS = {"difficulty": -0.7, "diversity": 0.8, "usage_frequency": -0.5, "quality": 1.0}
# stats that make up each score, whether higher is better, and their range (None: min-max over the data)
_DIMENSIONS = {
    "quality_score": {
        "alnum_ratio": (True, (0.0, 1.0)), "char_rep_ratio": (False, (0.0, 1.0)),
        "flagged_words_ratio": (False, (0.0, 1.0)), "special_char_ratio": (False, (0.0, 1.0)),
        "stopwords_ratio": (True, (0.0, 1.0)), "word_rep_ratio": (False, (0.0, 1.0)),
        "llm_quality_score": (True, (0.0, 1.0)),
    },
    "difficulty_score": {
        "perplexity": (True, None), "lang_score": (False, (0.0, 1.0)),
        "llm_difficulty_score": (True, (0.0, 1.0)),
    },
}


def available() -> bool:
    """True when the data_juicer package can be imported here."""
    return importlib.util.find_spec("data_juicer") is not None


def missing_message(where: str) -> str:
    """What to tell a user whose config needs Data-Juicer on a machine without it."""
    return f"{where} runs Data-Juicer, and py-data-juicer is not installed here: {INSTALL}"


def args_problem(args: dict[str, Any]) -> str | None:
    """What is wrong with a data_juicer operator's args (None: nothing)."""
    unknown = sorted(set(args) - _OPERATOR_ARGS)
    if unknown:
        return f"data_juicer does not take {', '.join(unknown)}; it takes operators, config_path and np"
    if not args.get("operators") and not args.get("config_path"):
        return "data_juicer needs operators (a list of {name: {args}}) or config_path (a Data-Juicer config file)"
    return None


def _dj_config(operators: list[Any] | None, config_path: str | None, np: int, work_dir: Path,
               text_keys: list[str] | None = None) -> Any:
    # Data-Juicer is an optional extra (with jsonargparse) and takes seconds to import: only a job that runs it
    from data_juicer.config import get_init_configs, prepare_side_configs
    from jsonargparse import Namespace

    work_dir.mkdir(parents=True, exist_ok=True)
    if config_path:
        return get_init_configs(prepare_side_configs(config_path))
    extra: dict[str, Any] = {"text_keys": text_keys} if text_keys else {}
    return get_init_configs(Namespace(process=list(operators or []), np=int(np), work_dir=str(work_dir), **extra))


def _run_ops(rows: list[dict[str, Any]], dj_cfg: Any) -> list[dict[str, Any]]:
    # optional and heavy (see _dj_config); so is datasets (~1 s), which the validator never needs
    from data_juicer.core.data import NestedDataset
    from data_juicer.ops import load_ops
    from datasets import Dataset

    if not rows:
        return []
    ops = load_ops(dj_cfg.process)
    return NestedDataset(Dataset.from_list(rows)).process(ops).to_list()


class DataJuicerOperator:
    """The `data_juicer` experience operator: Data-Juicer operators over each step's rollouts."""

    def __init__(self, operators: list[Any] | None = None, config_path: str | None = None, np: int = 4,
                 service_config: Any = None, work_dir: str | os.PathLike[str] | None = None):
        if not available():
            raise DataError(missing_message("the data_juicer experience operator"))
        # service_config: Trinity's Data-Juicer server; the operators run in this process instead
        self.cfg = _dj_config(operators, config_path, np, Path(work_dir or Path.cwd() / "data_juicer"))
        self.decode: Any = None  # the pipeline sets the tokenizer's decode, for prompt_text

    def process(self, groups: list[list[Any]]) -> tuple[list[list[Any]], dict[str, float]]:
        """Rollouts in, the rows the operators kept out; their stats go into each rollout's info."""
        flat = [r for g in groups for r in g]
        rows = [{_INDEX: i, "prompt_text": self.decode(r.prompt_ids) if self.decode else "",
                 "response_text": r.text, "reward": float(r.reward)} for i, r in enumerate(flat)]
        out = _run_ops(rows, self.cfg)
        kept: set[int] = set()
        for row in out:
            r = flat[int(row[_INDEX])]
            kept.add(int(row[_INDEX]))
            if row.get("reward") is not None:
                r.reward = float(row["reward"])
            for key, value in (row.get(_STATS) or {}).items():
                r.info[key] = value
        kept_ids = {id(flat[i]) for i in kept}
        new_groups = [[r for r in g if id(r) in kept_ids] for g in groups]
        new_groups = [g for g in new_groups if g]
        return new_groups, {"filtered_count": float(len(flat) - len(kept))}


# ---------------------------------------------------------------- the task pipeline


def _group_scores(rows: list[dict[str, Any]]) -> None:
    """quality_score and difficulty_score of each task from its stats, each stat normalised to [0, 1]."""
    if not rows or not any(_STATS in r for r in rows):
        return
    spans: dict[str, tuple[float, float]] = {}
    for name in {k for r in rows for k in (r.get(_STATS) or {})}:
        vals = [r[_STATS][name] for r in rows if isinstance((r.get(_STATS) or {}).get(name), (int, float))]
        if vals:
            spans[name] = (min(vals), max(vals))
    for row in rows:
        stats = row.setdefault(_STATS, {})
        for score, parts in _DIMENSIONS.items():
            total, hits = 0.0, 0
            for key, (higher_better, span) in parts.items():
                if key not in stats:
                    continue
                low, high = span or spans[key]
                value = (stats[key] - low) / (high - low) if high != low else 0.0
                total += value if higher_better else 1.0 - value
                hits += 1
            stats[score] = total / hits if hits else 0.0
            row[score] = stats[score]


def _priority(row: dict[str, Any], weights: dict[str, float]) -> None:
    stats = row.get(_STATS)
    if "priority" in row or stats is None:
        return
    score = 0.0
    if "usage_frequency" in weights:
        score += weights["usage_frequency"] * stats.get("consumed_cnt", 0)
    if "quality" in weights:
        score += weights["quality"] * stats.get("quality_score", 0.5)
    if "difficulty" in weights:
        score += weights["difficulty"] * stats.get("difficulty_score", 0.5)
    row["priority"] = score


def _read_inputs(paths: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(f"data_processor.task_pipeline.inputs: {path} is not a file (the task pipeline reads "
                            "local task files)", path=str(path))
        builder = builder_for(p)
        if builder is None:
            raise DataError(f"data_processor.task_pipeline.inputs: cannot read {path}: not a jsonl, json, parquet "
                            "or csv file", path=str(path))
        from datasets import load_dataset  # ~1 s to import: only when the task pipeline runs

        rows += load_dataset(builder, data_files=[str(p)], split="train").to_list()
    return rows


def output_file(taskset_path: str) -> Path:
    """Where the task pipeline writes the taskset it makes."""
    return Path(taskset_path).expanduser() / "output.jsonl"


def run_task_pipeline(pipeline: Any, taskset_path: str, work_dir: Path) -> int:
    """Run data_processor.task_pipeline and write <taskset_path>/output.jsonl; returns the tasks written."""
    if not available():
        raise DataError(missing_message("data_processor.task_pipeline"))
    rows = _read_inputs(list(pipeline.inputs))
    operators = [{op.name: dict(op.args)} for op in pipeline.operators]
    dj_cfg = _dj_config(operators, pipeline.config_path, pipeline.num_process, work_dir,
                        text_keys=list(pipeline.target_fields) or None)
    rows = _run_ops(rows, dj_cfg)
    _group_scores(rows)
    weights = dict(pipeline.priority_weights) or DEFAULT_PRIORITY_WEIGHTS
    for row in rows:
        _priority(row, weights)
    if rows and all("priority" in r for r in rows):
        # highest priority first (a stable sort keeps the file order among equals), then the top_k
        rows.sort(key=lambda r: -float(r["priority"]))
        if pipeline.top_k >= 0:
            rows = rows[:pipeline.top_k]
    out = output_file(taskset_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    os.replace(tmp, out)
    log.info("task pipeline: %d tasks written to %s", len(rows), out)
    return len(rows)
