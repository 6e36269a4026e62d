"""Short real jobs on the local engine: each family of losses trains and logs its own terms under
Trinity's metric names (the maths itself is checked against hand-computed values in test_algorithms.py).

The tiny random model's answers are never right, so the jobs score them with a user reward function that
varies with the response (as a user's own `module:function` reward would): groups then have distinct
rewards and every step trains.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.runtime.test_run_support import clean_env, job_dict, metrics, run_cli, write_config

REWARD_MODULE = '''
def reward(response):
    """Varies with the response, so a group of rollouts has distinct rewards."""
    return {"accuracy": (len(response) % 3) / 2.0}
'''


CONSTANT_REWARD_MODULE = '''
def reward(response):
    """The same for every response: every group's rewards are equal, so every advantage is 0."""
    return {"accuracy": 1.0}
'''


def run_job(tmp_path: Path, cfg: dict, reward: str = REWARD_MODULE) -> list[dict]:
    """Run `cfg` with the varying reward (or `reward`'s) to the end; its metrics records."""
    run_job_cli(tmp_path, cfg, reward)
    return metrics(cfg)


def run_job_cli(tmp_path: Path, cfg: dict, reward: str = REWARD_MODULE):
    """Run `cfg` with the reward module `reward` to the end; the finished `rft run`."""
    (tmp_path / "lenreward.py").write_text(reward)
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = "simple_workflow"
    cfg["buffer"]["explorer_input"]["default_reward_fn_type"] = "lenreward:reward"
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    res = run_cli(write_config(tmp_path / f"{cfg['name']}.yaml", cfg), env=clean_env(PYTHONPATH=path))
    assert res.returncode == 0, res.stderr[-3000:]
    return res


COMMON = ["critic/rewards/mean", "critic/advantages/mean", "response_length/mean", "rollout/accuracy/mean",
          "grad_norm", "learning_rate", "actor/pg_loss", "time/step"]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, extra, terms", [
    # Tinker's built-in ppo loss, one pass: clip fraction and approximate KL from the returned logprobs
    ("grpo", {}, ["actor/pg_clipfrac", "actor/ppo_kl"]),
    # a client-side loss: gspo's sequence ratio with a k2 KL term and an entropy bonus
    ("gspo", {"algorithm__kl_loss_fn": "k2", "algorithm__kl_loss_fn_args": {"kl_coef": 0.05},
              "algorithm__entropy_loss_fn_args": {"entropy_coef": 0.01},
              "algorithm__loss_agg_mode": "seq-mean-token-mean"},
     ["actor/pg_clipfrac", "actor/kl_loss", "actor/entropy_loss"]),
    # raft: cross-entropy on the rollouts themselves
    ("raft", {}, ["actor/sft_loss"]),
])
def test_algorithm_trains_and_logs_its_terms(tmp_path, tiny_model_dir, local_engine, algorithm, extra, terms):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name=algorithm, steps=2,
                   algorithm__algorithm_type=algorithm, **extra)
    records = run_job(tmp_path, cfg)
    assert [r["step"] for r in records] == [1, 2]
    expected = [k for k in COMMON if not (algorithm == "raft" and k in ("critic/advantages/mean", "actor/pg_loss"))]
    for key in terms + expected:
        assert all(key in r for r in records), (key, sorted(records[-1]))
    assert all(r["grad_norm"] > 0 for r in records)
    if "actor/kl_loss" in terms:
        assert records[0]["actor/kl_loss"] == pytest.approx(0.0, abs=1e-6)  # step 1 is the reference
        assert records[1]["actor/kl_loss"] > 0


@pytest.mark.slow
def test_dpo_trains_on_pairs_and_prefers_the_chosen(tmp_path, tiny_model_dir, local_engine):
    import json

    rows = [{"prompt": f"{i}+1=?", "chosen": f"{i + 1}", "rejected": f"{i + 2} or so"} for i in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="dpo", mode="train", steps=4, batch=4,
                   repeat=1, algorithm__algorithm_type="dpo", algorithm__optimizer={"lr": 1e-2},
                   algorithm__policy_loss_fn_args={"beta": 0.5})
    cfg["buffer"]["trainer_input"] = {"experience_buffer": {
        "name": "pairs", "storage_type": "file", "path": str(data), "format": {"prompt_type": "plaintext"}}}
    res = run_cli(write_config(tmp_path / "dpo.yaml", cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # step 1 trains from the reference weights: z = 0, loss log 2; training moves the margin to the chosen
    assert records[0]["actor/dpo_loss"] == pytest.approx(0.693147, rel=1e-4)
    assert records[-1]["actor/dpo_loss"] < records[0]["actor/dpo_loss"]
    assert records[-1]["actor/chosen_reward"] > records[-1]["actor/rejected_reward"]
    assert all(r["grad_norm"] > 0 for r in records)


@pytest.mark.slow
def test_on_policy_distill_fetches_the_teachers_logprobs_token_by_token(tmp_path, tiny_model_dir, local_engine):
    # the teacher is the base model itself (the local engine serves one): at step 1 the student is the
    # teacher, so every per-token advantage teacher - sampler is ~0; a misaligned token would show at once
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="opd", steps=1,
                   algorithm__algorithm_type="on_policy_distill")
    cfg["explorer"]["auxiliary_models"] = [{"model_path": str(tiny_model_dir)}]
    (record,) = run_job(tmp_path, cfg)
    assert abs(record["critic/advantages/min"]) < 1e-3 and abs(record["critic/advantages/max"]) < 1e-3
    assert record["response_tokens"] > 0


@pytest.mark.slow
def test_cpt_trains_on_raw_text(tmp_path, tiny_model_dir, local_engine):
    import json

    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": "the quick brown fox jumps over the lazy dog"}) + "\n"
                            for _ in range(16)))
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="cpt", mode="train", steps=4, batch=4,
                   repeat=1, algorithm__algorithm_type="cpt", algorithm__optimizer={"lr": 1e-2})
    cfg["buffer"]["trainer_input"] = {"experience_buffer": {
        "name": "text", "storage_type": "file", "path": str(data),
        "format": {"prompt_type": "plaintext", "prompt_key": "text"}}}
    res = run_cli(write_config(tmp_path / "cpt.yaml", cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # every token after the first is a target: the byte-level tiny tokenizer gives one per character or more
    assert all(r["response_tokens"] >= 4 * 40 for r in records)
    losses = [r["actor/sft_loss"] for r in records]
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_mix_adds_expert_sft_data_to_every_rl_step(tmp_path, tiny_model_dir, local_engine):
    from tests.runtime.test_run_support import write_sft

    expert = write_sft(tmp_path / "expert.jsonl", n=16)
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="mix", steps=2,
                   algorithm__algorithm_type="mix", algorithm__sample_strategy_args={"expert_data_ratio": 0.25})
    cfg["buffer"]["trainer_input"] = {"auxiliary_buffers": {"sft_dataset": {
        "name": "sft_dataset", "storage_type": "file", "path": str(expert),
        "format": {"prompt_type": "plaintext"}}}}
    records = run_job(tmp_path, cfg)
    assert [r["step"] for r in records] == [1, 2]
    # ceil(0.25 x 2 tasks x 4 rollouts) = 2 expert rows a step, with their own cross-entropy term
    assert all(r["expert_rows"] == 2 and r["actor/sft_loss"] > 0 for r in records)
    assert all("actor/pg_loss" in r and "actor/pg_clipfrac" in r and r["grad_norm"] > 0 for r in records)


@pytest.mark.slow
def test_mix_chord_schedules_mu_and_weighs_the_expert_tokens(tmp_path, tiny_model_dir, local_engine):
    from tests.runtime.test_run_support import write_sft

    expert = write_sft(tmp_path / "expert.jsonl", n=16)
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="chord", steps=3,
                   algorithm__algorithm_type="mix_chord", algorithm__sample_strategy_args={"expert_data_ratio": 0.25},
                   algorithm__policy_loss_fn_args={"mu_warmup_steps": 2, "mu_decay_steps": 2, "mu_peak": 0.5,
                                                   "mu_valley": 0.1, "clip_range": 0.2})
    cfg["buffer"]["trainer_input"] = {"auxiliary_buffers": {"sft_dataset": {
        "name": "sft_dataset", "storage_type": "file", "path": str(expert), "format": {"prompt_type": "plaintext"}}}}
    records = run_job(tmp_path, cfg)
    assert [r["step"] for r in records] == [1, 2, 3]
    # CHORD's schedule over the steps: warm-up to the peak at step 2, then cosine decay towards the valley
    assert [r["actor/mu"] for r in records] == pytest.approx([0.25, 0.5, 0.3])
    assert all(r["expert_rows"] == 2 and r["actor/expert/sft_phi_loss"] > 0 for r in records)
    assert all("actor/usual/pg_loss" in r and r["grad_norm"] > 0 for r in records)


@pytest.mark.slow
def test_dpo_trains_a_kl_term_against_the_reference(tmp_path, tiny_model_dir, local_engine):
    import json

    rows = [{"prompt": f"{i}+1=?", "chosen": f"{i + 1}", "rejected": f"{i + 2} or so"} for i in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Trinity's dpo_humanlike example: k1 with kl_coef 0.1
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="dpokl", mode="train", steps=3, batch=4,
                   repeat=1, algorithm__algorithm_type="dpo", algorithm__optimizer={"lr": 1e-2},
                   algorithm__kl_loss_fn="k1", algorithm__kl_loss_fn_args={"kl_coef": 0.1})
    cfg["buffer"]["trainer_input"] = {"experience_buffer": {
        "name": "pairs", "storage_type": "file", "path": str(data), "format": {"prompt_type": "plaintext"}}}
    res = run_cli(write_config(tmp_path / "dpokl.yaml", cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["actor/kl_coef"] == 0.1 for r in records)
    # step 1 trains from the reference weights (KL 0); then the policy has moved away from it
    assert records[0]["actor/kl_loss"] == pytest.approx(0.0, abs=1e-5)
    assert records[-1]["actor/kl_loss"] != pytest.approx(0.0, abs=1e-5)
    assert all(r["actor/final_loss"] == pytest.approx(r["actor/dpo_loss"] + 0.1 * r["actor/kl_loss"], rel=1e-4)
               for r in records)


@pytest.mark.slow
@pytest.mark.parametrize("entropy_coef", [0.0, 0.05])
def test_a_batch_of_zero_advantages_still_takes_the_optimizer_step(tmp_path, tiny_model_dir, local_engine,
                                                                   entropy_coef):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name=f"zero{entropy_coef}", steps=2,
                   algorithm__entropy_loss_fn_args={"entropy_coef": entropy_coef})
    res = run_job_cli(tmp_path, cfg, CONSTANT_REWARD_MODULE)
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["critic/advantages/max"] == 0 == r["critic/advantages/min"] for r in records)
    # the optimizer step ran (its grad_norm is logged), as in Trinity
    assert all("grad_norm" in r for r in records), sorted(records[0])
    if entropy_coef:
        # the entropy term trains whatever the advantages
        assert all(r["grad_norm"] > 0 and "actor/entropy_loss" in r for r in records)
    else:
        assert all(r["grad_norm"] == 0 for r in records)
        assert res.stderr.count("every advantage is 0") == 2, res.stderr[-3000:]
