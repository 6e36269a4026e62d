"""Shared pieces of the `rft run` tests: a tiny job config, a GSM8K-style taskset, running the CLI.

(A module of helpers, named so that it sits with the tests that own it; it holds no tests.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A box holds 6 pens. How many pens are in 2 boxes?",
     "answer": "2 * 6 = <<2*6=12>>12\n#### 12"},
    {"question": "Sara had 10 stickers and gave away 3. How many are left?",
     "answer": "10 - 3 = <<10-3=7>>7\n#### 7"},
    {"question": "What is 5 plus 5?", "answer": "5 + 5 = 10\n#### 10"},
    {"question": "What is 9 minus 4?", "answer": "9 - 4 = 5\n#### 5"},
    {"question": "What is 2 times 3?", "answer": "2 * 3 = 6\n#### 6"},
    {"question": "What is 8 plus 1?", "answer": "8 + 1 = 9\n#### 9"},
    {"question": "What is 1,000 plus 200?", "answer": "1000 + 200 = 1200\n#### 1,200"},
]


def write_gsm8k(path: Path, copies: int = 4) -> Path:
    """A local GSM8K-format file (question / answer ending in `#### N`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for _ in range(copies) for r in GSM8K_ROWS))
    return path


def write_sft(path: Path, n: int = 48) -> Path:
    """A prompt/response dataset for mode train with sft."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"{i % 10}+1=?", "response": f"<answer>{i % 10 + 1}</answer>"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def job_dict(root: Path, model_dir: Path, base_url: str, *, steps: int = 4, batch: int = 2, repeat: int = 4,
             offset: int = 0, save_interval: int = 0, name: str = "job", max_tokens: int = 12,
             **overrides: Any) -> dict[str, Any]:
    """A tiny mode-both grpo job on the GSM8K-format file, against the server at base_url."""
    data = write_gsm8k(root / "data" / "gsm8k.jsonl")
    cfg: dict[str, Any] = {
        "mode": "both",
        "project": "tests",
        "group": "run",
        "name": name,
        "checkpoint_root_dir": str(root / "ckpt"),
        "algorithm": {"algorithm_type": "grpo", "repeat_times": repeat, "optimizer": {"lr": 1e-3}},
        "model": {
            "model_path": str(model_dir),
            "max_prompt_tokens": 512,
            "max_response_tokens": max_tokens,
            "tinker": {"enable": True, "base_url": base_url, "rank": 4, "seed": 0},
        },
        "cluster": {"gpu_per_node": 0},
        "buffer": {
            "batch_size": batch,
            "total_steps": steps,
            "explorer_input": {
                "taskset": {"name": "gsm8k", "path": str(data),
                            "format": {"prompt_key": "question", "response_key": "answer"}},
                "default_workflow_type": "math_workflow",
            },
        },
        "explorer": {"runner_per_model": 8, "rollout_model": {"engine_num": 1, "seed": 1}},
        "trainer": {"save_interval": save_interval, "grad_clip": 1.0},
        "monitor": {"monitor_type": "none"},
        "synchronizer": {"sync_method": "checkpoint", "sync_interval": 1, "sync_offset": offset,
                         "sync_timeout": 120},
    }
    for dotted, value in overrides.items():
        node = cfg
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    """The job as a YAML file, as a user would write it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def job_dir(cfg: dict[str, Any]) -> Path:
    """Where the job keeps metrics and checkpoints."""
    return Path(cfg["checkpoint_root_dir"]) / cfg["project"] / cfg["group"] / cfg["name"]


def metrics(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's metrics.jsonl records."""
    path = job_dir(cfg) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child `rft run`, without any Tinker key of the developer's."""
    env = {k: v for k, v in os.environ.items() if k not in ("TINKER_API_KEY", "TRINITY_API_KEY")}
    env["TINKER_TELEMETRY"] = "0"
    env.update(extra)
    return env


def rft(*args: str) -> list[str]:
    """The `rft` command line run with this interpreter."""
    return [sys.executable, "-m", "rft_runtime.cli", *args]


def run_cli(config: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 180,
            ) -> subprocess.CompletedProcess[str]:
    """`rft run --config FILE --no-progress --no-metrics` to the end."""
    return subprocess.run(rft("run", "--config", str(config), "--no-progress", "--no-metrics", *extra),
                          capture_output=True, text=True, env=env or clean_env(), timeout=timeout)
