"""Benchmark of the RFT loop: wall time per step with sync_offset 0 vs 1, and where the time goes; and what
a client-side loss (forward_backward_custom) costs against Tinker's built-in one.

    python bench/runtime.py [--steps 12] [--batch 4] [--repeat 8] [--max-tokens 32] [--only offset|loss]

Runs the same small grpo job twice on a tiny local model (its own local engine on loopback), once strictly
on-policy (sync_offset 0) and once with rollout of step s+1 overlapping training of step s (offset 1).
Prints medians (the first step, which warms caches, is left out) of the step time, the sampling and
training time inside a step, and the overlap ratio step / max(sampling, training): 1.0 means the two
sides fully overlap, (sampling + training) / max(...) means they run one after the other.

The loss section trains the same batch (batch x repeat datums of prompt + max-tokens tokens) with the same
maths two ways: Tinker's built-in `ppo` loss in one forward_backward, and the PPO-clip loss of
rft_runtime.algorithms.terms through forward_backward_custom (a forward pass, the loss and its gradient
on this machine, then a backward pass), each followed by optim_step. It prints the median seconds per
step of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROWS = [{"question": f"{a}+{b}=?", "answer": f"#### {a + b}"} for a in range(10) for b in range(10)]


def job(root: Path, model_dir: Path, base_url: str, offset: int, args: argparse.Namespace) -> dict:
    """The benchmark job (identical for both offsets but its name)."""
    data = root / "tasks.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return {
        "mode": "both", "project": "bench", "group": "runtime", "name": f"offset{offset}",
        "checkpoint_root_dir": str(root / "ckpt"), "continue_from_checkpoint": False,
        "algorithm": {"algorithm_type": "grpo", "repeat_times": args.repeat, "optimizer": {"lr": 1e-4}},
        "model": {"model_path": str(model_dir), "max_prompt_tokens": 1024, "max_response_tokens": args.max_tokens,
                  "tinker": {"enable": True, "base_url": base_url, "rank": 8, "seed": 0}},
        "cluster": {"gpu_per_node": 0},
        "buffer": {"batch_size": args.batch, "total_steps": args.steps, "explorer_input": {
            "taskset": {"path": str(data), "format": {"prompt_key": "question", "response_key": "answer"}},
            "default_workflow_type": "math_workflow"}},
        "explorer": {"runner_per_model": 64, "rollout_model": {"engine_num": 1, "seed": 0}},
        "trainer": {"save_interval": 0},
        "monitor": {"monitor_type": "none"},
        "synchronizer": {"sync_method": "checkpoint", "sync_interval": 1, "sync_offset": offset,
                         "sync_timeout": 600},
    }


def loss_cost(base_url: str, model_dir: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Median seconds per train step with the built-in ppo loss and with the same loss client-side."""
    import random

    import tinker

    from rft_runtime.algorithms import LossPlan, terms
    from rft_runtime.algorithms.losses import POLICY_LOSSES
    from rft_runtime.backends.tinker_client import LOCAL_API_KEY
    from rft_runtime.loop import datums as D

    rng = random.Random(0)
    plan = LossPlan("grpo", "grpo", {}, "ppo", dict(POLICY_LOSSES["ppo"]), "token-mean",
                    builtin=("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}))
    custom_plan = LossPlan("grpo", "grpo", {}, "ppo", dict(POLICY_LOSSES["ppo"]), "token-mean")
    n = args.batch * args.repeat
    rows = []
    for _ in range(n):
        prompt = [rng.randrange(3, 200) for _ in range(24)]
        resp = [rng.randrange(3, 200) for _ in range(args.max_tokens)]
        rows.append((prompt, resp, [-rng.random() * 3 for _ in resp], rng.choice((-1.0, 1.0))))
    scale = 1.0 / (n * args.max_tokens)
    mask = [1] * args.max_tokens
    builtin_data = [D.loss_datum(plan, p, r, lp, a, scale, mask) for p, r, lp, a in rows]
    custom_data = [D.loss_datum(custom_plan, p, r, lp, a, scale, mask) for p, r, lp, a in rows]
    seqs = [terms.make_seq(len(p) - 1, lp, a, mask, scale) for p, r, lp, a in rows]
    service = tinker.ServiceClient(base_url=base_url, api_key=LOCAL_API_KEY)
    client = service.create_lora_training_client(base_model=str(model_dir.resolve()), rank=8, seed=0).result()
    adam = tinker.AdamParams(learning_rate=1e-5)

    def step(custom: bool) -> float:
        t0 = time.monotonic()
        if custom:
            fb = client.forward_backward_custom(custom_data, terms.step_loss(custom_plan, seqs))
        else:
            fb = client.forward_backward(builtin_data, "ppo", loss_fn_config=plan.builtin[1])
        opt = client.optim_step(adam)
        fb.result()
        opt.result()
        return time.monotonic() - t0

    step(False), step(True)  # warm both paths
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.steps):  # interleaved, so load on the machine hits both alike
        for custom in (False, True):
            times[custom].append(step(custom))
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> int:
    """Run both offsets and print the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--workdir", default=None, help="keep the model and jobs here (default: a temp dir)")
    p.add_argument("--only", choices=("offset", "loss"), default=None, help="run one section only")
    args = p.parse_args()

    from rft_runtime.backends.tinker_client import LOCAL_API_KEY
    from rft_runtime.config import load_config_dict
    from rft_runtime.engine.launcher import LocalEngine
    from rft_runtime.engine.model_factory import make_model
    from rft_runtime.loop.job import run_job
    from rft_runtime.loop.run import setup_logging
    from rft_runtime.monitor import read_metrics

    setup_logging("WARNING")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="rft-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / "model"
    if not (model_dir / "config.json").exists():
        make_model(model_dir, preset="tiny", seed=0)
    rows = {}
    with LocalEngine(model_dir, state_dir=root / "engine-state", port=0, api_key=LOCAL_API_KEY).start(
            timeout=120) as engine:
        if args.only != "offset":
            loss_rows = loss_cost(engine.base_url, model_dir, args)
        for offset in ((0, 1) if args.only != "loss" else ()):
            cfg = load_config_dict(job(root, model_dir, engine.base_url, offset, args))
            t0 = time.monotonic()
            result = run_job(cfg, metrics_port=None, progress=False, api_key=LOCAL_API_KEY)
            wall = time.monotonic() - t0
            recs = [r for r in read_metrics(result.job_dir) if r["step"] > 1]
            med = {k: statistics.median(r[k] for r in recs)
                   for k in ("time/step", "time/sampling", "time/update_actor", "time/sync")}
            med["overlap"] = statistics.median(
                r["time/step"] / max(r["time/sampling"], r["time/update_actor"] + r["time/sync"])
                for r in recs)
            med["lag"] = statistics.median(r["weight_version_lag"] for r in recs)
            # throughput: mean wall time per step (the median hides the occasional slow step)
            med["mean_step"] = statistics.fmean(r["time/step"] for r in recs)
            med["wall"] = wall
            rows[offset] = med

    if args.only != "offset":
        builtin, custom = loss_rows
        print(f"loss: {args.batch * args.repeat} datums of <= {args.max_tokens} response tokens, "
              f"median of {args.steps} train steps (forward_backward + optim_step)")
        print(f"  built-in ppo (one pass)        {builtin:8.3f} s/step")
        print(f"  forward_backward_custom (two)  {custom:8.3f} s/step")
        print(f"  custom / built-in: {custom / builtin:.2f}")
    if args.only == "loss":
        return 0
    print(f"grpo, tiny model, {args.steps} steps of {args.batch} tasks x {args.repeat} samples, "
          f"<= {args.max_tokens} tokens; medians over steps 2..{args.steps}")
    print(f"{'sync_offset':>11} {'step_s':>8} {'mean_step_s':>11} {'sampling_s':>10} {'training_s':>10} "
          f"{'sync_s':>7} {'overlap':>8} {'lag':>4} {'job_wall_s':>10}")
    for offset, m in rows.items():
        print(f"{offset:>11} {m['time/step']:8.3f} {m['mean_step']:11.3f} {m['time/sampling']:10.3f} "
              f"{m['time/update_actor']:10.3f} {m['time/sync']:7.3f} {m['overlap']:8.2f} {m['lag']:4.0f} "
              f"{m['wall']:10.1f}")
    print(f"offset1 / offset0: median step {rows[1]['time/step'] / rows[0]['time/step']:.2f}, "
          f"mean step {rows[1]['mean_step'] / rows[0]['mean_step']:.2f}, job wall {rows[1]['wall'] / rows[0]['wall']:.2f}")
    print("overlap ratio = step / max(sampling, training + sync): 1.0 = the two sides fully overlap; "
          "(sampling + training) / max(...) = one after the other")
    return 0


if __name__ == "__main__":
    sys.exit(main())
