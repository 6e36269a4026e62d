"""Trinity's modes as separate jobs on the real local engine, through `rft run`: a mode-explore job writes
experiences that a mode-train job, another process, reads and trains on (SQLite, a real PostgreSQL server,
and the JSON-lines file of a queue); bench scores saved checkpoints; serve answers OpenAI requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from test_run_support import clean_env, job_dict, job_dir, metrics, rft, run_cli, write_config

from rft_runtime.buffers.sql import SqlStore


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _pair(tmp_path: Path, model_dir: Path, base_url: str, buffer: dict) -> tuple[dict, dict]:
    """An explore job and a train job of one job directory, as Trinity's async example splits them."""
    explore = job_dict(tmp_path, model_dir, base_url, steps=3, name="async")
    explore["mode"] = "explore"
    explore["buffer"]["trainer_input"] = {"experience_buffer": buffer}
    train = json.loads(json.dumps(explore))
    train["mode"] = "train"
    train["buffer"]["train_batch_size"] = 8  # one explore step's worth: 2 tasks x 4 rollouts
    return explore, train


def _run_both_jobs(tmp_path: Path, explore: dict, train: dict) -> tuple[subprocess.CompletedProcess, ...]:
    env = clean_env()
    cmds = [rft("run", "--config", str(write_config(tmp_path / f"{c['mode']}.yaml", c)), "--no-progress",
                "--no-metrics") for c in (train, explore)]
    # the trainer starts first and waits for experiences, as it would in a cluster
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for cmd in cmds]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=400)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return tuple(out)


def _check_trained_on_what_was_explored(explore: dict, trained, explored) -> None:
    assert explored.returncode == 0, explored.stderr[-3000:]
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "24 experiences written" in explored.stdout
    side = _records(job_dir(explore) / "explorer" / "metrics.jsonl")
    assert [r["step"] for r in side] == [1, 2, 3] and sum(r["experiences"] for r in side) == 24
    steps = metrics(explore)  # the trainer's metrics.jsonl in the shared job directory
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert sum(r["rollouts"] for r in steps) == sum(r["experiences"] for r in side)
    assert all(r["actor/pg_loss"] == r["actor/pg_loss"] for r in steps)  # trained: a loss came back
    # the trainer published its weights where the explorer (and bench, serve) look for them
    assert (job_dir(explore) / "latest_state_dict_iteration.txt").read_text().strip() == "3"
    # sync_style fixed, sync_interval 1 across processes: each explore step waits for the weights of the train
    # step before it, as Trinity's explorer waits on its synchronizer, so every step trains on-policy
    assert [r["model_version"] for r in side] == [0, 1, 2]
    assert [r["weight_version_lag"] for r in steps] == [0, 0, 0]
    # rewards the trainer logs are those the explorer's rollouts earned
    assert sorted(round(r["critic/rewards/mean"], 6) for r in steps) == \
        sorted(round(r["critic/rewards/mean"], 6) for r in side)


@pytest.mark.slow
def test_explore_and_train_jobs_share_a_sqlite_buffer(tmp_path, tiny_model_dir, local_engine):
    url = f"sqlite:///{tmp_path / 'buffer.db'}"
    explore, train = _pair(tmp_path, tiny_model_dir, local_engine.base_url,
                           {"name": "gsm8k_buffer", "storage_type": "queue", "path": url})
    trained, explored = _run_both_jobs(tmp_path, explore, train)
    _check_trained_on_what_was_explored(explore, trained, explored)
    store = SqlStore(url, "gsm8k_buffer")
    assert store.count() == 24 and store.count(unread=True) == 0 and store.writers_done()


@pytest.mark.slow
def test_explore_and_train_jobs_share_a_postgresql_buffer(tmp_path, tiny_model_dir, local_engine, postgres):
    explore, train = _pair(tmp_path, tiny_model_dir, local_engine.base_url,
                           {"name": "pg_buffer", "storage_type": "sql", "path": postgres.url()})
    trained, explored = _run_both_jobs(tmp_path, explore, train)
    _check_trained_on_what_was_explored(explore, trained, explored)
    store = SqlStore(postgres.url(), "pg_buffer")
    assert store.count() == 24 and store.count(unread=True) == 0


