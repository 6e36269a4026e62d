"""The Monitor scraped over real HTTP: what Prometheus sees equals what metrics.jsonl holds, step by step."""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rft_runtime.monitor import Monitor, parse_metrics, read_metrics, scrape

GAUGE_KEYS = {
    "step": "rft_train_step", "total_steps": "rft_total_steps", "explore_step": "rft_explore_step",
    "critic/rewards/mean": "rft_reward_mean", "critic/rewards/std": "rft_reward_std", "critic/rewards/min": "rft_reward_min",
    "critic/rewards/max": "rft_reward_max", "rollout/accuracy/mean": "rft_accuracy", "rollout/format_score/mean": "rft_format_score",
    "actor/pg_loss": "rft_policy_loss", "actor/kl_loss": "rft_kl", "actor/entropy": "rft_entropy",
    "response_length/mean": "rft_response_length_mean_tokens", "weight_version_lag": "rft_weight_version_lag",
    "learning_rate": "rft_learning_rate", "time/step": "rft_last_step_duration_seconds",
    "timestamp": "rft_last_progress_timestamp_seconds",
    "actor/pg_clipfrac": "rft_pg_clipfrac", "actor/ppo_kl": "rft_ppo_kl", "grad_norm": "rft_grad_norm",
    "critic/advantages/mean": "rft_advantage_mean", "critic/advantages/min": "rft_advantage_min",
    "critic/advantages/max": "rft_advantage_max",
}
COUNTER_KEYS = {
    "rollouts": "rft_rollouts_total", "failed_rollouts": "rft_failed_rollouts_total",
    "prompt_tokens": "rft_prompt_tokens_total", "response_tokens": "rft_response_tokens_total",
    "truncated_prompts": "rft_truncated_prompts_total",
}
PHASES = {"sampling": "time/sampling", "training": "time/update_actor", "sync": "time/sync"}
BOUNDED_LABELS = {"rft_job", "phase", "le", "backend", "algorithm", "base_model"}


def step_record(step: int, total: int = 4, **extra) -> dict:
    """A record shaped as the training loop writes it, with awkward (non-round) floats."""
    rec = {
        "step": step, "total_steps": total, "explore_step": step + 1,
        "critic/rewards/mean": 0.1 * step + 1 / 3, "critic/rewards/std": 0.25 / step, "critic/rewards/min": -0.1 * step,
        "critic/rewards/max": 1.0 + step / 7, "actor/pg_loss": 0.7 / (step + 0.3), "actor/entropy": 2.0 - step / 9,
        "response_length/mean": 17.5 + step, "prompt_tokens": 120 * step, "response_tokens": 333 + step,
        "rollouts": 8, "failed_rollouts": step % 2, "truncated_prompts": 0,
        "time/sampling": 0.013 * step, "time/update_actor": 0.4 + step / 100, "time/sync": 0.002,
        "time/step": 0.5 + step / 50, "weight_version_lag": step % 2, "learning_rate": 1e-5 * step,
        "actor/pg_clipfrac": 0.0625 * step, "actor/ppo_kl": 1e-4 / step, "grad_norm": 0.37 + step,
        "critic/advantages/mean": 0.01 * step, "critic/advantages/min": -1.1, "critic/advantages/max": 0.9 + step,
    }
    rec.update(extra)
    return rec


