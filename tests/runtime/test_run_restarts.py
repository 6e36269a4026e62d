"""What a user sees when a job runs again: a finished job answers at once, a restart says why it starts over,
a failed run leaves no empty directory, and pods (`--no-progress`) still log one line per step."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from test_run_support import clean_env, job_dict, job_dir, metrics, rft, run_cli, write_config

from rft_runtime.config import load_config
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.job import run_job


@pytest.mark.slow
def test_a_finished_job_run_again_answers_at_once_without_starting_the_engine(tmp_path, tiny_model_dir,
                                                                             local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="twice", steps=2)
    config = write_config(tmp_path / "job.yaml", cfg)
    first = run_cli(config)
    assert first.returncode == 0, first.stderr[-3000:]
    # one log line per step although --no-progress is given (what `kubectl logs` shows of a pod)
    step_lines = [line for line in first.stderr.splitlines() if "rft_runtime.progress: step " in line]
    assert [line.split("progress: ")[1].split(" [")[0] for line in step_lines] == ["step 1/2", "step 2/2"]
    assert "reward=" in step_lines[-1] and "loss=" in step_lines[-1]

    # the same job with base_url local: answering from the job directory must not start an engine
    cfg["model"]["tinker"]["base_url"] = "local"
    write_config(config, cfg)
    started = time.monotonic()
    again = run_cli(config)
    elapsed = time.monotonic() - started
    assert again.returncode == 0, again.stderr[-3000:]
    assert "done already" in again.stdout and "2 steps" in again.stdout
    assert not (job_dir(cfg) / "engine.log").exists()
    assert elapsed < 20, f"took {elapsed:.1f}s"
    assert [r["step"] for r in metrics(cfg)] == [1, 2]  # nothing appended or dropped


@pytest.mark.slow
def test_a_restart_without_a_checkpoint_says_why_it_starts_over(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="nockpt", steps=8, save_interval=0)
    config = write_config(tmp_path / "job.yaml", cfg)
    proc = subprocess.Popen(rft("run", "--config", str(config), "--no-progress", "--no-metrics"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        deadline = time.monotonic() + 120
        while len(metrics(cfg)) < 2:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no step logged in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        _, first_err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # at start-up: the job cannot resume before the stage ends, naming the setting
    assert "trainer.save_interval is 0" in first_err and "starts the stage over" in first_err
    reached = max(r["step"] for r in metrics(cfg))
    assert reached < 8

    done = run_cli(config)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (f"the last run reached step {reached}, but no checkpoint was saved before it stopped "
            f"(trainer.save_interval is 0), so steps 1-{reached} are trained again") in done.stderr
    assert [r["step"] for r in metrics(cfg)] == list(range(1, 9))


def test_a_run_that_fails_before_training_leaves_no_directory(tmp_path, tiny_model_dir):
    cfg = job_dict(tmp_path, tiny_model_dir, "local", name="fails")
    cfg["model"]["custom_chat_template"] = "{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}"
    with pytest.raises(RunError, match="custom_chat_template"):
        run_job(load_config(write_config(tmp_path / "job.yaml", cfg)), metrics_port=None, progress=False)
    assert not job_dir(cfg).exists()
    assert not (tmp_path / "ckpt").exists()  # nor the project/group folders it made on the way


def test_a_failed_run_keeps_a_directory_that_was_there_before(tmp_path, tiny_model_dir):
    cfg = job_dict(tmp_path, tiny_model_dir, "local", name="kept")
    cfg["model"]["custom_chat_template"] = "{{ m.content | no_such_filter }}"
    job_dir(cfg).mkdir(parents=True)
    (job_dir(cfg) / "notes.txt").write_text("mine")
    with pytest.raises(RunError):
        run_job(load_config(write_config(tmp_path / "job.yaml", cfg)), metrics_port=None, progress=False)
    assert (job_dir(cfg) / "notes.txt").read_text() == "mine"
