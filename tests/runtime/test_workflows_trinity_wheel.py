"""Trinity-RFT's own classes, from the real trinity-rft 0.6.0 wheel, on this runtime: every registered workflow
and reward class imports without vLLM or a GPU; Trinity's classes train on the local engine through this
runtime's model wrapper (their Experience objects, tensors and eids becoming the runtime's); and Trinity's
MathBoxedWorkflow and MathEvalWorkflow files run unchanged from a plugin folder where trinity-rft is not
installed. Skipped, saying how to install it, where no Python beside this one has trinity-rft (CI has one).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from test_run_support import clean_env, job_dict, job_dir, metrics, rft, write_config
from trinity_wheel import HOW, trinity_env, trinity_package, trinity_python
from workflow_plugins import write_rows

needs_wheel = pytest.mark.skipif(trinity_python() is None, reason=HOW)
SUMS = [{"question": f"{a} + {a} = ?", "answer": str(2 * a)} for a in range(4)]


def _in_trinity(code: str) -> dict:
    done = subprocess.run([trinity_python(), "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=trinity_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _evals(cfg: dict) -> list[dict]:
    path = job_dir(cfg) / "eval.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run_in_trinity(cfg: dict, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([trinity_python(), *rft("run", "--config", str(write_config(path, cfg)), "--no-progress",
                                                  "--no-metrics", *extra)[1:]],
                          capture_output=True, text=True, env=trinity_env(), timeout=500)


@needs_wheel
def test_every_class_trinity_registers_loads_without_vllm():
    out = _in_trinity("""
        import importlib.util, json, sys
        from rft_runtime.workflows import registry
        from rft_runtime.workflows.trinity_compat import trinity_registry

        loaded = {}
        for name, path in trinity_registry("workflows").items():
            loaded[name] = registry.get_workflow(path).__module__
        rewards = {}
        from trinity.common.rewards import REWARD_FUNCTIONS
        for name in trinity_registry("rewards"):
            rewards[name] = REWARD_FUNCTIONS.get(name).__module__
        by_name = {n: registry.get_workflow(n).__module__ for n in registry.TRINITY_ONLY}
        try:
            import vllm
            vllm_here = True
        except ImportError:
            vllm_here = False
        print(json.dumps({"loaded": loaded, "rewards": rewards, "by_name": by_name, "vllm": vllm_here,
                          "vllm_spec": importlib.util.find_spec("vllm") is not None}))
    """)
    assert len(out["loaded"]) == 37 and all(m.startswith("trinity.common.workflows") for m in out["loaded"].values())
    assert len(out["rewards"]) == 6 and all(m.startswith("trinity.common.rewards") for m in out["rewards"].values())
    # the environment-bound names run as Trinity's own classes
    assert out["by_name"]["alfworld_workflow"] == "trinity.common.workflows.envs.alfworld.alfworld_workflow"
    assert len(out["by_name"]) == 15
    # the shim answered only Trinity's imports, and left nothing behind that says vLLM is installed
    assert out["vllm"] is False and out["vllm_spec"] is False


@needs_wheel
@pytest.mark.slow
def test_trinitys_own_math_classes_train_on_the_runtimes_model_wrapper(tmp_path, tiny_model_dir, local_engine):
    tw = "trinity.common.workflows"
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="trinity-math", steps=2, batch=2, repeat=2)
    ei = cfg["buffer"]["explorer_input"]
    ei["default_workflow_type"] = f"{tw}.customized_math_workflows.MathBoxedWorkflow"
    ei["default_reward_fn_type"] = "math_dapo_reward"  # Trinity's MathDAPORewardFn (it imports verl)
    ei["default_eval_workflow_type"] = f"{tw}.eval_workflow.MathEvalWorkflow"
    ei["eval_tasksets"] = [{"name": "sums", "path": str(write_rows(tmp_path / "data" / "sums.jsonl", SUMS)),
                           "format": {"prompt_key": "question", "response_key": "answer"}}]
    cfg["explorer"]["eval_interval"] = 2
    done = _run_in_trinity(cfg, tmp_path / "math.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    train = metrics(cfg)
    assert [r["step"] for r in train] == [1, 2] and all(r["failed_rollouts"] == 0 for r in train)
    # DAPO's rule: no boxed answer from a random model is accuracy -1
    assert all(r["rollout/accuracy/mean"] == -1.0 for r in train)
    # Trinity's MathEvalWorkflow graded every eval task (it sets no reward: evaluation only)
    assert [(e["taskset"], e["tasks"]) for e in _evals(cfg)] == [("sums", 4)] * 2


@needs_wheel
@pytest.mark.slow
def test_trinitys_on_policy_distillation_class_gives_the_teachers_logprobs(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="trinity-opd", steps=2, batch=2, repeat=2)
    cfg["algorithm"]["algorithm_type"] = "on_policy_distill"
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = \
        "trinity.common.workflows.on_policy_distill_workflow.OnPolicyDistillMathWorkflow"
    cfg["explorer"]["auxiliary_models"] = [{"model_path": str(tiny_model_dir)}]
    done = _run_in_trinity(cfg, tmp_path / "opd.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    records = metrics(cfg)
    assert [r["failed_rollouts"] for r in records] == [0, 0]
    # Trinity's class measured the KL itself from the teacher's logprobs (the teacher is the step-1 student)
    assert abs(records[0]["rollout/kl_divergence/mean"]) < 1e-2


@needs_wheel
@pytest.mark.slow
def test_trinitys_frozen_lake_and_ruler_classes_train(tmp_path, small_engine):
    model_dir, engine = small_engine
    lake = job_dict(tmp_path / "lake", model_dir, engine.base_url, name="trinity-lake", steps=2, batch=2, repeat=2)
    ts = lake["buffer"]["explorer_input"]["taskset"]
    ts["path"] = str(write_rows(tmp_path / "data" / "lakes.jsonl",
                                [{"question": "lake", "size": 3, "p": 0.8, "seed": s} for s in range(4)]))
    ts["workflow_args"] = {"env_max_steps": 4, "agent_max_steps": 2}
    lake["buffer"]["explorer_input"]["default_workflow_type"] = "frozen_lake_workflow"
    lake["buffer"]["explorer_input"]["default_workflow_type"] = \
        "trinity.common.workflows.envs.frozen_lake.workflow.FrozenLakeWorkflow"
    lake["model"].update(max_prompt_tokens=1350, max_response_tokens=8)
    done = _run_in_trinity(lake, tmp_path / "lake.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    # Trinity's MultiTurnWorkflow built trinity Experiences (masks as tensors): they trained
    assert [(r["rollouts"], r["failed_rollouts"]) for r in metrics(lake)] == [(4, 0), (4, 0)]

    ruler = job_dict(tmp_path / "ruler", model_dir, engine.base_url, name="trinity-ruler", steps=2, batch=2,
                     repeat=2)
    ruler["buffer"]["explorer_input"]["taskset"]["path"] = str(write_rows(tmp_path / "data" / "sums.jsonl", SUMS))
    ruler["buffer"]["explorer_input"]["default_workflow_type"] = \
        "trinity.common.workflows.math_ruler_workflow.MathRULERWorkflow"
    # Trinity's RULER asks its judge through the OpenAI client of explorer.auxiliary_models[0]: the loopback endpoint
    ruler["explorer"]["auxiliary_models"] = [{"model_path": str(model_dir), "max_response_tokens": 16}]
    ruler["model"].update(max_prompt_tokens=1500, max_model_len=2048)
    done = _run_in_trinity(ruler, tmp_path / "ruler.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    records = metrics(ruler)
    assert [r["failed_rollouts"] for r in records] == [0, 0]
    assert all("rollout/gold_reward/mean" in r and "rollout/judge_success/mean" in r for r in records)


@needs_wheel
@pytest.mark.slow
def test_trinitys_math_workflow_files_run_unchanged_from_a_plugin_dir(tmp_path, tiny_model_dir, local_engine):
    """Here trinity-rft is NOT installed: the files come from the wheel's install and import the stand-in."""
    from rft_runtime.workflows import trinity_compat

    if trinity_compat.real_trinity_root() is not None:
        pytest.skip("trinity-rft is installed in this Python: this checks the runtime without it")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    source = trinity_package() / "common" / "workflows"
    for name in ("customized_math_workflows.py", "eval_workflow.py"):
        shutil.copy2(source / name, plugins / name)
        assert (plugins / name).read_bytes() == (source / name).read_bytes()
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="plugin-math", steps=2, batch=2, repeat=2)
    ei = cfg["buffer"]["explorer_input"]
    ei["default_workflow_type"] = "customized_math_workflows.MathBoxedWorkflow"
    ei["default_eval_workflow_type"] = "eval_workflow.MathEvalWorkflow"
    ei["eval_tasksets"] = [{"name": "sums", "path": str(write_rows(tmp_path / "data" / "sums.jsonl", SUMS)),
                           "format": {"prompt_key": "question", "response_key": "answer"}}]
    cfg["explorer"]["eval_interval"] = 2
    config = write_config(tmp_path / "plugin.yaml", cfg)
    valid = subprocess.run(rft("validate", "--config", str(config), "--plugin-dir", str(plugins)),
                           capture_output=True, text=True, env=clean_env())
    assert valid.returncode == 0, valid.stderr
    done = subprocess.run(rft("run", "--config", str(config), "--plugin-dir", str(plugins), "--no-progress",
                              "--no-metrics"), capture_output=True, text=True, env=clean_env(), timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(r["rollouts"], r["failed_rollouts"]) for r in metrics(cfg)] == [(4, 0), (4, 0)]
    assert [(e["taskset"], e["tasks"]) for e in _evals(cfg)] == [("sums", 4)] * 2
