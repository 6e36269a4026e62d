"""`rft run` jobs against a real local engine: mode both (grpo), mode train (sft), the synchronizer's lag,
a GSM8K-format file through math_workflow, and the missing-API-key message."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from test_run_support import clean_env, job_dict, job_dir, metrics, run_cli, write_config, write_sft

from rft_runtime.backends.errors import BackendError
from rft_runtime.config import load_config, load_config_dict
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.job import run_job
from rft_runtime.monitor import read_metrics

SEED = Path(__file__).resolve().parents[2] / "examples" / "tinker.yaml"


def _run(cfg_dict):
    cfg = load_config_dict(cfg_dict)
    return run_job(cfg, metrics_port=None, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("offset", [0, 1])
def test_grpo_job_completes_with_the_lag_sync_offset_promises(tmp_path, tiny_model_dir, local_engine, offset):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=4, offset=offset,
                   name=f"grpo-off{offset}", save_interval=2)
    result = _run(cfg)
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert result.steps == 4 and result.sampler_path.startswith("tinker://")
    # offset 0: every batch sampled by the weights of the step before (on-policy); offset 1: one step behind
    assert [r["weight_version_lag"] for r in records] == [min(offset, s - 1) for s in (1, 2, 3, 4)]
    for r in records:
        assert r["rollouts"] == 2 * 4 and r["total_steps"] == 4
        assert r["critic/rewards/min"] <= r["critic/rewards/mean"] <= r["critic/rewards/max"]
        assert "rollout/accuracy/mean" in r and "rollout/format_score/mean" in r and "actor/pg_loss" in r
        assert r["response_tokens"] > 0 and r["learning_rate"] == pytest.approx(1e-3)
    book = json.loads((job_dir(cfg) / "checkpoint.json").read_text())
    assert book["latest"]["global_step"] == 4 and book["latest"]["state_path"].startswith("tinker://")
    assert [e["stage_step"] for e in book["history"]] == [2, 4]
    assert (job_dir(cfg) / "curves.png").exists()


@pytest.mark.slow
def test_sync_interval_two_samples_with_weights_at_most_one_interval_old(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=4, offset=0, name="interval2",
                   synchronizer__sync_interval=2, save_interval=1, trainer__max_checkpoints_to_keep=2)
    _run(cfg)
    # weights reach the sampler only after steps 2 and 4, so steps 2 and 4 sample one step behind
    assert [r["weight_version_lag"] for r in metrics(cfg)] == [0, 1, 0, 1]
    # a checkpoint every step, the two newest kept
    book = json.loads((job_dir(cfg) / "checkpoint.json").read_text())
    assert [e["stage_step"] for e in book["history"]] == [3, 4]
    assert len({e["state_path"] for e in book["history"]}) == 2


@pytest.mark.slow
def test_seed_config_pointed_at_a_local_model_and_gsm8k_file_trains(tmp_path, tiny_model_dir, local_engine):
    # the seed's tinker.yaml unchanged (Llama-3 chat template, wandb, offset 1), plus an overlay that points
    # it at local files and shrinks it to two small steps
    overlay = job_dict(tmp_path, tiny_model_dir, local_engine.base_url)
    small = {
        "checkpoint_root_dir": overlay["checkpoint_root_dir"],
        "model": {"model_path": str(tiny_model_dir), "max_response_tokens": 16,
                  "tinker": {"base_model": str(tiny_model_dir), "base_url": local_engine.base_url, "rank": 4}},
        "buffer": {"batch_size": 2, "total_steps": 2, "explorer_input": {"taskset": {
            "path": overlay["buffer"]["explorer_input"]["taskset"]["path"], "split": "train",
            "subset_name": None}}},
        "algorithm": {"repeat_times": 2},
    }
    cfg = load_config([SEED, write_config(tmp_path / "local.yaml", small)])
    result = run_job(cfg, metrics_port=None, progress=False)
    records = read_metrics(result.job_dir)
    assert [r["step"] for r in records] == [1, 2]
    assert [r["weight_version_lag"] for r in records] == [0, 1]
    assert all(r["rollouts"] == 4 for r in records)
    assert records[0]["prompt_tokens"] > 4 * len("<|start_header_id|>system<|end_header_id|>")


@pytest.mark.slow
def test_eval_tasksets_are_scored_on_startup_every_eval_interval_and_at_the_end(tmp_path, tiny_model_dir,
                                                                                local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="eval", steps=3, explorer__eval_interval=2)
    taskset = cfg["buffer"]["explorer_input"]["taskset"]
    cfg["buffer"]["explorer_input"]["eval_tasksets"] = [dict(taskset, name="held-out")]
    _run(cfg)
    lines = [json.loads(x) for x in (job_dir(cfg) / "eval.jsonl").read_text().splitlines()]
    assert [(x["step"], x["taskset"]) for x in lines] == [(0, "held-out"), (2, "held-out"), (3, "held-out")]
    assert all(x["tasks"] == 32 and 0 <= x["accuracy"] <= 1 for x in lines)
    assert [r["step"] for r in metrics(cfg)] == [1, 2, 3]  # eval results stay out of the train-step metrics


@pytest.mark.slow
def test_over_long_prompts_are_skipped_and_counted(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="long", steps=1, batch=8, repeat=2)
    cfg["buffer"]["explorer_input"]["taskset"]["format"]["system_prompt"] = "Solve."
    cfg["model"]["max_prompt_tokens"] = 60  # the short questions fit, the word problems do not
    _run(cfg)
    (record,) = metrics(cfg)
    assert 0 < record["truncated_prompts"] < 8
    assert record["rollouts"] == 2 * (8 - record["truncated_prompts"])


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["opmd", "rloo", "reinforceplusplus"])
def test_other_group_algorithms_train_on_tinker(tmp_path, tiny_model_dir, local_engine, algorithm):
    # a KL term too: reference logprobs from the base model's sampler and a client-side loss
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name=algorithm, steps=2,
                   algorithm__algorithm_type=algorithm, algorithm__kl_loss_fn_args={"kl_coef": 0.05})
    _run(cfg)
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["actor/kl_loss"] >= 0 for r in records)
    assert records[0]["actor/kl_loss"] == pytest.approx(0.0, abs=1e-6)  # step 1 trains from the reference weights


@pytest.mark.slow
def test_sft_train_job_lowers_the_loss(tmp_path, tiny_model_dir, local_engine):
    data = write_sft(tmp_path / "sft.jsonl")
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="sft", mode="train", steps=10,
                   batch=8, repeat=1, algorithm__algorithm_type="sft",
                   algorithm__optimizer={"lr": 3e-3, "lr_scheduler_type": "cosine", "lr_warmup_steps": 2,
                                         "min_lr_ratio": 0.1})
    cfg["buffer"]["trainer_input"] = {"experience_buffer": {
        "name": "sft", "storage_type": "file", "format": {"prompt_type": "plaintext"}, "path": str(data)}}
    _run(cfg)
    records = metrics(cfg)
    assert [r["step"] for r in records] == list(range(1, 11))
    losses = [r["actor/sft_loss"] for r in records]
    assert losses[-1] < losses[0] * 0.8, losses
    # linear warm-up over two steps, then cosine down to min_lr_ratio x lr at the last step
    lrs = [r["learning_rate"] for r in records]
    assert lrs[:2] == pytest.approx([1.5e-3, 3e-3])
    assert lrs[-1] == pytest.approx(3e-4)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert all(r["response_tokens"] > 0 for r in records)


@pytest.mark.slow
def test_gsm8k_file_through_math_workflow_scores_every_rollout(tmp_path, tiny_model_dir, local_engine):
    # one step, four tasks x two samples: every rollout is scored by the reference's math reward
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="gsm8k", steps=1, batch=4, repeat=2)
    _run(cfg)
    (record,) = metrics(cfg)
    assert record["rollouts"] == 8 and record["failed_rollouts"] == 0
    # a random tiny model never writes the think/answer shape: the format penalty is the whole reward
    assert record["rollout/format_score/mean"] == pytest.approx(-0.1)
    assert record["critic/rewards/mean"] == pytest.approx(record["rollout/accuracy/mean"] - 0.1)


@pytest.mark.slow
def test_reward_errors_are_counted_not_fatal(tmp_path, tiny_model_dir, local_engine, monkeypatch):
    # the reward breaks on the word problems (their answers show the working, "<<...>>"), not on the others
    (tmp_path / "user_rewards.py").write_text(
        "def broken(response, truth):\n    if '<<' in truth:\n        raise ValueError('a bug in the user reward')\n"
        "    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="bad-reward", steps=2, batch=8,
                   repeat=2)
    cfg["buffer"]["explorer_input"]["default_reward_fn_type"] = "user_rewards:broken"
    _run(cfg)
    records = metrics(cfg)
    # a batch of 8 from the seeded shuffle holds some of each: those replies count as failed, the job goes on
    assert len(records) == 2 and all(0 < r["failed_rollouts"] < 16 for r in records)
    assert all(r["critic/rewards/mean"] == 0 for r in records)
    # when every rollout of a step fails, the job is broken, not done: it stops with the first failure
    (tmp_path / "user_rewards.py").write_text(
        "def broken(response, truth):\n    raise ValueError('a bug in the user reward')\n")
    monkeypatch.delitem(sys.modules, "user_rewards", raising=False)
    cfg["name"] = "all-bad-reward"
    with pytest.raises(RunError, match="every rollout of explore step 1 failed.*ValueError: a bug in the user reward"):
        _run(cfg)
    assert not metrics(cfg)


@pytest.mark.slow
def test_a_request_the_server_refuses_ends_the_job_at_once_with_its_reason(tmp_path, tiny_model_dir, local_engine):
    # the tiny model's context is 1024 tokens: no retry can make a 2048-token budget fit
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="too-long", max_tokens=2048)
    started = time.monotonic()
    with pytest.raises(BackendError, match="refused by the server.*context.*max_response_tokens"):
        _run(cfg)
    assert time.monotonic() - started < 30


def test_a_broken_chat_template_fails_before_the_engine_starts(tmp_path, tiny_model_dir):
    cfg = job_dict(tmp_path, tiny_model_dir, "local", name="template")
    cfg["model"]["custom_chat_template"] = "{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}"
    with pytest.raises(RunError, match="model.custom_chat_template could not render.*no_such_filter"):
        _run(cfg)
    assert not (job_dir(cfg) / "engine.log").exists()


def test_missing_api_key_fails_before_any_work(tmp_path):
    cfg = job_dict(tmp_path, tmp_path, "http://127.0.0.1:9", name="nokey")
    del cfg["model"]["tinker"]["base_url"]  # null: the Tinker service
    started = time.monotonic()
    proc = run_cli(write_config(tmp_path / "job.yaml", cfg), env=clean_env())
    assert proc.returncode == 1
    assert "TRINITY_API_KEY" in proc.stderr and "TINKER_API_KEY" in proc.stderr
    assert "base_url: local" in proc.stderr
    assert not (job_dir(cfg) / "metrics.jsonl").exists()
    assert time.monotonic() - started < 30