@pytest.mark.slow
def test_explore_and_train_jobs_share_the_queue_file_in_the_job_directory(tmp_path, tiny_model_dir, local_engine):
    # a queue without a path between two jobs: Trinity's default file, buffer/<name>.jsonl
    explore, train = _pair(tmp_path, tiny_model_dir, local_engine.base_url, {"name": "q", "storage_type": "queue"})
    trained, explored = _run_both_jobs(tmp_path, explore, train)
    _check_trained_on_what_was_explored(explore, trained, explored)
    assert len(_records(job_dir(explore) / "buffer" / "q.jsonl")) == 24


def test_postgresql_store_hands_out_each_row_once_under_row_locks(postgres):
    writer, reader = SqlStore(postgres.url(), "unit"), SqlStore(postgres.url(), "unit")
    wid = writer.register_writer()
    writer.write([{"task_id": f"t{i}", "model_version": i, "reward": 0.0} for i in range(5)])
    assert [r["task_id"] for r in reader.take(3, reuse=False)] == ["t4", "t3", "t2"]
    assert reader.take(3, reuse=False) is None
    writer.finish_writer(wid)
    assert reader.writers_done() and reader.count(unread=True) == 2
    writer.close()
    reader.close()


@pytest.mark.slow
def test_bench_scores_the_base_model_and_every_saved_checkpoint(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=4, name="benched", save_interval=2,
                   explorer__eval_on_startup=False)
    assert run_cli(write_config(tmp_path / "train.yaml", cfg)).returncode == 0
    bench = json.loads(json.dumps(cfg))
    bench["mode"] = "bench"
    bench["explorer"]["eval_on_startup"] = True
    bench["buffer"]["explorer_input"]["eval_tasksets"] = [dict(bench["buffer"]["explorer_input"]["taskset"],
                                                               name="held_out")]
    proc = run_cli(write_config(tmp_path / "bench.yaml", bench))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _records(job_dir(cfg) / "benchmark" / "eval.jsonl")
    assert [line["step"] for line in lines] == [0, 2, 4]
    assert all(line["taskset"] == "held_out" and line["tasks"] == 32 for line in lines)
    assert "scored 3 checkpoint(s)" in proc.stdout
    # a second run scores nothing again
    again = run_cli(write_config(tmp_path / "bench.yaml", bench))
    assert again.returncode == 0 and "scored 0 checkpoint(s)" in again.stdout
    assert len(_records(job_dir(cfg) / "benchmark" / "eval.jsonl")) == 3


@pytest.mark.slow
def test_serve_answers_openai_requests_with_the_newest_weights_until_stopped(tmp_path, tiny_model_dir,
                                                                             local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=1, name="served")
    assert run_cli(write_config(tmp_path / "train.yaml", cfg)).returncode == 0
    serve = json.loads(json.dumps(cfg))
    serve["mode"] = "serve"
    serve["explorer"].update(listen_address="127.0.0.1", proxy_port=0, service_status_check_interval=1)
    proc = subprocess.Popen(rft("run", "--config", str(write_config(tmp_path / "serve.yaml", serve)),
                                "--no-progress", "--no-metrics"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    info_path = job_dir(cfg) / "serve" / "server.json"
    try:
        deadline = time.monotonic() + 120
        info: dict = {}
        while time.monotonic() < deadline and info.get("model_version") is None:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            if info_path.exists():
                info = json.loads(info_path.read_text() or "{}")
            time.sleep(0.2)
        assert info.get("model_version") == 1  # the trained job's last weights
        body = json.dumps({"messages": [{"role": "user", "content": "What is 2 plus 2?"}], "max_tokens": 4})
        request = urllib.request.Request(f"{info['base_url']}/chat/completions", data=body.encode(), method="POST",
                                         headers={"Authorization": f"Bearer {info['api_key']}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert answer["choices"][0]["token_ids"] and answer["usage"]["completion_tokens"] >= 1
        os.kill(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr[-3000:]
        assert "served the weights of step 1" in stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
