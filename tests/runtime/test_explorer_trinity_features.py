"""Trinity 0.6 explorer features on the real local engine, through `rft run`: prompt truncation off, several
tasksets mixed per step, a taskset read from a SQL database (SQLite and PostgreSQL), over-rollout and the
dynamic rollout timeout. Each test reads what a user sees: metrics.jsonl, the job's output."""

from __future__ import annotations

import pytest
from test_run_support import job_dict, metrics, run_cli, write_config


@pytest.mark.slow
def test_prompt_truncation_off_samples_prompts_over_max_prompt_tokens(tmp_path, tiny_model_dir, local_engine):
    # the math workflow's system prompt alone is far over 16 tokens: with truncation on (Trinity's default) no
    # prompt is sampled and the job stops before step 1; off, every prompt that fits the context is sampled
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=2, name="cut")
    cfg["model"].update(max_prompt_tokens=16, max_model_len=900)
    on = run_cli(write_config(tmp_path / "on.yaml", cfg))
    assert on.returncode != 0 and "model.max_prompt_tokens (16)" in on.stderr, on.stderr[-2000:]
    cfg["name"] = "uncut"
    cfg["model"]["enable_prompt_truncation"] = False
    off = run_cli(write_config(tmp_path / "off.yaml", cfg))
    assert off.returncode == 0, off.stderr[-3000:]
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["truncated_prompts"] == 0 and r["rollouts"] == 8 for r in records)
    # every sampled prompt is longer than the limit that no longer applies: 8 rollouts of 2 prompts a step
    assert all(r["prompt_tokens"] > 8 * 16 for r in records)
