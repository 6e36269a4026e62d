"""A running `rft run --metrics-port` scraped over HTTP: Prometheus says what metrics.jsonl says."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from test_run_support import clean_env, job_dict, metrics, rft, write_config

from rft_runtime.monitor import scrape


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_scraped_reward_and_loss_equal_the_json_lines_of_the_same_step(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="scrape", steps=8, offset=0)
    port = _free_port()
    proc = subprocess.Popen(
        rft("run", "--config", str(write_config(tmp_path / "job.yaml", cfg)), "--no-progress",
            "--metrics-port", str(port)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    seen: dict[int, dict[str, float]] = {}
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                sample = scrape(f"http://127.0.0.1:{port}/metrics", timeout=2)
            except OSError:
                time.sleep(0.1)
                continue
            step = int(sample.get("rft_train_step", 0))
            if step and step < 8:  # mid-run: later steps are still to come
                seen.setdefault(step, sample)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert seen, "no scrape landed while the job was training"
    by_step = {r["step"]: r for r in metrics(cfg)}
    for step, sample in seen.items():
        line = by_step[step]
        assert sample["rft_reward_mean"] == pytest.approx(line["critic/rewards/mean"], rel=1e-6, abs=1e-9)
        assert sample["rft_policy_loss"] == pytest.approx(line["actor/pg_loss"], rel=1e-6, abs=1e-9)
        assert sample["rft_total_steps"] == 8
