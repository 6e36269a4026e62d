"""Trinity-RFT 0.6 is the config contract: its own example files load, its schema is covered, and what the
Tinker backend does not honour is refused with the reason rather than silently accepted."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rft_runtime import cli
from rft_runtime.config import ConfigError, load_config, load_config_dict
from rft_runtime.config.catalog import is_import_path, split_import_path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TRINITY_EXAMPLES = ROOT.parent / "shared" / "trinity-examples"
SNIPPET = EXAMPLES / "tinker-snippet.yaml"
EXAMPLE_FILES = sorted(TRINITY_EXAMPLES.rglob("*.yaml")) if TRINITY_EXAMPLES.is_dir() else []
# the variables Trinity's examples use without a default (see that folder's README)
ENV_VARS = ("TRINITY_CHECKPOINT_ROOT_DIR", "TRINITY_TASKSET_PATH", "TRINITY_MODEL_PATH",
            "TRINITY_SFT_DATASET_PATH", "TRINITY_EVAL_TASKSET_PATH")


@pytest.fixture
def trinity_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ENV_VARS:
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    return tmp_path


def _needs_examples():
    if not EXAMPLE_FILES:
        pytest.skip(f"{TRINITY_EXAMPLES} is not beside the repo (it is in CI)")


def _rel(path: Path) -> str:
    return str(path.relative_to(TRINITY_EXAMPLES)) if TRINITY_EXAMPLES in path.parents else path.name


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[_rel(p) for p in EXAMPLE_FILES])
def test_every_trinity_example_validates(path, trinity_env, capsys):
    assert cli.main(["validate", "-c", str(path)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[_rel(p) for p in EXAMPLE_FILES])
def test_every_trinity_example_with_the_tinker_block_loads_or_is_refused_for_tinker(path, trinity_env):
    try:
        cfg = load_config([path, SNIPPET])
    except ConfigError as exc:
        about_tinker = [i for i in exc.issues if "Tinker" in i.message]
        # a template Trinity's own start-up would refuse too (no taskset path, a name no registry holds)
        others = [i for i in exc.issues if i not in about_tinker and not i.soft]
        # refused for Tinker, or only for what Trinity refuses too (guru_math's reward is a benchmark plugin's)
        assert not others, f"refused for reasons not about Tinker: {others}"
    else:
        assert cfg.backend == "tinker" and cfg.resolved_dict()["trainer"]["trainer_type"] == "tinker"


def test_most_common_trinity_job_loads_on_tinker(trinity_env):
    _needs_examples()
    cfg = load_config([TRINITY_EXAMPLES / "examples/grpo_gsm8k/gsm8k.yaml", SNIPPET])
    # Trinity turns nccl into checkpoint on Tinker, and so does this runtime, saying so
    assert cfg.sync_method == "checkpoint"
    assert any("nccl" in w for w in cfg.warnings)
    idle = [w for w in cfg.warnings if w.startswith("no effect on the Tinker backend")]
    assert "no effect on the Tinker backend: trainer.use_dynamic_bsz, trainer.max_token_len_per_gpu, " \
           "trainer.ulysses_sequence_parallel_size" in idle
    sections = [w.split(": ", 1)[1].split(".")[0] for w in idle]
    assert sorted(sections) == sorted(set(sections)) == ["cluster", "explorer", "trainer"]


def test_trinity_tinker_example_with_sync_method_memory_loads(trinity_env):
    _needs_examples()
    cfg = load_config(TRINITY_EXAMPLES / "examples/tinker/tinker.yaml")
    assert cfg.backend == "tinker" and cfg.sync_method == "memory"
    assert cfg.logging_level == "INFO"


# ---------------------------------------------------------------- schema coverage


def _trinity_wheel(tmp_path_factory) -> Path | None:
    given = os.environ.get("RFT_TRINITY_WHEEL")
    candidates = [given] if given else []
    candidates += glob.glob("/work/trinity/trinity_rft-0.6.0-*.whl")
    candidates += glob.glob(os.path.expanduser("~/.cache/pip/**/trinity_rft-0.6.0-*.whl"), recursive=True)
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    dest = tmp_path_factory.mktemp("wheel")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "trinity-rft==0.6.0",
                        "-d", str(dest)], check=True, timeout=180, capture_output=True)
    except (subprocess.SubprocessError, OSError):
        return None
    found = sorted(dest.glob("trinity_rft-0.6.0-*.whl"))
    return found[0] if found else None


def _our_field(path: str):
    """(section class, field info) of a Trinity field path in our models."""
    from pydantic import BaseModel

    from rft_runtime.config.models import JobConfig
    from rft_runtime.config.paths import unwrap

    cls: type[BaseModel] = JobConfig
    parts = path.replace("[]", "").split(".")
    for i, part in enumerate(parts):
        if part == "*":
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return cls, None
        if i == len(parts) - 1:
            return cls, field
        inner = [c for c in unwrap(field.annotation) if isinstance(c, type) and issubclass(c, BaseModel)]
        assert inner, f"{path}: {part} is not a section here"
        cls = inner[0]
    raise AssertionError(path)


def test_every_trinity_field_path_is_known_with_trinitys_default(tmp_path_factory):
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    from rft_runtime.config.models import DEFAULT_DIFFERENCES
    from rft_runtime.config.trinity_schema import SECTION, Source, _inner_classes, field_paths, read_schema

    wheel = _trinity_wheel(tmp_path_factory)
    if wheel is None:
        pytest.skip("Trinity-RFT 0.6.0's wheel is neither cached nor downloadable here (no registry access); "
                    "set RFT_TRINITY_WHEEL to it, as CI does by `pip download --no-deps trinity-rft==0.6.0`")
    classes, _ = read_schema(Source(wheel))
    owners = {}
    for name, fields in classes.items():
        for f in fields:
            owners[id(f)] = name
    checked, missing, wrong = 0, [], []
    for path, tf in field_paths(classes):
        checked += 1
        owner = owners[id(tf)]
        cls, field = _our_field(path)
        if field is None:
            missing.append(path)
            continue
        if path in DEFAULT_DIFFERENCES or f"{owner}.{tf.name}" in DEFAULT_DIFFERENCES:
            continue
        if field.default is not PydanticUndefined:
            ours = field.default
        else:
            ours = field.default_factory()
        if tf.default == SECTION:
            inner, _ = _inner_classes(tf.annotation, classes)
            ok = isinstance(ours, BaseModel) and getattr(type(ours), "trinity_name", None) == inner
        else:
            ok = ours == tf.default
        if not ok:
            wrong.append(f"{path}: ours {ours!r}, Trinity's {tf.default!r}")
    print(f"schema coverage: {checked} field paths of Trinity 0.6.0, {len(missing)} missing, {len(wrong)} differ")
    assert not missing, missing
    assert not wrong, wrong
    assert checked > 700


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["pkg.mod.MyWorkflow", "pkg.mod:MyWorkflow", "examples.bots.workflow.W"])
def test_user_code_paths_in_both_forms(name):
    assert is_import_path(name)
    module, attr = split_import_path(name)
    assert attr in ("MyWorkflow", "W") and "." not in attr


@pytest.mark.parametrize("name", ["math_workflow", "pkg.", ":Cls", "pkg.1mod.Cls", "pkg.mod:Cls.inner"])
def test_names_that_are_not_import_paths(name):
    assert not is_import_path(name)


def _tinker_job(**algorithm) -> dict:
    data = yaml.safe_load((EXAMPLES / "tinker.yaml").read_text())
    data["algorithm"].update(algorithm)
    return data


def test_veRL_accepts_every_name_trinity_registers():
    from rft_runtime.config.trinity_facts import REGISTRIES

    data = yaml.safe_load((EXAMPLES / "verl-lora.yaml").read_text())
    for algo in REGISTRIES["algorithms"]:
        data["algorithm"]["algorithm_type"] = algo
        for wf in REGISTRIES["workflows"][:: 5]:
            data["buffer"]["explorer_input"]["default_workflow_type"] = wf
            data["buffer"]["explorer_input"]["default_reward_fn_type"] = REGISTRIES["reward_fns"][1]
            cfg = load_config_dict(data)
            assert cfg.backend == "verl" and not [w for w in cfg.warnings if "unknown" in w]


def test_tinker_accepts_every_name_trinity_registers():
    from rft_runtime.config.trinity_facts import REGISTRIES

    assert len(REGISTRIES["workflows"]) == 37 and len(REGISTRIES["reward_fns"]) == 6
    data = _tinker_job()
    ei = data["buffer"]["explorer_input"]
    data["explorer"]["auxiliary_models"] = [{"model_path": "Qwen/Qwen3-8B"}]
    for wf in REGISTRIES["workflows"]:
        ei["taskset"]["default_workflow_type"] = wf
        ei["taskset"]["workflow_args"] = {"judge_model_name": "judge"}
        data["model"]["tinker"]["base_url"] = None
        load_config_dict(data)
    for reward in REGISTRIES["reward_fns"]:
        ei["taskset"]["default_reward_fn_type"] = reward
        load_config_dict(data)


def test_an_environment_workflow_without_its_package_is_a_warning_naming_the_install():
    data = _tinker_job()
    data["buffer"]["explorer_input"]["taskset"]["default_workflow_type"] = "alfworld_workflow"
    cfg = load_config_dict(data)
    (warning,) = [w for w in cfg.warnings if "alfworld_workflow" in w]
    assert warning.startswith("buffer.explorer_input.taskset.default_workflow_type: ")
    assert "pip install 'rft-platform[trinity]' alfworld textworld" in warning and "before step 1" in warning


def test_unknown_name_on_veRL_is_a_warning_with_a_suggestion():
    data = yaml.safe_load((EXAMPLES / "verl-lora.yaml").read_text())
    data["buffer"]["explorer_input"]["default_workflow_type"] = "math_boxed_wrokflow"
    cfg = load_config_dict(data)
    assert any("math_boxed_workflow" in w and "unknown workflow" in w for w in cfg.warnings)


@pytest.mark.parametrize(("key", "value", "hint"), [
    ("sppo", None, None), ("trainer.trainer_strategy", "megatron", None),
    ("explorer.max_repeat_times_per_runner", 4, None), ("trainer.trainer_stratgy", "x", "trainer_strategy"),
])
def test_valid_trinity_keys_load_and_only_unknown_ones_get_a_suggestion(key, value, hint):
    data = yaml.safe_load((EXAMPLES / "verl-lora.yaml").read_text())
    if value is None:
        data["algorithm"]["algorithm_type"] = key
        assert load_config_dict(data).algorithm.algorithm_type == key
        return
    section, name = key.split(".")
    data.setdefault(section, {})[name] = value
    if hint is None:
        assert getattr(getattr(load_config_dict(data), section), name) == value
        return
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    assert f"did you mean '{hint}'" in str(info.value)


# ---------------------------------------------------------------- Tinker refusals


@pytest.mark.parametrize(("change", "path"), [
    # rloo computes its advantages in Trinity's trainer, which would put this KL penalty on the rewards
    ({"algorithm_type": "rloo", "kl_penalty_fn": "k3"}, "algorithm.kl_penalty_fn"),
    ({"advantage_fn": "remax"}, "algorithm.advantage_fn"),
])
def test_what_would_train_differently_on_tinker_is_refused_with_the_reason(change, path):
    with pytest.raises(ConfigError) as info:
        load_config_dict(_tinker_job(**change))
    hits = [i for i in info.value.issues if i.path == path]
    assert hits and "Tinker" in hits[0].message and ":" in hits[0].message, info.value


@pytest.mark.parametrize("change", [
    {"policy_loss_fn": "gspo"}, {"entropy_loss_fn_args": {"entropy_coef": 0.01}},
    {"loss_agg_mode": "seq-mean-token-sum"}, {"sample_strategy": "warmup"},
    {"kl_loss_fn": "k2", "kl_loss_fn_args": {"kl_coef": 0.01}},
])
def test_loss_settings_the_runtime_trains_load_on_tinker(change):
    # each of these trains on Tinker (tests/runtime/test_algorithms.py checks the maths)
    cfg = load_config_dict(_tinker_job(**change))
    for key, value in change.items():
        assert getattr(cfg.algorithm, key) == value


def test_what_the_runtime_does_is_accepted_when_written_out():
    cfg = load_config_dict(_tinker_job(policy_loss_fn="ppo", advantage_fn="grpo", kl_loss_fn="low_var_kl",
                                       kl_loss_fn_args={"kl_coef": 0.01}, loss_agg_mode="token-mean",
                                       entropy_loss_fn="default", sample_strategy="default"))
    assert cfg.algorithm.kl_coef == 0.01


@pytest.mark.parametrize(("written", "read"), [("dynamic_by_explorer", "explorer_driven"),
                                                ("Dynamic_By_Trainer", "trainer_driven"), ("fully_async", "fully_async")])
def test_every_sync_style_loads_on_tinker_under_trinitys_names(written, read):
    data = _tinker_job()
    data["synchronizer"]["sync_style"] = written  # Trinity's old names, case-insensitive, read as it reads them
    assert load_config_dict(data).synchronizer.sync_style == read


def test_fully_async_with_eval_tasksets_is_refused_as_trinity_does():
    data = _tinker_job()
    data["synchronizer"]["sync_style"] = "fully_async"
    data["buffer"]["explorer_input"]["eval_tasksets"] = [{"name": "e", "path": "openai/gsm8k"}]
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    assert [i.path for i in info.value.issues] == ["synchronizer.sync_style"]
    assert "eval" in info.value.issues[0].message


# ---------------------------------------------------------------- defaults and modes


def test_trinity_defaults():
    from rft_runtime.config.models import JobConfig

    cfg = JobConfig()
    assert cfg.buffer.trainer_input.experience_buffer.format.prompt_type == "messages"
    assert (cfg.cluster.node_num, cfg.cluster.gpu_per_node) == (0, 0)
    assert cfg.explorer.rollout_model.enable_prefix_caching is True
    assert cfg.trainer.enable_preview is False and cfg.trainer.max_checkpoints_to_keep == 0
    assert cfg.model.tinker.rank == 32  # the seed's documented default, not Trinity's 16


def test_a_veRL_job_without_gpu_counts_asks_for_what_it_needs():
    data = yaml.safe_load((EXAMPLES / "verl-lora.yaml").read_text())
    data["cluster"] = {}
    data["explorer"]["rollout_model"].update(engine_num=2, tensor_parallel_size=2)
    cfg = load_config_dict(data)
    assert cfg.gpu_shape() == (1, 5)  # 2 engines x 2 GPUs for rollouts, 1 for the trainer


def test_bench_mode_needs_no_taskset():
    data = yaml.safe_load((EXAMPLES / "verl-lora.yaml").read_text())
    data["mode"] = "bench"
    data["buffer"]["explorer_input"]["taskset"] = {}
    data["buffer"]["explorer_input"]["eval_tasksets"] = [{"name": "gsm8k", "path": "openai/gsm8k"}]
    assert load_config_dict(data).mode == "bench"


def test_a_taskset_reads_prompt_key_unless_it_asks_for_messages():
    cfg = load_config_dict(_tinker_job())
    assert cfg.buffer.explorer_input.taskset.format.prompt_type == "plaintext"
    data = _tinker_job()
    data["buffer"]["explorer_input"]["taskset"]["format"]["prompt_type"] = "messages"
    assert load_config_dict(data).buffer.explorer_input.taskset.format.prompt_type == "messages"


def test_unset_env_var_is_reported_once(monkeypatch):
    monkeypatch.delenv("RFT_TEST_UNSET_EVAL", raising=False)
    data = _tinker_job()
    data["buffer"]["explorer_input"]["eval_tasksets"] = [{"name": "e", "path": "${oc.env:RFT_TEST_UNSET_EVAL}"}]
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    assert [i.path for i in info.value.issues] == ["buffer.explorer_input.eval_tasksets[0].path"]
    assert "RFT_TEST_UNSET_EVAL" in info.value.issues[0].message


# ---------------------------------------------------------------- CLI


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rft_runtime.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_config_show_output_validates_again_with_the_same_values(tmp_path):
    data = _tinker_job()
    data["monitor"]["monitor_args"] = {"api_key": "sk-abcdefghijklmnopqrstuvwx", "project": "p"}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    shown = _cli("config", "show", "-c", str(job), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    values = yaml.safe_load(shown.stdout)
    assert "sk-abcdef" not in shown.stdout and values["monitor"]["monitor_args"]["api_key"] == "***"
    assert values["model"]["max_prompt_tokens"] == 1024 and values["model"]["max_response_tokens"] == 2048
    again_file = tmp_path / "shown.yaml"
    again_file.write_text(shown.stdout)
    res = _cli("validate", "-c", str(again_file), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert load_config(again_file).resolved_dict() == values


def test_validate_lists_no_effect_fields_once_per_section(tmp_path):
    data = _tinker_job()
    del data["cluster"]
    data["trainer"].update(use_dynamic_bsz=True, ulysses_sequence_parallel_size=2)
    data["explorer"]["rollout_model"]["enable_chunked_prefill"] = False
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    res = _cli("validate", "-c", str(job), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "no effect on the Tinker backend" in ln]
    assert lines == [
        "warning: no effect on the Tinker backend: explorer.rollout_model.enable_chunked_prefill",
        "warning: no effect on the Tinker backend: trainer.use_dynamic_bsz, trainer.ulysses_sequence_parallel_size",
    ]


def test_snippet_alone_is_a_fragment_and_the_overlay_warning_comes_once(tmp_path):
    alone = _cli("validate", "-c", str(SNIPPET), cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert "fragment" in alone.stdout and "ppo" not in alone.stdout + alone.stderr
    data = yaml.safe_load((EXAMPLES / "verl-lora.yaml").read_text())
    data.setdefault("trainer", {})["trainer_type"] = "verl"
    job = tmp_path / "verl.yaml"
    job.write_text(yaml.safe_dump(data))
    both = _cli("validate", "-c", str(job), "-c", str(SNIPPET), cwd=tmp_path)
    assert both.returncode == 0, both.stderr
    assert both.stderr.count("replaced by 'tinker'") == 1


def test_manifest_overlays_repeated_configs(tmp_path):
    res = _cli("manifest", "-c", str(EXAMPLES / "verl-lora.yaml"), "-c", str(SNIPPET), "--name", "job",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = yaml.safe_load(res.stdout)
    assert manifest["spec"]["config"]["model"]["tinker"]["enable"] is True
    assert "tinker" in manifest["spec"]  # the Tinker key's Secret reference: the overlay made it a Tinker job


def test_run_overlays_repeated_configs(tmp_path):
    broken = tmp_path / "overlay.yaml"
    broken.write_text("buffer:\n  batch_size: 0\n")
    res = _cli("run", "-c", str(EXAMPLES / "tinker.yaml"), "-c", str(broken), cwd=tmp_path)
    assert res.returncode == 2 and "buffer.batch_size" in res.stderr, res.stderr


@pytest.mark.skipif(shutil.which("trinity") is not None, reason="trinity is installed: rft run would start it")
def test_run_of_a_veRL_overlay_reaches_the_trinity_hand_off(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("trainer:\n  save_interval: 10\n")
    res = _cli("run", "-c", str(EXAMPLES / "verl-lora.yaml"), "-c", str(overlay), cwd=tmp_path)
    assert res.returncode == 2 and "trinity" in res.stderr and "merge" not in res.stderr, res.stderr


def test_validate_checks_local_data_cheaply(tmp_path):
    rows = tmp_path / "train.jsonl"
    rows.write_text('{"q": "1+1", "a": "2"}\n' * 3)
    data = _tinker_job()
    data["buffer"]["explorer_input"]["taskset"]["path"] = str(rows)
    data["buffer"]["explorer_input"]["eval_tasksets"] = [{"name": "e", "path": str(tmp_path / "missing.jsonl")}]
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    res = _cli("validate", "-c", str(job), cwd=tmp_path)
    assert res.returncode == 2
    assert "buffer.explorer_input.taskset.format" in res.stderr and "'question'" in res.stderr
    assert "buffer.explorer_input.eval_tasksets[0].path" in res.stderr and "does not exist" in res.stderr


def test_validate_says_how_many_steps_run_and_how_many_passes(tmp_path):
    rows = tmp_path / "train.jsonl"
    rows.write_text('{"question": "1+1", "answer": "2"}\n' * 960)
    data = _tinker_job()
    data["buffer"]["explorer_input"]["taskset"]["path"] = str(rows)
    data["buffer"]["total_steps"] = 200
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    res = _cli("validate", "-c", str(job), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "runs 200 steps (20 passes over the data" in res.stdout


def test_a_stage_holds_only_what_trinitys_stages_hold():
    data = _tinker_job()
    data["stages"] = [{"stage_name": "a", "cluster": {"node_num": 2}}]
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    assert [i.path for i in info.value.issues] == ["stages[0].cluster"]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[_rel(p) for p in EXAMPLE_FILES])
def test_every_trinity_example_round_trips_through_config_show(path, trinity_env):
    shown = load_config(path).resolved_dict()
    again = trinity_env / "shown.yaml"
    again.write_text(yaml.safe_dump(shown, sort_keys=False))
    assert load_config(again).resolved_dict() == shown


@pytest.mark.parametrize(("keep", "left"), [(0, 4), (None, 4), (2, 2)])
def test_max_checkpoints_to_keep_0_keeps_all_as_in_trinity(keep, left):
    from rft_runtime.loop.checkpoints import Bookkeeping, CheckpointEntry

    book = Bookkeeping()
    dropped = []
    for step in range(1, 5):
        dropped += book.record(CheckpointEntry(stage_index=0, stage_step=step, global_step=step,
                                               state_path=f"tinker://s{step}", sampler_path=None,
                                               stream_state=None), keep)
    assert len(book.history) == left and len(dropped) == 4 - left


@pytest.mark.parametrize(("section", "key", "value", "path"), [
    ("buffer.trainer_input.experience_buffer", "capacity", 0, "buffer.trainer_input.experience_buffer.capacity"),
    ("synchronizer", "explorer_sync_interval", 0, "synchronizer.explorer_sync_interval"),
    ("explorer", "proxy_port", 70000, "explorer.proxy_port"),
])
def test_loop_fields_trinity_leaves_unbounded_are_checked_on_tinker(section, key, value, path):
    data = _tinker_job()
    node = data
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[key] = value
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    assert [i.path for i in info.value.issues] == [path]


def test_the_replay_buffer_is_checked_with_the_priority_functions_trinity_has():
    data = _tinker_job()
    data["buffer"]["trainer_input"]["experience_buffer"]["replay_buffer"] = {
        "enable": True, "priority_fn": "linear_decay", "priority_fn_args": {"decay": 1.0, "sigma": 0.5}}
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    assert [i.path for i in info.value.issues] == ["buffer.trainer_input.experience_buffer.replay_buffer.priority_fn_args"]
    assert "takes decay, not sigma" in info.value.issues[0].message
