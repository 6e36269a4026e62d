"""Faults a user would meet: the run killed with SIGKILL and started again, the engine dying mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from test_run_support import clean_env, job_dict, job_dir, metrics, rft, run_cli, write_config, write_sft

from rft_runtime.engine.launcher import LocalEngine
from rft_runtime.engine.model_factory import make_model


def _latest_step(cfg) -> int:
    path = job_dir(cfg) / "checkpoint.json"
    try:
        latest = json.loads(path.read_text()).get("latest") or {}
    except (OSError, ValueError):
        return 0
    return int(latest.get("global_step", 0))


def _wait(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"rft run ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _popen(config, env=None) -> subprocess.Popen:
    return subprocess.Popen(rft("run", "--config", str(config), "--no-progress", "--no-metrics"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or clean_env())


@pytest.mark.slow
def test_sigkill_after_first_checkpoint_then_rerun_does_every_step_once(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="resume", steps=10, save_interval=2,
                   offset=1)
    config = write_config(tmp_path / "job.yaml", cfg)
    proc = _popen(config)
    try:
        _wait(lambda: _latest_step(cfg) >= 2, proc, 120, "the first checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = [r["step"] for r in metrics(cfg)]
    assert first and max(first) < 10, "the first run must have been killed before the end"

    done = run_cli(config)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [r["step"] for r in metrics(cfg)]
    assert steps == list(range(1, 11))
    assert "resuming" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["both", "train"])
def test_engine_killed_and_restarted_mid_run_the_run_recovers(tmp_path, tiny_model_dir, mode):
    engine = LocalEngine(tiny_model_dir, state_dir=tmp_path / "engine-state", port=0,
                         log_file=tmp_path / "engine.log").start(timeout=120)
    proc = None
    try:
        steps = 8 if mode == "both" else 40  # SFT steps take tens of milliseconds: more of them to kill into
        cfg = job_dict(tmp_path, tiny_model_dir, engine.base_url, name="restart", steps=steps, save_interval=2)
        if mode == "train":
            # every SFT step changes the weights, so the steps after the last checkpoint must be redone
            cfg.update(mode="train")
            cfg["algorithm"].update(algorithm_type="sft", repeat_times=1)
            cfg["buffer"]["batch_size"] = 8
            cfg["buffer"]["trainer_input"] = {"experience_buffer": {
                "name": "sft", "storage_type": "file", "format": {"prompt_type": "plaintext"}, "path": str(write_sft(tmp_path / "sft.jsonl"))}}
        proc = _popen(write_config(tmp_path / "job.yaml", cfg))
        _wait(lambda: len(metrics(cfg)) >= 3, proc, 120, "step 3")
        os.kill(engine.pid, signal.SIGKILL)
        killed_at = len(metrics(cfg))
        time.sleep(1.0)
        engine.restart()
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        assert killed_at < steps, "the engine must die while the run still has steps to do"
        assert [r["step"] for r in metrics(cfg)] == list(range(1, steps + 1))
        assert "recreating the training client" in err
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        engine.stop()


@pytest.mark.slow
def test_the_jobs_own_engine_dying_mid_run_is_started_again_and_the_run_finishes(tmp_path, tiny_model_dir):
    # base_url local: the job's own engine. It used to die (a SIGFPE in a bfloat16 product) and leave the
    # trainer polling a dead port until synchronizer.sync_timeout, an hour by default
    cfg = job_dict(tmp_path, tiny_model_dir, "local", name="own-engine", steps=8, save_interval=2)
    proc = _popen(write_config(tmp_path / "job.yaml", cfg))
    try:
        _wait(lambda: len(metrics(cfg)) >= 3, proc, 120, "step 3")
        pid = int((job_dir(cfg) / "engine.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed_at = len(metrics(cfg))
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        assert killed_at < 8, "the engine must die while the run still has steps to do"
        assert [r["step"] for r in metrics(cfg)] == list(range(1, 9))
        assert f"the local engine (pid {pid}) stopped (killed by SIGKILL)" in err
        assert "starting the local engine again" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _engine_pids(model_dir) -> list[int]:
    pids = []
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{proc}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "engine" in cmdline and "serve" in cmdline and str(model_dir) in cmdline:
            pids.append(int(proc))
    return pids


@pytest.mark.slow
def test_stalled_explorer_ends_the_job_and_the_local_engine_is_stopped(tmp_path, tiny_model_dir):
    # a model directory of this test's own, so the engine `rft run` starts can be found by its command line
    model_dir = make_model(tmp_path / "model", preset=str(tiny_model_dir))
    (tmp_path / "slow_rewards.py").write_text(
        "import time\n\ndef slow(response, truth):\n    time.sleep(4)\n    return 0.0\n")
    cfg = job_dict(tmp_path, model_dir, "local", name="stall", steps=3, synchronizer__sync_timeout=2)
    cfg["buffer"]["explorer_input"]["default_reward_fn_type"] = "slow_rewards:slow"
    started = time.monotonic()
    done = run_cli(write_config(tmp_path / "job.yaml", cfg), env=clean_env(PYTHONPATH=str(tmp_path)))
    assert done.returncode == 1
    assert "the explorer stalled" in done.stderr and "sync_timeout" in done.stderr
    assert time.monotonic() - started < 60
    assert _engine_pids(model_dir) == [], "the engine rft run started must be stopped after the error"
    assert not (job_dir(cfg) / "engine.pid").exists()