def test_scraped_values_equal_the_jsonl_line_of_the_same_step(monitor):
    records = [
        step_record(1, **{"rollout/accuracy/mean": 0.25, "rollout/format_score/mean": 0.1, "actor/kl_loss": 0.003}),
        step_record(2, **{"rollout/accuracy/mean": 0.5, "rollout/format_score/mean": -0.1, "actor/kl_loss": 0.0041}),
        step_record(3),  # a workflow that gives no accuracy, a step without a KL term
        step_record(4, **{"rollout/accuracy/mean": 0.75}),
    ]
    previous: dict[str, float] = {}
    for i, rec in enumerate(records):
        monitor.log_step(rec)
        scraped = scrape(monitor.url)
        line = read_metrics(monitor.job_dir)[-1]
        assert line["step"] == rec["step"]
        for key, metric in GAUGE_KEYS.items():
            if key in line:
                assert scraped[metric] == float(line[key]), key
            else:  # an absent key leaves no stale value from an earlier step
                assert metric not in scraped, key
        lines = read_metrics(monitor.job_dir)
        for key, metric in COUNTER_KEYS.items():
            assert scraped[metric] == float(sum(r[key] for r in lines)), key
            assert scraped[metric] >= previous.get(metric, 0.0), f"{metric} went down"
        for phase, key in PHASES.items():
            assert scraped[f'rft_step_phase_duration_seconds_count{{phase="{phase}"}}'] == i + 1
            assert scraped[f'rft_step_phase_duration_seconds_sum{{phase="{phase}"}}'] == pytest.approx(
                sum(r[key] for r in lines), rel=1e-12)
        assert scraped["rft_step_duration_seconds_count"] == i + 1
        assert scraped["rft_train_steps_total"] == i + 1
        previous = scraped
    assert [r["step"] for r in read_metrics(monitor.job_dir)] == [1, 2, 3, 4]


