"""Data pipelines and data selectors in `rft run` jobs on the real local engine, and what `rft validate` says
about them (Trinity's own BOTS and task-pipeline examples included)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from test_run_support import clean_env, job_dict, job_dir, metrics, rft, run_cli, write_config
from workflow_plugins import write_plugin, write_rows

from rft_runtime.data import juicer

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "trinity-examples" / "examples"
SNIPPET = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "tinker-snippet.yaml"

# Trinity-API workflow: each task's row says what to do to its rollouts, so each operator has work
MARKED = '''
from trinity.common.workflows import WORKFLOWS, Workflow


@WORKFLOWS.register_module("marked")
class Marked(Workflow):
    def run(self):
        row = self.task.raw_task
        (exp,) = self.model.chat([{"role": "user", "content": str(row["question"])}], max_tokens=4)
        exp.reward = float("nan") if row["mark"] == "nan" else 1.0
        if row["mark"] == "truncated":
            exp.truncate_status = "response_truncated"
        if row["mark"] == "quality":
            exp.info["quality"] = 0.5
        return [exp]
'''


def _validate(*files: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(rft("validate", *[a for f in files for a in ("--config", str(f))]), capture_output=True,
                          text=True, env=env or clean_env(), timeout=120)


@pytest.mark.slow
def test_operators_and_an_easy_to_hard_selector_shape_what_each_step_trains(tmp_path, tiny_model_dir, local_engine):
    rows = [{"question": "What is 1 plus 1?", "answer": "#### 2", "mark": "nan", "easy": 0.2},
            {"question": "What is 2 plus 1?", "answer": "#### 3", "mark": "truncated", "easy": 0.9},
            {"question": "What is 3 plus 1?", "answer": "#### 4", "mark": "plain", "easy": 0.1},
            {"question": "What is 4 plus 1?", "answer": "#### 5", "mark": "quality", "easy": 0.8}]
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=2, batch=2, repeat=4, name="marked")
    ts = cfg["buffer"]["explorer_input"]["taskset"]
    ts["path"] = str(write_rows(tmp_path / "data" / "marked.jsonl", rows))
    ts["data_selector"] = {"selector_type": "offline_easy2hard", "feature_keys": ["easy"]}
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = "marked"
    saved = tmp_path / "pipeline-input.jsonl"
    cfg["data_processor"] = {"experience_pipeline": {"input_save_path": str(saved), "operators": [
        {"name": "invalid_reward_filter"},
        {"name": "mask_response_truncated"},
        {"name": "reward_shaping_mapper", "args": {"reward_shaping_configs": [
            {"stats_key": "quality", "op_type": "ADD", "weight": 2.0}]}},
        {"name": "pass_rate_calculator"}]}}
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "marked", MARKED)
    done = run_cli(write_config(tmp_path / "marked.yaml", cfg), "--plugin-dir", str(plugins))
    assert done.returncode == 0, done.stderr[-3000:]

    # the easiest rows first: rows 1 and 3, then 0 and 2; the input of the pipeline is kept as it came in
    kept = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [sorted({r["task_index"] for r in kept if r["explore_step"] == s}) for s in (1, 2)] == [[1, 3], [0, 2]]
    assert len(kept) == 16 and sum(r["reward"] is None for r in kept) == 4  # row 0's NaN rewards
    first, second = metrics(cfg)
    # step 1: row 1's four truncated replies stay but carry no loss; row 3's rewards gain 2 x 0.5
    assert first["experience_pipeline/masked_truncated_count"] == 4
    assert first["experience_pipeline/reward_diff/max"] == pytest.approx(1.0)
    assert first["experience_pipeline/experience_count"] == first["rollouts"] == 8
    assert first["critic/rewards/max"] == pytest.approx(2.0)
    # step 2: row 0's NaN rewards never reach the trainer, whose loss stays a number
    assert second["experience_pipeline/filtered_count"] == 4
    assert second["experience_pipeline/experience_count"] == second["rollouts"] == 4
    assert second["actor/pg_loss"] == second["actor/pg_loss"]  # not NaN
    assert "experience_pipeline/selection/valid_ratio" in first


@pytest.mark.slow
def test_a_bots_style_job_filters_groups_and_feeds_the_difficulty_selector(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=3, batch=2, repeat=4, name="bots")
    ts = cfg["buffer"]["explorer_input"]["taskset"]
    rows = [dict(json.loads(line), weak=0.1 * (i % 5), strong=0.1 * (i % 5) + 0.4)
            for i, line in enumerate(Path(ts["path"]).read_text().splitlines())]
    ts["path"] = str(write_rows(tmp_path / "data" / "bots.jsonl", rows))
    ts["data_selector"] = {"selector_type": "difficulty_based", "feature_keys": ["weak", "strong"],
                           "kwargs": {"m": 4, "lamb": 0.1, "rho": 0.1, "target_reward": 0.5, "tau": 0,
                                      "do_sample": True}}
    # the pass rates of every task teach the selector; then groups of equal rewards are left out
    cfg["data_processor"] = {"experience_pipeline": {"operators": [
        {"name": "pass_rate_calculator"}, {"name": "reward_std_filter"}]}}
    done = run_cli(write_config(tmp_path / "bots.yaml", cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        count = r["experience_pipeline/experience_count"]
        # what the trainer trained on is what the filter kept, every group of equal rewards left out
        assert count == r["rollouts"] and count + r["experience_pipeline/operator_filtered_count"] == 8
        assert 0 <= r["experience_pipeline/selection/valid_ratio"] <= 1
    # save_input's default: Trinity's sqlite database in the job's buffer folder, every rollout of every step
    with sqlite3.connect(job_dir(cfg) / "buffer" / "explorer_output.db") as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT explore_step) FROM experiences").fetchone() == (24, 3)


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="Trinity's examples are in ../shared/trinity-examples (CI has it)")
def test_trinitys_bots_and_task_pipeline_examples_validate_with_the_tinker_block():
    for example in ("bots/bots.yaml", "grpo_gsm8k_task_pipeline/gsm8k.yaml"):
        done = _validate(EXAMPLES / example, SNIPPET, env=clean_env(TRINITY_TASKSET_PATH="/nonexistent/t.jsonl"))
        assert done.returncode == 0, done.stderr
        assert "data_processor" not in "".join(line for line in done.stderr.splitlines()
                                               if line.startswith("warning: no effect"))


@pytest.mark.parametrize(("section", "path", "said"), [
    ({"data_processor": {"experience_pipeline": {"operators": [{"name": "reward_filtr"}]}}},
     "data_processor.experience_pipeline.operators[0].name", "Trinity-RFT's:"),
    ({"data_processor": {"experience_pipeline": {"operators": [{"name": "reward_filter", "args": {"treshold": 1}}]}}},
     "data_processor.experience_pipeline.operators[0].args", "does not take these args"),
    ({"buffer": {"explorer_input": {"taskset": {"data_selector": {"selector_type": "hardest_first"}}}}},
     "buffer.explorer_input.taskset.data_selector.selector_type", "unknown selector 'hardest_first'"),
    ({"model": {"external_model": {"enable": True, "model_name": "gpt"}}},
     "model.external_model.enable", "only in mode bench"),
    ({"explorer": {"auxiliary_models": [{"model_path": "judge", "engine_type": "external"}]}},
     "explorer.auxiliary_models[0].external_model_config.model_name", "is required"),
])
def test_validate_names_the_field_of_a_pipeline_selector_or_endpoint_it_cannot_run(tmp_path, tiny_model_dir,
                                                                                   section, path, said):
    from rft_runtime.config import deep_merge

    cfg = deep_merge(job_dict(tmp_path, tiny_model_dir, "local"), section)
    done = _validate(write_config(tmp_path / "bad.yaml", cfg))
    assert done.returncode == 2
    line = next((x for x in done.stderr.splitlines() if x.strip().startswith(path)), "")
    assert said in line, done.stderr


@pytest.mark.skipif(juicer.available(), reason="py-data-juicer is installed here: the run tests below use it")
def test_without_data_juicer_validate_warns_and_run_stops_before_step_one(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="dj")
    cfg["data_processor"] = {"experience_pipeline": {"operators": [
        {"name": "data_juicer", "args": {"operators": [{"text_length_filter": {"min_len": 1}}]}}]}}
    path = write_config(tmp_path / "dj.yaml", cfg)
    checked = _validate(path)
    assert checked.returncode == 0
    assert "py-data-juicer is not installed" in checked.stderr and "rft-platform[datajuicer]" in checked.stderr
    done = run_cli(path)
    assert done.returncode == 1
    assert "data_processor.experience_pipeline.operators[0] runs Data-Juicer" in done.stderr
    assert "rft-platform[datajuicer]" in done.stderr
    assert not job_dir(cfg).exists()  # stopped before anything was made


needs_juicer = pytest.mark.skipif(not juicer.available(), reason=(
    "py-data-juicer is not installed (pip install '.[datajuicer]'; it pins dill 0.3.8, so a virtual "
    "environment keeps it apart): these run where it is, e.g. python -m venv --system-site-packages .venv"))


@pytest.mark.slow
@needs_juicer
def test_data_juicer_filters_each_steps_experiences_and_its_stats_shape_the_reward(tmp_path, tiny_model_dir,
                                                                                  local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=2, name="dj-run", max_tokens=8)
    cfg["data_processor"] = {"experience_pipeline": {"operators": [
        # replies of 5 characters or more pass; text_len lands in info, where the mapper reads it
        {"name": "data_juicer", "args": {"np": 1, "operators": [
            {"text_length_filter": {"min_len": 5, "text_key": "response_text"}}]}},
        {"name": "reward_shaping_mapper", "args": {"reward_shaping_configs": [
            {"stats_key": "text_len", "op_type": "ADD", "weight": 0.01}]}}]}}
    done = run_cli(write_config(tmp_path / "dj.yaml", cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    with sqlite3.connect(job_dir(cfg) / "buffer" / "explorer_output.db") as db:
        lengths = [len(json.loads(d)["response_text"]) for (d,) in db.execute("SELECT data FROM experiences")]
    records = metrics(cfg)
    kept = sum(r["experience_pipeline/experience_count"] for r in records)
    assert kept == sum(1 for n in lengths if n >= 5) and kept == sum(r["rollouts"] for r in records)
    assert sum(r["experience_pipeline/filtered_count"] for r in records) == sum(1 for n in lengths if n < 5)
    shaped = [r for r in records if r["experience_pipeline/experience_count"]]
    assert shaped and all(r["experience_pipeline/reward_diff/min"] >= 0.05 - 1e-9 for r in shaped)


@pytest.mark.slow
@needs_juicer
def test_the_task_pipeline_writes_the_taskset_the_job_then_trains_on(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=2, name="tp")
    raw = cfg["buffer"]["explorer_input"]["taskset"]["path"]
    out_dir = tmp_path / "made-tasks"
    cfg["buffer"]["explorer_input"]["taskset"]["path"] = str(out_dir)
    # keep only the questions of 40 characters or more (the word problems), longest... by priority order
    cfg["data_processor"] = {"task_pipeline": {"inputs": [raw], "target_fields": ["question"], "num_process": 1,
                                               "operators": [{"name": "text_length_filter",
                                                              "args": {"min_len": 40}}]}}
    path = write_config(tmp_path / "tp.yaml", cfg)
    done = run_cli(path)
    assert done.returncode == 0, done.stderr[-3000:]
    made = [json.loads(line) for line in (out_dir / "output.jsonl").read_text().splitlines()]
    assert made and all(len(r["question"]) >= 40 for r in made)
    assert len(made) == sum(1 for line in Path(raw).read_text().splitlines()
                            if len(json.loads(line)["question"]) >= 40)
    assert [r["step"] for r in metrics(cfg)] == [1, 2]
    # a new job over the same output folder would overwrite it: refused, as in Trinity
    cfg["name"] = "tp-again"
    again = run_cli(write_config(tmp_path / "tp2.yaml", cfg))
    assert again.returncode == 1 and "already exists" in again.stderr
