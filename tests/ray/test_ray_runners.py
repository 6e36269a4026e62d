"""Workflow runners as Ray actors: `rft run` with RAY_ADDRESS on a two-node Ray cluster this module starts on
this machine (ray.cluster_utils: a head and a worker node, each its own raylet process), against the local
engine through the tinker SDK.

One cluster serves every test (module fixture, shut down in its finalizer whatever happened). The user's
workflow comes from a --plugin-dir folder that only the `rft run` process knows, so a runner on the worker
node can run it only if the job ships it there. The raylet-kill test runs last: it takes the worker away.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from test_run_support import clean_env, rft, write_config  # noqa: E402

ray = pytest.importorskip("ray", reason="ray is in the runtime extra (pip install -e '.[runtime]'); CI has it")
pytestmark = pytest.mark.slow  # real jobs on a real cluster

ROWS = 8
FAILING = {3, 6}  # rows whose workflow raises (the same error text for both)

PROBE = '''
import os
import time

from rft_runtime.workflows import Workflow
from rft_runtime.workflows.registry import register_workflow


def burn(seconds):
    """Spend `seconds` of this process's CPU time (a CPU-heavy reward stand-in)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class RayProbe(Workflow):
    """One chat turn; rows marked fail raise; the reward is a deterministic function of the reply."""

    def run(self):
        row = self.task.raw_task
        if row.get("fail"):
            raise ValueError("probe: this row is broken")
        time.sleep(float(row.get("delay", 0)))  # a slow environment (sync: a runner cannot be interrupted)
        prompt = row[self.task.format_args.prompt_key or "question"]
        exps = self.model.chat([{"role": "user", "content": prompt}], max_tokens=6)
        burn(float(self.task.workflow_args.get("burn_s", 0)))
        for exp in exps:
            exp.reward = float(sum(int(t) for t in list(exp.tokens)[exp.prompt_length:]) % 5)
            exp.metrics = {"pid": float(os.getpid()), "tagged": float(os.environ.get("PROBE_TAG") == "on")}
        return exps


