"""The job config: the seeds load unchanged, and every kind of mistake is named by its dotted path."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rft_runtime.config import ConfigError, load_config, load_config_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED_DIR = Path(__file__).resolve().parents[3] / "shared" / "seeds"


def seed(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def test_examples_are_the_seeds_unchanged():
    if not SEED_DIR.is_dir():
        pytest.skip(f"{SEED_DIR} is not beside the repo (it is in CI); the examples are checked there")
    for name in ("tinker.yaml", "tinker-snippet.yaml", "verl-lora.yaml"):
        assert (EXAMPLES / name).read_bytes() == (SEED_DIR / name).read_bytes(), name


def test_tinker_seed_resolves_to_documented_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRINITY_CHECKPOINT_ROOT_DIR", raising=False)
    cfg = load_config(EXAMPLES / "tinker.yaml")
    assert cfg.backend == "tinker"
    assert cfg.resolved_dict()["trainer"]["trainer_type"] == "tinker"
    t = cfg.model.tinker
    assert (t.rank, t.seed, t.train_mlp, t.train_attn, t.train_unembed) == (32, None, True, True, True)
    assert cfg.model.tinker_base_model == "meta-llama/Llama-3.2-3B"
    assert cfg.algorithm.algorithm_type == "grpo" and cfg.algorithm.repeat_times == 8
    assert cfg.algorithm.optimizer.lr == pytest.approx(1e-5)
    assert cfg.model.context_len == cfg.resolved_dict()["model"]["max_model_len"] == 1024 + 2048
    assert cfg.train_batch_size == 96 * 8
    assert (cfg.synchronizer.sync_interval, cfg.synchronizer.sync_offset) == (1, 1)
    # a relative root is resolved against the working directory; the job dir is root/project/group/name
    assert cfg.job_dir == tmp_path.resolve() / "checkpoints" / "Trinity-RFT-gsm8k" / "alignment-tinker" / (
        "tinker-llama3.2-3B-off1"
    )


def test_checkpoint_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRINITY_CHECKPOINT_ROOT_DIR", str(tmp_path / "ckpt"))
    cfg = load_config(EXAMPLES / "tinker.yaml")
    assert cfg.job_dir.parts[: len((tmp_path / "ckpt").parts)] == (tmp_path / "ckpt").parts


def test_snippet_overlays_defaults_and_a_verl_config():
    frag = load_config(EXAMPLES / "tinker-snippet.yaml", partial=True)
    assert frag.backend == "tinker" and frag.model.tinker.rank == 32 and frag.model.tinker.base_model is None
    # the seed document's recipe: take the veRL config and add the tinker block
    cfg = load_config([EXAMPLES / "verl-lora.yaml", EXAMPLES / "tinker-snippet.yaml"])
    assert cfg.backend == "tinker"
    assert cfg.model.tinker_base_model == cfg.model.model_path == "meta-llama/Llama-3.2-3B"
    assert cfg.sync_method == cfg.resolved_dict()["synchronizer"]["sync_method"] == "checkpoint"
    ignored = [w for w in cfg.warnings if "lora_configs" in w]
    assert len(ignored) == 1


def test_verl_seed_is_a_gpu_job():
    cfg = load_config(EXAMPLES / "verl-lora.yaml")
    assert cfg.backend == "verl"
    assert (cfg.cluster.node_num, cfg.cluster.gpu_per_node) == (1, 8)
    assert cfg.gpu_shape() == (1, 8)
    assert cfg.model.lora_configs[0].lora_rank == 32
    assert cfg.warnings == []


def _set(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def _drop(d: dict, dotted: str) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d[k]
    del d[keys[-1]]


# (what to change in the tinker seed, the path the error must name, a word the message must hold)
BROKEN = [
    ({"set": {"buffer.batch_sise": 96}}, "buffer.batch_sise", "batch_size"),
    ({"set": {"buffer.batch_size": 0}}, "buffer.batch_size", "greater than or equal to 1"),
    ({"set": {"buffer.batch_size": "many"}}, "buffer.batch_size", "integer"),
    ({"set": {"synchronizer.sync_interval": 0}}, "synchronizer.sync_interval", "greater"),
    ({"set": {"synchronizer.sync_offset": -1}}, "synchronizer.sync_offset", "greater"),
    ({"set": {"synchronizer.sync_method": "broadcast"}}, "synchronizer.sync_method", "checkpoint"),
    ({"set": {"synchronizer.sync_style": "eager"}}, "synchronizer.sync_style", "fixed"),
    ({"set": {"algorithm.optimizer.lr": -1e-5}}, "algorithm.optimizer.lr", "greater than 0"),
    ({"set": {"algorithm.optimizer.betas": [0.9, 1.5]}}, "algorithm.optimizer.betas[1]", "[0, 1)"),
    ({"set": {"algorithm.optimizer.lr_scheduler_type": "cosin"}}, "algorithm.optimizer.lr_scheduler_type",
     "cosine"),
    ({"set": {"algorithm.repeat_times": 0}}, "algorithm.repeat_times", "greater"),
    ({"set": {"algorithm.algorithm_type": "grpoo"}}, "algorithm.algorithm_type", "grpo"),
    # two letters swapped is one typo: grpo, not gspo (two letters differ)
    ({"set": {"algorithm.algorithm_type": "gpro"}}, "algorithm.algorithm_type", "did you mean 'grpo'"),
    ({"set": {"algorithm.algorithm_type": "ppo"}}, "algorithm.algorithm_type", "Supported on Tinker"),
    ({"set": {"algorithm.algorithm_type": "on_policy_distill"}}, "explorer.auxiliary_models", "teacher"),
    ({"set": {"algorithm.kl_loss_fn_args.kl_coef": -0.1}}, "algorithm.kl_loss_fn_args.kl_coef", ">= 0"),
    ({"set": {"mode": "bth"}}, "mode", "both"),
    ({"set": {"mode": "colocate"}}, "mode", "Tinker"),
    ({"set": {"monitor.monitor_type": "wandbb"}}, "monitor.monitor_type", "wandb"),
    ({"set": {"model.tinker.rnak": 8}}, "model.tinker.rnak", "rank"),
    ({"set": {"model.tinker.rank": 0}}, "model.tinker.rank", "greater"),
    ({"set": {"model.tinker.base_url": "ftp://x"}}, "model.tinker.base_url", "local"),
    ({"set": {"model.tinker.enable": "maybe"}}, "model.tinker.enable", "boolean"),
    ({"set": {"model.max_model_len": 2048}}, "model.max_model_len", "3072"),
    ({"set": {"model.top_p": 1.5}}, "model.top_p", "less than or equal"),
    ({"set": {"model.temperature": -1}}, "model.temperature", "greater"),
    ({"drop": ["model.model_path", "model.tinker.base_model"]}, "model.model_path", "required"),
    ({"drop": ["buffer.explorer_input.taskset.path"]}, "buffer.explorer_input.taskset.path", "path"),
    ({"set": {"buffer.explorer_input.default_workflow_type": "math_wrkflow"}},
     "buffer.explorer_input.default_workflow_type", "math_workflow"),
    ({"set": {"buffer.explorer_input.taskset.format.prompt_kye": "q"}},
     "buffer.explorer_input.taskset.format.prompt_kye", "prompt_key"),
    ({"set": {"buffer.explorer_input.taskset.storage_type": "s3"}},
     "buffer.explorer_input.taskset.storage_type", "file"),
    ({"set": {"explorer.runner_per_model": 0}}, "explorer.runner_per_model", "greater"),
    ({"set": {"explorer.rollout_model.engine_nm": 2}}, "explorer.rollout_model.engine_nm", "engine_num"),
    ({"set": {"trainer.save_interval": -5}}, "trainer.save_interval", "greater"),
    ({"set": {"trainer.grad_clip": -1.0}}, "trainer.grad_clip", "greater"),
    ({"set": {"trainer.trainer_type": "deepspeed"}}, "trainer.trainer_type", "tinker"),
    ({"set": {"cluster.node_num": -1}}, "cluster.node_num", "greater"),
    ({"set": {"continue_from_checkpont": False}}, "continue_from_checkpont", "continue_from_checkpoint"),
    ({"set": {"checkpoint_root_dir": "${oc.env:RFT_TEST_UNSET_VAR}"}}, "checkpoint_root_dir", "RFT_TEST_UNSET_VAR"),
    ({"set": {"stages": [{"stage_name": "warm", "algorithm": {"algorithm_type": "rloo", "repeat_times": -2}}]}},
     "stages[0].algorithm.repeat_times", "greater"),
    ({"set": {"stages": [{"algorithm": {"algorithm_type": "grpo"}}]}}, "stages[0].stage_name", "required"),
    ({"set": {"algorithm.advantage_fn_args": {"std_treshold": 1}}}, "algorithm.advantage_fn_args", "epsilon"),
    ({"set": {"algorithm.policy_loss_fn_args": {"clip_range_low": 1.5}}},
     "algorithm.policy_loss_fn_args.clip_range_low", "[0, 1)"),
]


@pytest.mark.parametrize(("change", "path", "word"), BROKEN, ids=[b[1] + ":" + b[2] for b in BROKEN])
def test_broken_config_names_its_path(change, path, word, monkeypatch):
    monkeypatch.delenv("RFT_TEST_UNSET_VAR", raising=False)
    data = seed("tinker.yaml")
    for dotted, value in change.get("set", {}).items():
        _set(data, dotted, value)
    for dotted in change.get("drop", []):
        _drop(data, dotted)
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    hits = [i for i in info.value.issues if i.path == path]
    assert hits, f"no issue at {path}: {info.value}"
    assert any(word.lower() in i.message.lower() for i in hits), info.value


def test_all_problems_are_reported_at_once():
    data = seed("tinker.yaml")
    _set(data, "buffer.batch_sise", 96)
    _set(data, "synchronizer.sync_interval", 0)
    _set(data, "algorithm.algorithm_type", "ppo")
    _set(data, "model.max_model_len", 10)
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    paths = {i.path for i in info.value.issues}
    assert {"buffer.batch_sise", "synchronizer.sync_interval", "algorithm.algorithm_type", "model.max_model_len"} <= paths


def test_veRL_backend_accepts_what_tinker_refuses():
    data = seed("verl-lora.yaml")
    _set(data, "algorithm.algorithm_type", "ppo")
    _set(data, "mode", "explore")
    cfg = load_config_dict(data)
    assert cfg.backend == "verl" and cfg.algorithm.algorithm_type == "ppo"


def test_invalid_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: both\nbuffer:\n  batch_size: [96\n  total_epochs: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "line 4" in str(info.value)


def test_sft_train_mode_needs_a_dataset(tmp_path):
    data = {
        "mode": "train",
        "algorithm": {"algorithm_type": "sft"},
        "model": {"model_path": str(tmp_path), "tinker": {"enable": True}},
        "buffer": {"trainer_input": {"experience_buffer": {"name": "sft", "storage_type": "file"}}},
    }
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    assert [i.path for i in info.value.issues] == ["buffer.trainer_input.experience_buffer.path"]
    data["buffer"]["trainer_input"]["experience_buffer"]["path"] = str(tmp_path / "sft.jsonl")
    assert load_config_dict(data).mode == "train"


def test_stages_expand_to_complete_configs():
    data = seed("tinker.yaml")
    data["stages"] = [
        {"stage_name": "warmup", "mode": "train", "algorithm": {"algorithm_type": "sft"},
         "buffer": {"total_steps": 2, "trainer_input": {"experience_buffer": {"storage_type": "file",
                                                                              "path": "sft.jsonl"}}}},
        {"stage_name": "rl", "algorithm": {"algorithm_type": "rloo"}},
    ]
    cfg = load_config_dict(data)
    stages = cfg.stage_configs()
    assert [s.stage_name for s in stages] == ["warmup", "rl"]
    assert stages[0].mode == "train" and stages[0].algorithm.algorithm_type == "sft"
    assert stages[0].buffer.total_steps == 2 and stages[0].algorithm.repeat_times == 8
    assert stages[1].mode == "both" and stages[1].algorithm.algorithm_type == "rloo"
    assert all(s.job_dir == cfg.job_dir for s in stages)


def test_a_stage_that_moves_the_model_moves_what_derives_from_it():
    data = seed("tinker.yaml")
    del data["model"]["tinker"]["base_model"]
    data["stages"] = [{"stage_name": "a"},
                      {"stage_name": "b", "model": {"model_path": "/models/other", "max_response_tokens": 10}}]
    a, b = load_config_dict(data).stage_configs()
    assert (a.model.tinker_base_model, a.model.context_len) == ("meta-llama/Llama-3.2-3B", 3072)
    assert (b.model.tinker_base_model, b.model.context_len) == ("/models/other", 1034)
    assert b.backend == "tinker" and b.sync_method == "checkpoint"
    # nothing derived was written into the job's config: a stage derives its own
    assert b.model.max_model_len is None and b.model.tinker.base_model is None


@pytest.mark.parametrize("var", ["TRINITY_API_KEY", "TINKER_API_KEY"])
def test_api_key_from_either_variable_never_shown(var, monkeypatch, tmp_path):
    from rft_runtime.config import tinker_api_key

    secret = "tml-SECRET-value-42"
    for v in ("TRINITY_API_KEY", "TINKER_API_KEY"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, secret)
    assert tinker_api_key() == secret
    # even a user who pastes the key (or a URL with a password) into the config does not see it printed
    data = seed("tinker.yaml")
    data["monitor"]["monitor_args"] = {"api_key": secret, "note": f"key={secret}"}
    data["model"]["tinker"]["base_url"] = "https://user:pw123@tinker.example/v1"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, var: secret}
    out = subprocess.run([sys.executable, "-m", "rft_runtime.cli", "config", "show", "-c", str(path)],
                         capture_output=True, text=True, env=env, check=True)
    assert secret not in out.stdout + out.stderr
    assert "pw123" not in out.stdout
    shown = yaml.safe_load(out.stdout)
    assert shown["model"]["tinker"]["rank"] == 32
    assert shown["model"]["tinker"]["base_model"] == "meta-llama/Llama-3.2-3B"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rft_runtime.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_validate_done_when(tmp_path):
    ok = _cli("validate", "--config", str(EXAMPLES / "tinker.yaml"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    for word in ("tinker", "grpo", "meta-llama/Llama-3.2-3B", "96 tasks x 8 rollouts", "Trinity-RFT-gsm8k"):
        assert word in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "tinker.yaml").read_text().replace("batch_size: 96", "batch_sise: 96"))
    res = _cli("validate", "--config", str(bad), cwd=tmp_path)
    assert res.returncode == 2
    assert "buffer.batch_sise" in res.stderr and "batch_size" in res.stderr


def test_validate_counts_steps_of_a_local_taskset(tmp_path):
    rows = tmp_path / "train.jsonl"
    rows.write_text("".join(json.dumps({"question": f"q{i}", "answer": "#### 1"}) + "\n" for i in range(250)))
    data = seed("tinker.yaml")
    data["buffer"]["explorer_input"]["taskset"]["path"] = str(rows)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    res = _cli("validate", "-c", str(path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 per epoch (250 rows)" in res.stdout  # batch 96, drop-last


def test_schema_is_json_with_every_section(tmp_path):
    res = _cli("config", "schema", cwd=tmp_path)
    schema = json.loads(res.stdout)
    for section in ("algorithm", "model", "cluster", "buffer", "explorer", "trainer", "monitor", "synchronizer",
                    "stages", "continue_from_checkpoint"):
        assert section in schema["properties"]


def test_validate_does_not_import_heavy_libraries():
    code = (
        "import sys, rft_runtime.cli as c; c.main(['config', 'schema']);"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'kubernetes', 'kopf', 'tinker') if m in sys.modules];"
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(1 if heavy else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_load_does_not_mutate_input():
    data = seed("tinker.yaml")
    before = copy.deepcopy(data)
    load_config_dict(data)
    assert data == before


def test_config_reference_doc_matches_the_models():
    from rft_runtime.config.reference import render

    doc = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert doc.read_text() == render(), "docs/config.md is stale: python -m rft_runtime.config.reference > docs/config.md"


def test_dpo_columns_are_honoured_not_listed_as_idle(tmp_path):
    data = seed("tinker.yaml")
    data["mode"] = "train"
    data["algorithm"] = {"algorithm_type": "dpo", "kl_loss_fn": "k1", "kl_loss_fn_args": {"kl_coef": 0.1}}
    data["buffer"]["trainer_input"] = {"experience_buffer": {
        "name": "pairs", "storage_type": "file", "path": str(tmp_path / "pairs.jsonl"),
        "format": {"prompt_type": "plaintext", "chosen_key": "good", "rejected_key": "bad"}}}
    cfg = load_config_dict(data)
    assert not any("chosen_key" in w or "rejected_key" in w for w in cfg.warnings), cfg.warnings
