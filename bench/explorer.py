"""Benchmark of the explorer: rollout throughput with the workflow runners in this process versus as Ray
actors on a local two-node Ray cluster, for a CPU-heavy workflow and for a cheap one.

    python bench/explorer.py [--runners 1,2,4] [--batches 3] [--batch 8] [--repeat 2] [--burn-ms 50]

The workflow is a user plugin (shipped to the Ray nodes as a user's would be): one chat turn of 4 tokens
from a tiny random model on the local engine (its own process on loopback, through the tinker SDK), then a
reward that burns a fixed `--burn-ms` of CPU in Python. In process, runners are threads of one
interpreter, so a pure-Python reward runs on one core at a time (the GIL); Ray runners are processes, and
the cluster (ray.cluster_utils: a head and a worker node, each with half this machine's CPUs) spreads them.

Prints, for each runner count and each mode, the median rollouts/s over `--batches` explore steps (after
one warm-up step that also starts the Ray actors), its ratio to the same mode's one-runner figure and to
in-process with one runner, and the cores this process may use. Then the same with a reward that costs
nothing: the median seconds per rollout of each mode and Ray's overhead per rollout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PLUGIN = '''
import time

from trinity.common.workflows import WORKFLOWS, Workflow


@WORKFLOWS.register_module("bench_cpu_reward")
class BenchCpuReward(Workflow):
    """One short chat turn, then a reward that spends workflow_args["burn_ms"] of its thread's CPU time
    (thread_time: process_time would count the other runners' threads too and end early)."""

    def run(self):
        exps = self.model.chat([{"role": "user", "content": self.task.raw_task["question"]}], max_tokens=4)
        end = time.thread_time() + float(self.task.workflow_args.get("burn_ms", 0)) / 1000
        x = 0
        while time.thread_time() < end:
            x += 1
        for exp in exps:
            exp.reward = float(x % 2)
        return exps
'''


def config(root: Path, model_dir: Path, base_url: str, runners: int, burn_ms: float, args: argparse.Namespace):
    """The benchmark job's config (only the explorer side is exercised)."""
    from rft_runtime.config import load_config_dict

    data = root / "tasks.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(64)))
    return load_config_dict({
        "mode": "both", "project": "bench", "group": "explorer", "name": f"r{runners}",
        "checkpoint_root_dir": str(root / "ckpt"),
        "algorithm": {"algorithm_type": "grpo", "repeat_times": args.repeat},
        "model": {"model_path": str(model_dir), "max_prompt_tokens": 256, "max_response_tokens": 4,
                  "tinker": {"enable": True, "base_url": base_url, "rank": 4}},
        "buffer": {"batch_size": args.batch, "total_steps": 4, "explorer_input": {
            "taskset": {"path": str(data), "workflow_args": {"burn_ms": burn_ms},
                        "format": {"prompt_key": "question", "response_key": "answer"}},
            "default_workflow_type": "bench_cpu_reward"}},
        "explorer": {"runner_per_model": runners, "rollout_model": {"engine_num": 1, "seed": 0}},
        "monitor": {"monitor_type": "none"},
    })


def measure(cfg, batches: int, batch: int) -> tuple[list[float], float]:
    """Rollouts/s of `batches` explore steps after a warm-up one (which also starts any Ray runners), and the
    warm-up step's seconds."""
    from rft_runtime.backends.tinker_client import Connection
    from rft_runtime.data.tasksets import Task
    from rft_runtime.loop.explorer import Explorer
    from rft_runtime.loop.prompts import PromptEncoder

    conn = Connection(cfg, Path(tempfile.mkdtemp(prefix="bench-conn-"))).open()
    try:
        encoder = PromptEncoder(conn.tokenizer(), cfg.model)
        explorer = Explorer(cfg, encoder, conn=conn)
        sampler = conn.sampling_client(None, timeout=120)
        rates = []
        warmup = 0.0
        try:
            for step in range(batches + 1):
                tasks = [Task(index=(step * batch + i) % 64, row={"question": f"{i} + {i}?", "answer": str(2 * i)},
                              epoch=0) for i in range(batch)]
                t0 = time.perf_counter()
                out = explorer.explore(tasks, sampler, step + 1)
                dt = time.perf_counter() - t0
                assert out.failed_rollouts == 0 and len(out.rollouts) == batch * cfg.algorithm.repeat_times
                if step:
                    rates.append(len(out.rollouts) / dt)
                else:
                    warmup = dt
        finally:
            explorer.close()
        return rates, warmup
    finally:
        conn.close()


def main() -> int:
    """Run both modes for each runner count and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", default="1,2,4")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--burn-ms", type=float, default=50.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.pop("RAY_ADDRESS", None)

    from ray.cluster_utils import Cluster

    from rft_runtime.engine.launcher import LocalEngine
    from rft_runtime.engine.model_factory import make_model
    from rft_runtime.workflows import ray_runners
    from rft_runtime.workflows.plugins import load_plugins

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(prefix="bench-explorer-"))
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "bench_cpu_reward.py").write_text(PLUGIN)
    load_plugins([str(plugins)])
    model_dir = make_model(root / "tiny", preset="tiny", seed=0)
    engine = LocalEngine(model_dir, state_dir=root / "state", port=0, log_file=root / "engine.log").start(120)
    ray_tmp = tempfile.mkdtemp(prefix="rftbench-", dir="/tmp")
    half = max(1, cores // 2)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": half, "temp_dir": ray_tmp})
    cluster.add_node(num_cpus=max(1, cores - half))
    cluster.wait_for_nodes()
    results: dict[tuple[str, int, float], float] = {}
    warmups: dict[tuple[str, int, float], float] = {}
    session_s: list[float] = []
    try:
        runner_counts = [int(n) for n in args.runners.split(",")]
        plan = [(burn, n) for n in runner_counts for burn in (args.burn_ms,)] + [(0.0, max(runner_counts))]
        for burn, n in plan:
            cfg = config(root, model_dir, engine.base_url, n, burn, args)
            rates, warmups[("in-process", n, burn)] = measure(cfg, args.batches, args.batch)
            results[("in-process", n, burn)] = statistics.median(rates)
            os.environ["RAY_ADDRESS"] = cluster.address
            t0 = time.perf_counter()
            session = ray_runners.RaySession.open(cfg)
            session_s.append(time.perf_counter() - t0)
            try:
                rates, warmups[("ray", n, burn)] = measure(cfg, args.batches, args.batch)
                results[("ray", n, burn)] = statistics.median(rates)
            finally:
                session.close()
                os.environ.pop("RAY_ADDRESS", None)
            print(f"  measured burn={burn:.0f}ms runners={n}", file=sys.stderr, flush=True)
    finally:
        cluster.shutdown()
        engine.stop()

    print(f"\nrollout throughput, reward burning {args.burn_ms:.0f} ms of CPU; batch {args.batch} x repeat "
          f"{args.repeat}; medians of {args.batches} steps; {cores} cores available to this process; Ray: 2 "
          f"nodes on this machine")
    print(f"{'mode':<11} {'runners':>7} {'rollouts/s':>11} {'vs 1 runner':>12} {'vs in-process x1':>17} "
          f"{'ideal (cores)':>14}")
    base_in = results[("in-process", runner_counts[0], args.burn_ms)]
    for mode in ("in-process", "ray"):
        base = results[(mode, runner_counts[0], args.burn_ms)]
        for n in runner_counts:
            r = results[(mode, n, args.burn_ms)]
            print(f"{mode:<11} {n:>7} {r:>11.2f} {r / base:>11.2f}x {r / base_in:>16.2f}x "
                  f"{min(n, cores) / runner_counts[0]:>13.1f}x")
    n = max(runner_counts)
    cheap_in, cheap_ray = 1 / results[("in-process", n, 0.0)], 1 / results[("ray", n, 0.0)]
    print(f"\ncheap reward (0 ms), {n} runners: in-process {cheap_in * 1000:.1f} ms/rollout, Ray "
          f"{cheap_ray * 1000:.1f} ms/rollout: Ray costs {(cheap_ray - cheap_in) * 1000:+.1f} ms per rollout "
          f"({cheap_ray / cheap_in:.2f}x)")
    starts = ", ".join(f"{k[1]} runners {warmups[('ray',) + k[1:]] - warmups[('in-process',) + k[1:]]:.1f} s"
                       for k in sorted(warmups) if k[0] == "ray" and k[2] == args.burn_ms)
    print(f"Ray start-up: joining the cluster {statistics.median(session_s):.1f} s (median), then starting the "
          f"runners (first step on Ray minus first step in process): {starts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