register_workflow("ray_probe", RayProbe)  # the name the --plugin-dir jobs use
'''


def _kill_tree_by_dir(marker: str) -> None:
    """SIGKILL every process whose command line names this module's Ray temp folder (never anyone else's)."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimpleNamespace]:
    """A head node and a worker node (1 CPU each) on this machine; fast node-death detection."""
    from ray.cluster_utils import Cluster

    saved = os.environ.get("RAY_AUTH_MODE")
    # every process of this cluster and the jobs it runs agree on no token (a ~/.ray/auth_token left by
    # someone else would otherwise switch the head to token mode and lock the worker out)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp = tempfile.mkdtemp(prefix="rftray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    made = None
    try:
        made = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": True, "temp_dir": temp,
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
        worker = made.add_node(num_cpus=1)
        made.wait_for_nodes(timeout=120)
        yield SimpleNamespace(cluster=made, worker=worker, address=made.address, temp=temp)
    finally:
        try:
            if made is not None:
                made.shutdown()
        finally:
            _kill_tree_by_dir(temp)
            shutil.rmtree(temp, ignore_errors=True)
            if saved is None:
                os.environ.pop("RAY_AUTH_MODE", None)
            else:
                os.environ["RAY_AUTH_MODE"] = saved


def _job(root: Path, model_dir: Path, base_url: str, name: str, *, steps: int = 2, runners: int = 2,
         burn_s: float = 0.0, fail: bool = True, workflow: str = "ray_probe") -> dict[str, Any]:
    data = root / "data" / f"{name}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"question": f"what is {i} + {i}?", "answer": f"#### {2 * i}",
                                        "fail": fail and i in FAILING}) + "\n" for i in range(ROWS)))
    return {
        "mode": "both", "project": "ray", "group": "tests", "name": name,
        "checkpoint_root_dir": str(root / "ckpt"), "continue_from_checkpoint": False,
        "algorithm": {"algorithm_type": "grpo", "repeat_times": 2, "optimizer": {"lr": 1e-3}},
        "model": {"model_path": str(model_dir), "max_prompt_tokens": 256, "max_response_tokens": 6,
                  "tinker": {"enable": True, "base_url": base_url, "rank": 4, "seed": 0}},
        "cluster": {"gpu_per_node": 0},
        "buffer": {"batch_size": 4, "total_steps": steps, "explorer_input": {
            "taskset": {"path": str(data), "workflow_args": {"burn_s": burn_s},
                        "format": {"prompt_key": "question", "response_key": "answer"}},
            "default_workflow_type": workflow}},
        "explorer": {"runner_per_model": runners, "max_retry_times": 2, "env_vars": {"PROBE_TAG": "on"},
                     "rollout_model": {"engine_num": 1, "seed": 3}},
        "trainer": {"save_interval": 0},
        "monitor": {"monitor_type": "none"},
        "synchronizer": {"sync_method": "checkpoint", "sync_interval": 1, "sync_offset": 0, "sync_timeout": 180},
    }


def _plugins(root: Path) -> Path:
    folder = root / "user_plugins"
    folder.mkdir(exist_ok=True)
    (folder / "ray_probe_wf.py").write_text(PROBE)
    return folder


def _start(cfg: dict[str, Any], root: Path, plugins: Path, address: str | None, *, by_path: bool = False) -> Any:
    """`rft run` in the background; the workflow's folder given as --plugin-dir, or (by_path) only on this
    process's PYTHONPATH, for a workflow named `module.Class`."""
    import subprocess

    env = clean_env(RAY_AUTH_MODE="disabled")
    if by_path:
        env["PYTHONPATH"] = os.pathsep.join([str(plugins), env.get("PYTHONPATH", "")])
    env.pop("RAY_ADDRESS", None)
    env.pop("RFT_RAY", None)
    if address:
        env["RAY_ADDRESS"] = address
    config = write_config(root / f"{cfg['name']}.yaml", cfg)
    log = open(root / f"{cfg['name']}.log", "w")  # noqa: SIM115 - closed by _finish
    extra = [] if by_path else ["--plugin-dir", str(plugins)]
    proc = subprocess.Popen(rft("run", "--config", str(config), "--no-progress", "--no-metrics", *extra),
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    proc.log_file = log
    return proc


def _finish(proc: Any, root: Path, name: str, timeout: float = 300) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.log_file.close()
    out = (root / f"{name}.log").read_text()
    assert proc.returncode == 0, out[-4000:]
    return out


def _metrics(root: Path, name: str) -> list[dict[str, Any]]:
    path = root / "ckpt" / "ray" / "tests" / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _runner_actors(address: str, name: str) -> list[Any]:
    from ray.util.state import list_actors

    return [a for a in list_actors(address=address, detail=True, limit=1000)
            if (a.name or "").startswith(f"rft-runner:{name}:")]


@pytest.fixture(scope="module")
def ray_run(cluster, tiny_model_dir, tmp_path_factory) -> SimpleNamespace:
    """One two-step job on the cluster (the local engine started by the job itself, at the node's address),
    its workflow named by import path from a folder only `rft run` has on its PYTHONPATH."""
    root = tmp_path_factory.mktemp("ray-job")
    cfg = _job(root, tiny_model_dir, "local", "on-ray", workflow="ray_probe_wf.RayProbe")
    out = _finish(_start(cfg, root, _plugins(root), cluster.address, by_path=True), root, "on-ray")
    return SimpleNamespace(root=root, cfg=cfg, out=out, records=_metrics(root, "on-ray"))


def test_runners_run_on_both_nodes_of_the_cluster(cluster, ray_run):
    actors = _runner_actors(cluster.address, "on-ray")
    assert len(actors) == 2, [a.name for a in actors]
    nodes = {n.node_id for n in __import__("ray.util.state", fromlist=["list_nodes"]).list_nodes(
        address=cluster.address)}
    assert {a.node_id for a in actors} == nodes and len(nodes) == 2
    # the job stopped them at its end: nothing of it keeps running on the cluster
    assert {a.state for a in actors} == {"DEAD"}
    assert "2 workflow runners on 2 Ray node(s)" in ray_run.out
    # the rollouts came from two processes (the two actors), not from the driver
    pids = {r["rollout/pid/min"] for r in ray_run.records} | {r["rollout/pid/max"] for r in ray_run.records}
    assert len(pids) >= 2
    # explorer.env_vars is the runners' environment, as in Trinity
    assert all(r["rollout/tagged/min"] == 1.0 for r in ray_run.records)


def test_a_raising_workflow_is_counted_once_and_the_job_goes_on(ray_run):
    records = ray_run.records
    assert [r["step"] for r in records] == [1, 2]
    # 2 steps x 4 tasks = every row once; rows 3 and 6 raise on each of their 2 runs
    assert sum(r["failed_rollouts"] for r in records) == 2 * len(FAILING)
    assert all(r["rollouts"] + r["failed_rollouts"] == 8 for r in records)
    assert ray_run.out.count("probe: this row is broken") == 1, ray_run.out[-4000:]


def test_the_same_job_in_process_samples_the_same_batches(ray_run, tiny_model_dir, tmp_path_factory):
    # the seed of each rollout comes from its explore step and row, never from which runner ran it
    root = tmp_path_factory.mktemp("in-process")
    cfg = _job(root, tiny_model_dir, "local", "in-process", workflow="ray_probe_wf.RayProbe")
    _finish(_start(cfg, root, _plugins(root), None, by_path=True), root, "in-process")
    keys = ["rollouts", "failed_rollouts", "critic/rewards/mean", "critic/rewards/min", "critic/rewards/max",
            "critic/rewards/std", "response_tokens", "prompt_tokens"]
    local = [{k: r.get(k) for k in keys} for r in _metrics(root, "in-process")]
    remote = [{k: r.get(k) for k in keys} for r in ray_run.records]
    # the same tokens, so the same rewards, in every step (the rewards are a function of the sampled ids)
    assert local == remote
    # and the same training, up to the engine's float rounding
    assert [r["actor/pg_loss"] for r in _metrics(root, "in-process")] == pytest.approx(
        [r["actor/pg_loss"] for r in ray_run.records], abs=1e-6)
    # one process ran every rollout, and explorer.env_vars was its environment
    assert all(r["rollout/pid/min"] == r["rollout/pid/max"] for r in _metrics(root, "in-process"))
    assert all(r["rollout/tagged/min"] == 1.0 for r in _metrics(root, "in-process"))


def test_tasksets_over_rollout_and_the_dynamic_timeout_on_ray(cluster, tiny_model_dir, local_engine,
                                                              tmp_path_factory):
    # two tasksets of 4 rows (the second prompts from another column), 4 tasks a step: Trinity's mix puts 2 of
    # each in both steps. The second taskset's first row sleeps 40 s on its runner: over_rollout (3 of 4 tasks,
    # then 10 s) drops it, and that runner takes no task until it is done, its result unused
    root = tmp_path_factory.mktemp("ray-mix")
    cfg = _job(root, tiny_model_dir, local_engine.base_url, "ray-mix", steps=2, fail=False)
    first = cfg["buffer"]["explorer_input"].pop("taskset")
    other = root / "data" / "other.jsonl"
    other.write_text("".join(json.dumps({"q": f"name {i}", "delay": 40 if i == 0 else 0}) + "\n" for i in range(4)))
    seq = {"selector_type": "sequential"}
    cfg["buffer"]["explorer_input"]["tasksets"] = [{**first, "data_selector": seq},
                                                   {"path": str(other), "format": {"prompt_key": "q"},
                                                    "data_selector": seq}]
    cfg["synchronizer"]["sync_style"] = "explorer_driven"
    cfg["explorer"].update(over_rollout={"ratio": 0.25, "wait_after_min": 10},
                           dynamic_timeout={"enable": True, "ratio": 20})
    proc = _start(cfg, root, _plugins(root), cluster.address)
    _finish(proc, root, "ray-mix")
    records = _metrics(root, "ray-mix")
    assert [r["step"] for r in records] == [1, 2]
    assert [r["rollout/late_task_count"] for r in records] == [1, 0]
    assert [r["rollouts"] for r in records] == [6, 8] and all(r["failed_rollouts"] == 0 for r in records)
    assert records[0]["time/sampling"] < 40  # the step did not wait for the slow task
    # the dynamic timeout follows the mean run time after the first whole step (step 1 was not whole)
    assert records[0]["rollout/timeout"] == records[1]["rollout/timeout"] == cfg["explorer"].get("max_timeout", 1800)


def test_killing_the_worker_raylet_mid_step_loses_no_rollout(cluster, tiny_model_dir, local_engine,
                                                            tmp_path_factory):
    root = tmp_path_factory.mktemp("raylet-kill")
    steps = 4
    # each rollout burns 0.3 s of CPU: a step takes seconds, so the kill lands while tasks are running
    cfg = _job(root, tiny_model_dir, local_engine.base_url, "raylet-kill", steps=steps, burn_s=0.3, fail=False)
    proc = _start(cfg, root, _plugins(root), cluster.address)
    try:
        metrics_file = root / "ckpt" / "ray" / "tests" / "raylet-kill" / "metrics.jsonl"
        deadline = time.monotonic() + 240
        # both runners up and step 1 done: step 2's tasks are on both nodes now
        while not (metrics_file.exists() and metrics_file.read_text().strip()):
            assert proc.poll() is None, (root / "raylet-kill.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the job did not finish step 1 in time"
            time.sleep(0.2)
        raylet = cluster.worker.all_processes["raylet"][0].process
        os.kill(raylet.pid, signal.SIGKILL)
        out = _finish(proc, root, "raylet-kill")
    finally:
        if proc.poll() is None:
            proc.kill()
    records = _metrics(root, "raylet-kill")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all(r["rollouts"] == 8 and r["failed_rollouts"] == 0 for r in records), records
    assert "went away while running task" in out