def test_info_metric_carries_the_config_and_every_label_is_bounded(monitor):
    monitor.log_step(step_record(1))
    monitor.set_info(backend="tinker", algorithm="sft", base_model="/models/tiny")  # a second stage
    monitor.log_step(step_record(2))
    with urllib.request.urlopen(monitor.url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    info = families["rft_job_info"]  # the text format carries an Info as a gauge of 1
    [sample] = info.samples
    assert sample.name == "rft_job_info" and sample.value == 1.0
    assert sample.labels == {"rft_job": "demo-job", "backend": "tinker", "algorithm": "sft",
                             "base_model": "/models/tiny"}
    for family in families.values():
        assert family.name.startswith("rft_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
        for s in family.samples:
            assert set(s.labels) <= BOUNDED_LABELS, s
            assert s.labels["rft_job"] == "demo-job"


def test_info_labels_come_from_the_config_at_start(tmp_path, monkeypatch, cfg_factory):
    monkeypatch.setenv("RFT_JOB_NAME", "my-rftjob")  # the operator names the series after the RFTJob
    with Monitor(cfg_factory(algorithm="rloo"), tmp_path, metrics_port=0, progress=False) as mon:
        scraped = scrape(mon.url)
        text = urllib.request.urlopen(mon.url, timeout=5).read().decode()
    assert scraped['rft_job_info{algorithm="rloo",backend="tinker",base_model="/models/tiny"}'] == 1.0
    assert 'rft_job="my-rftjob"' in text
    # before the first step the stall clock starts at the process start, so a hang in step 1 is visible
    assert scraped["rft_last_progress_timestamp_seconds"] == scraped["rft_start_time_seconds"]


def test_server_binds_loopback_by_default_and_stops_on_close(tmp_path, cfg, monkeypatch):
    monkeypatch.delenv("RFT_METRICS_HOST", raising=False)
    mon = Monitor(cfg, tmp_path, metrics_port=0, progress=False)
    try:
        assert mon.port and mon.port > 0
        assert mon.exporter._server.socket.getsockname()[0] == "127.0.0.1"
        assert scrape(f"http://127.0.0.1:{mon.port}/metrics")["rft_train_steps_total"] == 0.0
    finally:
        mon.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{mon.port}/metrics", timeout=2)
    mon.close()  # twice is harmless


def test_busy_port_falls_back_to_a_free_one(tmp_path, cfg, caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with caplog.at_level(logging.WARNING), Monitor(cfg, tmp_path, metrics_port=taken, progress=False) as mon:
            assert mon.port not in (None, taken)
            assert scrape(mon.url)["rft_train_steps_total"] == 0.0
    assert any(str(taken) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_no_port_means_no_endpoint_but_the_file_is_written(tmp_path, cfg):
    with Monitor(cfg, tmp_path, metrics_port=None, progress=False) as mon:
        assert mon.port is None and mon.url is None
        mon.log_step(step_record(1))
    assert read_metrics(tmp_path)[0]["critic/rewards/mean"] == step_record(1)["critic/rewards/mean"]


def test_numpy_values_are_written_and_exported_as_the_same_number(monitor):
    np = pytest.importorskip("numpy")
    monitor.log_step(step_record(1, rollouts=np.int64(8), **{"critic/rewards/mean": np.float32(0.1)}))
    line = read_metrics(monitor.job_dir)[0]
    scraped = scrape(monitor.url)
    assert isinstance(line["critic/rewards/mean"], float) and scraped["rft_reward_mean"] == line["critic/rewards/mean"]
    assert line["rollouts"] == 8 and scraped["rft_rollouts_total"] == 8.0


def test_lines_keep_going_to_the_file_the_loop_rewrote_on_resume(monitor):
    monitor.log_step(step_record(1))
    monitor.log_step(step_record(2))
    # what the loop does on resume: keep steps up to the checkpoint, atomically replace the file
    path = monitor.metrics_file
    tmp = path.with_suffix(".tmp")
    tmp.write_text(path.read_text().splitlines()[0] + "\n")
    os.replace(tmp, path)
    monitor.log_step(step_record(2))
    assert [r["step"] for r in read_metrics(monitor.job_dir)] == [1, 2]


def test_read_metrics_skips_a_line_cut_short_by_a_kill(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "rew')
    assert read_metrics(tmp_path) == [{"step": 1}]
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1}]
    assert read_metrics(tmp_path / "nowhere") == []


def test_parse_metrics_keys_labels_but_not_the_job_label():
    text = ('# TYPE rft_x gauge\nrft_x{rft_job="a"} 2.5\n'
            '# TYPE rft_h histogram\nrft_h_sum{rft_job="a",phase="sync"} 1.0\n')
    assert parse_metrics(text) == {"rft_x": 2.5, 'rft_h_sum{phase="sync"}': 1.0}


def test_a_scrape_never_mixes_two_steps(monitor):
    import sys
    import threading

    done = threading.Event()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a scrape lands inside a step update if it can

    def train():
        for step in range(1, 401):
            monitor.log_step(step_record(step, total=400, **{"critic/rewards/mean": step / 2, "actor/pg_loss": float(step)}))
        done.set()

    thread = threading.Thread(target=train)
    thread.start()
    seen = 0
    try:
        while not done.is_set():
            scraped = scrape(monitor.url)
            step = scraped.get("rft_train_step")
            if step is None:
                continue
            seen += 1
            assert scraped["rft_reward_mean"] == step / 2
            assert scraped["rft_policy_loss"] == step
            assert scraped["rft_explore_step"] == step + 1
            assert scraped["rft_train_steps_total"] == step
    finally:
        thread.join()
        sys.setswitchinterval(interval)
    assert seen > 0


def test_bind_address_comes_from_the_environment_the_operator_sets(tmp_path, cfg, monkeypatch):
    # pods get RFT_METRICS_HOST=0.0.0.0; here another loopback address shows the variable is obeyed
    monkeypatch.setenv("RFT_METRICS_HOST", "127.0.0.2")
    with Monitor(cfg, tmp_path / "a", metrics_port=0, progress=False) as mon:
        assert mon.exporter._server.socket.getsockname()[0] == "127.0.0.2"
        assert mon.url == f"http://127.0.0.2:{mon.port}/metrics"
        assert scrape(mon.url)["rft_train_steps_total"] == 0.0
    # an explicit argument wins over the environment
    with Monitor(cfg, tmp_path / "b", metrics_port=0, progress=False, metrics_host="127.0.0.1") as mon:
        assert mon.exporter._server.socket.getsockname()[0] == "127.0.0.1"
