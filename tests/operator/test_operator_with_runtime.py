"""The operator against kmock with a real `rft run` playing the pod: status.progress follows real training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kmock_harness import wait_for
from rftjob_bodies import rftjob
from test_operator_kmock import free_port, phase_is, printer_columns, status

NS = "default"
STEPS = 12


def job_config(root: Path, model_dir: Path, base_url: str) -> dict:
    """A tiny grpo job on a GSM8K-format file, against the local engine; the job dir from the seeds' variable."""
    data = root / "data" / "gsm8k.jsonl"
    data.parent.mkdir(parents=True)
    rows = [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a in range(4) for b in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "mode": "both", "project": "ops", "group": "e2e", "name": "progress",
        "checkpoint_root_dir": "${oc.env:TRINITY_CHECKPOINT_ROOT_DIR,./checkpoints}",
        "algorithm": {"algorithm_type": "grpo", "repeat_times": 4, "optimizer": {"lr": 1e-3}},
        "model": {"model_path": str(model_dir), "max_prompt_tokens": 512, "max_response_tokens": 12,
                  "tinker": {"enable": True, "base_url": base_url, "rank": 4, "seed": 0}},
        "buffer": {"batch_size": 2, "total_steps": STEPS, "explorer_input": {
            "taskset": {"name": "gsm8k", "path": str(data),
                        "format": {"prompt_key": "question", "response_key": "answer"}},
            "default_workflow_type": "math_workflow"}},
        "explorer": {"runner_per_model": 8, "rollout_model": {"engine_num": 1, "seed": 1}},
        "monitor": {"monitor_type": "none"},
        "synchronizer": {"sync_method": "checkpoint", "sync_interval": 1, "sync_offset": 0, "sync_timeout": 120},
    }


def play_pod(pod: dict, config_text: str, mount: Path) -> subprocess.Popen:
    """Run the pod's own command with its env and ConfigMap, the volume mounted at a local directory."""
    container = pod["spec"]["containers"][0]
    config_file = mount / "etc-rft" / "config.yaml"
    config_file.parent.mkdir(parents=True)
    config_file.write_text(config_text)
    env = {k: v for k, v in os.environ.items() if k not in ("TINKER_API_KEY", "TRINITY_API_KEY")}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"].replace("/var/lib/rft", str(mount / "var-lib-rft"))
    env["RFT_METRICS_HOST"] = "127.0.0.1"  # loopback here; the pod listens on its own IP
    env["TINKER_TELEMETRY"] = "0"
    command = [str(config_file) if arg == "/etc/rft/config.yaml" else arg for arg in container["command"]]
    assert command[:2] == ["rft", "run"]
    return subprocess.Popen([sys.executable, "-m", "rft_runtime.cli", *command[1:]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_status_progress_follows_a_real_rft_run(client, running_operator, tiny_model_dir, local_engine, tmp_path):
    port = free_port()
    config = job_config(tmp_path, tiny_model_dir, local_engine.base_url)
    client.create("rftjobs", NS, rftjob("e2e", config, metrics={"port": port}))
    pod = wait_for(lambda: client.get("pods", NS, "e2e-head"), 30, "the pod")
    shipped = client.get("configmaps", NS, "e2e-config")["data"]["config.yaml"]
    assert yaml.safe_load(shipped) == config  # the user's config, untouched
    proc = play_pod(pod, shipped, tmp_path / "pod")
    try:
        client.set_pod_phase(NS, "e2e-head", "Running", pod_ip="127.0.0.1")
        phase_is(client, "e2e", "Running")
        seen = {}
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            progress = status(client, "e2e").get("progress") or {}
            if progress.get("step"):
                seen.setdefault(progress["step"], progress)
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    assert seen, "status.progress never showed a step while the job trained"
    job_dir = tmp_path / "pod" / "var-lib-rft" / "checkpoints" / "ops" / "e2e" / "progress"
    lines = {r["step"]: r for r in map(json.loads, (job_dir / "metrics.jsonl").read_text().splitlines())}
    for step, progress in seen.items():
        assert progress["totalSteps"] == STEPS
        assert progress["rewardMean"] == pytest.approx(lines[step]["critic/rewards/mean"], abs=1e-6)
        assert progress["loss"] == pytest.approx(lines[step]["actor/pg_loss"], rel=1e-5, abs=1e-6)
    client.set_pod_phase(NS, "e2e-head", "Succeeded", exit_code=0)
    st = phase_is(client, "e2e", "Succeeded")
    columns = printer_columns(client.get("rftjobs", NS, "e2e"))
    assert columns["Phase"] == "Succeeded" and columns["Step"] == f"{max(seen)}/{STEPS}"
    assert st["progress"]["step"] == max(seen)
