"""What each field does on Tinker (config.support), as `rft validate` says it and docs/config.md writes it:
honoured fields are read by the runtime, settings Trinity's Tinker mode ignores too are accepted with the
reason, and what it honours but this runtime does not is refused with the reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from rft_runtime.config import ConfigError, load_config_dict, support
from rft_runtime.config.reference import _sections, _title
from rft_runtime.workflows.runners import prompt_limit

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "runtime" / "rft_runtime"
# where fields are defined and described, not read (the models' validators and properties are read below)
DEFINITIONS = {"config/trinity_facts.py", "config/support.py", "config/loop_fields.py", "config/reference.py",
               "config/trinity_schema.py"}
MODELS = "config/models.py"


def _job() -> dict:
    return yaml.safe_load((ROOT / "examples" / "tinker.yaml").read_text())


def _idle(cfg) -> list[str]:
    return [p for w in cfg.warnings if w.startswith("no effect on the Tinker backend: ")
            for p in w.split(": ", 1)[1].split(", ")]


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def _names_the_runtime_reads() -> set[str]:
    """Every attribute the runtime's code reads, keyword it passes and string it holds (a dotted path or a
    getattr name is split into its parts; docstrings are not code), outside the modules that define the
    config; of the models, only what their validators and properties read."""
    out: set[str] = set()
    for path in RUNTIME.rglob("*.py"):
        rel = str(path.relative_to(RUNTIME))
        if rel in DEFINITIONS:
            continue
        tree = ast.parse(path.read_text())
        roots = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)] if rel == MODELS else [tree]
        for root in roots:
            skip = _docstrings(root)
            for node in ast.walk(root):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                    out.add(node.attr)
                elif isinstance(node, ast.keyword) and node.arg:
                    out.add(node.arg)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                    out.update(node.value.replace("[", ".").split("."))
    return out


def test_every_field_marked_honoured_is_read_somewhere_in_the_runtime():
    """A necessary condition, not a proof: a field the tables call honoured whose name the runtime's code never
    mentions (as an attribute, a keyword or a string) cannot be honoured. Names shared by many fields (name,
    path) pass on any use; a field read only through a generic copy must still be named where it is used."""
    read = _names_the_runtime_reads()
    unread = []
    for cls, _ in _sections():
        owner = _title(cls)
        for name in cls.model_fields:
            places = ["", *(f"{section}.{name}" for o, section, _ in support.PLACES if o == owner)]
            if any(support.treatment(owner, name, p) == support.HONOURED for p in places) and name not in read:
                unread.append(f"{owner}.{name}")
    assert not unread, f"marked honoured on Tinker but read nowhere in rft_runtime: {unread}"


def test_the_check_finds_a_field_no_code_reads():
    # the check above is not vacuous: a real fact field nothing reads is absent from what it collects
    read = _names_the_runtime_reads()
    assert "fix_actor_microbatch_loss_scale" not in read and "runner_state_report_interval" not in read
    assert {"workflow_key", "reward_fn_key", "reply_prefix", "tools_key", "system_prompt_key",
            "enable_history"} <= read


@pytest.mark.parametrize("key", ["workflow_key", "reward_fn_key", "reply_prefix"])
def test_a_tasksets_row_keys_are_honoured_not_listed_as_idle(key):
    data = _job()
    data["buffer"]["explorer_input"]["taskset"]["format"][key] = "col"
    cfg = load_config_dict(data)
    assert f"buffer.explorer_input.taskset.format.{key}" not in _idle(cfg), cfg.warnings


def test_an_sft_datasets_tools_key_and_chat_template_are_honoured(tmp_path):
    data = _job()
    data["mode"] = "train"
    data["algorithm"] = {"algorithm_type": "sft"}
    data["buffer"]["trainer_input"] = {"experience_buffer": {
        "name": "sft", "storage_type": "file", "path": str(tmp_path / "sft.jsonl"),
        "format": {"tools_key": "functions", "chat_template": "{{ messages }}", "system_prompt_key": "sys"}}}
    cfg = load_config_dict(data)
    assert not [p for p in _idle(cfg) if ".format." in p], cfg.warnings


def test_a_tasksets_chat_template_is_said_to_do_nothing_as_in_trinity():
    data = _job()
    data["buffer"]["explorer_input"]["taskset"]["format"]["chat_template"] = "{{ messages }}"
    assert "buffer.explorer_input.taskset.format.chat_template" in _idle(load_config_dict(data))


def test_warmup_style_is_trinitys_older_name_of_lr_scheduler_type():
    data = _job()
    data["algorithm"]["optimizer"]["warmup_style"] = "cosine"
    cfg = load_config_dict(data)
    assert cfg.algorithm.optimizer.lr_scheduler_type == "cosine"
    assert not [p for p in _idle(cfg) if "warmup_style" in p]
    data["algorithm"]["optimizer"]["warmup_style"] = "linear"
    with pytest.raises(ConfigError, match="warmup_style 'linear'"):
        load_config_dict(data)


@pytest.mark.parametrize(("section", "key", "value"), [
    ("algorithm.optimizer", "optimizer_type", "sgd"),
    ("model", "repetition_penalty", 1.1),
    ("model", "min_response_tokens", 4),
    ("algorithm", "enable_router_replay", True),
    ("algorithm", "bypass_old_logprobs", False),
    ("algorithm", "rollout_correction", {"bypass_mode": False}),
])
def test_what_trinitys_tinker_mode_ignores_too_loads_with_the_reason(section, key, value):
    data = _job()
    node = data
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[key] = value
    cfg = load_config_dict(data)
    said = [w for w in cfg.warnings if w.startswith(f"{section}.{key}: ")]
    assert len(said) == 1 and "no effect on the Tinker backend: " in said[0] and "Trinity" in said[0], cfg.warnings
    # the value it runs with anyway is not worth a line
    node[key] = {"optimizer_type": "adamw", "repetition_penalty": 1.0, "min_response_tokens": 0,
                 "enable_router_replay": False, "bypass_old_logprobs": True, "rollout_correction": None}[key]
    assert not [w for w in load_config_dict(data).warnings if key in w]


@pytest.mark.parametrize(("change", "path", "word"), [
    ({"trainer": {"fix_actor_microbatch_loss_scale": True}}, "trainer.fix_actor_microbatch_loss_scale",
     "per-experience"),
    ({"explorer": {"rollout_model": {"max_prompt_tokens": 64}}}, "explorer.rollout_model.max_prompt_tokens",
     "model.max_prompt_tokens"),
    ({"explorer": {"rollout_model": {"model_path": "other/model"}}}, "explorer.rollout_model.model_path",
     "model.model_path"),
    ({"buffer": {"trainer_input": {"sft_warmup_steps": 10}}}, "buffer.trainer_input.sft_warmup_steps", "stage"),
    ({"explorer": {"auxiliary_models": [{"model_path": "judge", "repetition_penalty": 1.2}]}},
     "explorer.auxiliary_models[0].repetition_penalty", "auxiliary model"),
])
def test_what_trinitys_tinker_mode_honours_and_this_runtime_does_not_is_refused(change, path, word):
    data = _job()
    for section, values in change.items():
        node = data.setdefault(section, {})
        for key, value in values.items():
            node[key] = {**node.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    hits = [i for i in info.value.issues if i.path == path]
    assert hits and "not available on the Tinker backend" in hits[0].message and word in hits[0].message, info.value


def test_the_rollout_models_copies_of_model_settings_load_when_they_agree():
    data = _job()
    data["explorer"]["rollout_model"].update(max_prompt_tokens=1024, max_response_tokens=2048,
                                             model_path="meta-llama/Llama-3.2-3B", enable_history=True)
    cfg = load_config_dict(data)
    assert not [p for p in _idle(cfg) if p.startswith("explorer.rollout_model.")], cfg.warnings


def test_an_auxiliary_models_own_settings_are_honoured_and_its_engine_knobs_idle():
    data = _job()
    data["explorer"]["auxiliary_models"] = [{"model_path": "judge", "max_prompt_tokens": 64, "temperature": 0.2,
                                             "tensor_parallel_size": 2}]
    idle = _idle(load_config_dict(data))
    assert "explorer.auxiliary_models[0].tensor_parallel_size" in idle
    assert not [p for p in idle if p.endswith(("model_path", "max_prompt_tokens", "temperature"))]


def test_lora_configs_are_idle_on_tinker_in_the_reference():
    doc = (ROOT / "docs" / "config.md").read_text()
    section = doc.split("## LoRAConfig", 1)[1].split("\n## ", 1)[0]
    assert "| honoured |" not in section and section.count("| no effect |") >= 4


def test_prompt_truncation_off_loads_with_a_prompt_limit_and_is_honoured():
    # Trinity samples every prompt whatever max_prompt_tokens says (tests/runtime: the prompts are sampled)
    data = _job()
    data["model"].update(enable_prompt_truncation=False, max_prompt_tokens=64)
    data["explorer"]["rollout_model"]["enable_prompt_truncation"] = False
    cfg = load_config_dict(data)
    assert not [p for p in _idle(cfg) if "enable_prompt_truncation" in p], cfg.warnings
    assert prompt_limit(cfg) is None
    data["explorer"]["rollout_model"]["enable_prompt_truncation"] = True  # the rollout model's own wins
    assert prompt_limit(load_config_dict(data)) == 64


def test_prompt_truncation_off_loads_where_no_prompt_limit_is_set():
    # Trinity's frozen_lake example: nothing is cut before the context limit here either
    data = _job()
    data["model"].pop("max_prompt_tokens")
    data["model"].update(enable_prompt_truncation=False, max_model_len=4096)
    cfg = load_config_dict(data)
    assert cfg.model.enable_prompt_truncation is False


def test_a_kl_penalty_trinity_never_applies_loads_with_the_reason():
    # grpo's advantages are computed outside Trinity's trainer, so its kl_penalty_fn is never read there
    data = _job()
    data["algorithm"].update(kl_penalty_fn="k3", kl_penalty_fn_args={"kl_coef": 0.1})
    said = [w for w in load_config_dict(data).warnings if w.startswith("algorithm.kl_penalty_fn: ")]
    assert len(said) == 1 and "no effect on the Tinker backend" in said[0] and "grpo" in said[0]


def _explorer_features(data: dict) -> dict:
    ts = data["buffer"]["explorer_input"].pop("taskset")
    data["buffer"]["explorer_input"]["tasksets"] = [ts, {**ts, "name": "other"}]
    data["buffer"]["explorer_input"]["eval_tasksets"] = [{"name": "held_out", "storage_type": "sql",
                                                          "path": "sqlite:///tasks.db"}]
    data["synchronizer"]["sync_style"] = "explorer_driven"
    data["explorer"].update(over_rollout={"ratio": 0.25, "wait_after_min": 5},
                            dynamic_timeout={"enable": True, "warmup_min_steps": 2, "ratio": 2.5})
    return data


def test_the_explorer_features_trinitys_tinker_mode_runs_load_and_are_honoured():
    cfg = load_config_dict(_explorer_features(_job()))
    assert len(cfg.buffer.explorer_input.tasksets) == 2
    assert not [p for p in _idle(cfg) if "over_rollout" in p or "dynamic_timeout" in p or "tasksets" in p], \
        cfg.warnings
    for owner, field in [("ExplorerInput", "tasksets"), ("TasksetConfig", "storage_type"),
                         ("OverRolloutConfig", "ratio"), ("OverRolloutConfig", "wait_after_min"),
                         ("DynamicTimeoutConfig", "enable"), ("DynamicTimeoutConfig", "warmup_min_steps"),
                         ("DynamicTimeoutConfig", "ratio")]:
        assert support.treatment(owner, field) == support.HONOURED, (owner, field)


@pytest.mark.parametrize(("change", "path", "word"), [
    # Trinity's own refusals, said before the job starts
    (lambda d: d["synchronizer"].update(sync_style="fixed"), "explorer.over_rollout.ratio", "sync_style"),
    (lambda d: d["explorer"]["over_rollout"].update(ratio=1.0), "explorer.over_rollout.ratio", "[0, 1)"),
    (lambda d: d["explorer"]["dynamic_timeout"].update(ratio=0), "explorer.dynamic_timeout.ratio", "> 0"),
    (lambda d: d["buffer"]["explorer_input"].update(taskset={"path": "x.jsonl"}), "buffer.explorer_input.tasksets",
     "not both"),
    (lambda d: d["buffer"]["explorer_input"]["tasksets"][1].update(storage_type="sql", path="sqlite:///t.db"),
     "buffer.explorer_input.tasksets[1].storage_type", "mixed from files only"),
    (lambda d: d["buffer"]["explorer_input"]["eval_tasksets"][0].update(path="tasks.jsonl"),
     "buffer.explorer_input.eval_tasksets[0].path", "SQLAlchemy URL"),
    (lambda d: d["buffer"]["explorer_input"]["eval_tasksets"][0].update(storage_type="queue"),
     "buffer.explorer_input.eval_tasksets[0].storage_type", "not a queue"),
])
def test_what_trinity_refuses_of_them_is_refused_naming_the_field(change, path, word):
    data = _explorer_features(_job())
    change(data)
    with pytest.raises(ConfigError) as info:
        load_config_dict(data)
    hits = [i for i in info.value.issues if i.path == path]
    assert hits and word in hits[0].message, info.value


def test_a_sql_taskset_takes_no_selector():
    data = _job()
    data["buffer"]["explorer_input"]["taskset"].update(storage_type="sql", path="sqlite:///t.db",
                                                       data_selector={"selector_type": "shuffle"})
    with pytest.raises(ConfigError, match="id order"):
        load_config_dict(data)
    data["buffer"]["explorer_input"]["taskset"]["data_selector"]["selector_type"] = "sequential"
    assert load_config_dict(data).buffer.explorer_input.taskset.storage_type == "sql"
