"""`rft run --config FILE`: the drop-in for `trinity run --config`, on the Tinker backend."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Any

import yaml

from rft_runtime.algorithms import AlgorithmError
from rft_runtime.backends.errors import BackendError
from rft_runtime.buffers import StorageError
from rft_runtime.config import ConfigError, load_config, read_layers
from rft_runtime.data import DataError
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.job import run_job
from rft_runtime.workflows import WorkflowError

DEFAULT_METRICS_PORT = 9400


def metrics_port_from_args(args: Any) -> int | None:
    """The /metrics port the CLI asked for (None with --no-metrics; 9400 when not given)."""
    if getattr(args, "no_metrics", False):
        return None
    port = getattr(args, "metrics_port", None)
    return DEFAULT_METRICS_PORT if port is None else port


def setup_logging(level: str | None) -> None:
    """One format for the runtime's log lines; quiet the SDK's and HTTP client's chatter."""
    logging.basicConfig(
        level=getattr(logging, (level or "INFO").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # these libraries put a handler of their own on their root logger when imported; propagating to ours as
    # well printed every message (a download retry, say) twice
    for own_handler in ("huggingface_hub", "datasets"):
        logging.getLogger(own_handler).propagate = False
    # the SDK warns on every routine "try again" poll of a busy server; real failures reach us as errors
    logging.getLogger("tinker").setLevel(logging.ERROR)


def _hand_to_trinity(config: Any, cfg: Any) -> int:
    """veRL jobs run Trinity-RFT itself (on the GPUs of the pod); this process becomes `trinity run`."""
    paths = list(config) if isinstance(config, (list, tuple)) else [config]
    trinity = shutil.which("trinity")
    if trinity is None:
        print(
            "rft run: this config trains with veRL (model.tinker.enable is false), which runs Trinity-RFT on "
            "GPUs, and `trinity` is not installed here: use an image with trinity-rft installed (spec.image of "
            "the RFTJob), or set model.tinker.enable: true to train through Tinker without GPUs",
            file=sys.stderr,
        )
        return 2
    target = str(paths[0])
    if len(paths) > 1:
        # trinity takes one file: the overlays, merged as `rft validate` merged them, go in the job directory
        cfg.job_dir.mkdir(parents=True, exist_ok=True)
        merged = cfg.job_dir / "rft-merged-config.yaml"
        merged.write_text(yaml.safe_dump(read_layers(paths), sort_keys=False))
        target = str(merged)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(trinity, [trinity, "run", "--config", target])
    return 0  # not reached: execv replaces this process


def run_main(args: Any) -> int:
    """Load the config, run every stage, and say where the results are; exit 1 on a job error."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"rft run: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.logging_level)
    for warning in cfg.warnings:
        logging.getLogger("rft.config").warning("%s", warning)
    if cfg.backend != "tinker":
        return _hand_to_trinity(args.config, cfg)
    try:
        result = run_job(cfg, metrics_port=metrics_port_from_args(args),
                         progress=not getattr(args, "no_progress", False))
    except (BackendError, RunError, DataError, WorkflowError, AlgorithmError, StorageError) as exc:
        print(f"rft run: {exc}", file=sys.stderr)
        return 1
    if result.summary:
        print(result.summary)
        return 0
    if result.already_finished:
        print(f"done already: an earlier run finished all {result.steps} steps in {result.job_dir}; nothing "
              "to train (set continue_from_checkpoint: false, or another name, to train again)")
    print(f"done: {result.steps} steps; metrics in {result.job_dir / 'metrics.jsonl'}, "
          f"plot in {result.job_dir / 'curves.png'}, checkpoints listed in {result.job_dir / 'checkpoint.json'}")
    return 0
