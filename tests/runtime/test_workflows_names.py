"""Every name Trinity-RFT 0.6 registers, as a user meets it: accepted by `rft validate` on Tinker, refused or
warned about with what it needs (an auxiliary model, an environment's package), stopped before step 1 when
that is missing; unknown names say how to name your own; `rft validate --plugin-dir` loads what it names;
the stand-in's reward modules and the pieces the workflows grade with. No training here (see
test_workflows_families.py): these run in seconds.
"""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_run_support import clean_env, job_dict, metrics, rft, write_config
from workflow_plugins import write_plugin

from rft_runtime.workflows import registry, trinity_compat

ROOT = Path(__file__).resolve().parents[2]
no_trinity = pytest.mark.skipif(trinity_compat.real_trinity_root() is not None,
                                reason="trinity-rft is installed here; these check the runtime without it")
DEAD = "http://127.0.0.1:9"  # nothing listens: a command that got as far as the engine would say so


def _validate(tmp_path: Path, cfg: dict, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(rft("validate", "--config", str(write_config(tmp_path / "job.yaml", cfg)), *extra),
                          capture_output=True, text=True, env=clean_env(), timeout=120)


def _job(tmp_path: Path, workflow: str, model_dir: Path) -> dict:
    cfg = job_dict(tmp_path, model_dir, DEAD, name=workflow.replace(".", "-"))
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = workflow
    return cfg


def test_all_37_workflows_and_6_rewards_are_known_with_trinitys_class_paths():
    from rft_runtime.config.trinity_facts import REGISTRIES

    assert set(REGISTRIES["workflows"]) <= set(registry.known_workflows())
    assert set(REGISTRIES["reward_fns"]) <= set(registry.known_reward_fns())
    assert set(registry.TRINITY_CLASSES) == set(REGISTRIES["workflows"])
    # 22 have this runtime's own implementation; the 15 bound to an environment run as Trinity's class
    assert len(registry.TRINITY_ONLY) == 15
    assert {n for n in REGISTRIES["workflows"] if n not in registry.TRINITY_ONLY} <= set(registry._WORKFLOWS)


@pytest.mark.parametrize("workflow", ["math_rm_workflow", "math_ruler_workflow", "rubric_judge_workflow",
                                      "on_policy_distill_math_workflow"])
def test_a_judged_workflow_without_its_auxiliary_model_is_refused_at_validate(tmp_path, tiny_model_dir, workflow):
    done = _validate(tmp_path, _job(tmp_path, workflow, tiny_model_dir))
    assert done.returncode == 2
    line = next(line for line in done.stderr.splitlines() if line.strip().startswith("explorer.auxiliary_models:"))
    assert f"workflow {workflow!r}" in line and "add it as the first entry" in line


def test_math_rm_with_a_reward_function_needs_no_reward_model(tmp_path, tiny_model_dir):
    cfg = _job(tmp_path, "math_rm_workflow", tiny_model_dir)
    cfg["buffer"]["explorer_input"]["default_reward_fn_type"] = "math_reward"  # Trinity's way: a reward class
    assert _validate(tmp_path, cfg).returncode == 0


def test_rubric_judge_openai_needs_the_judges_model_name(tmp_path, tiny_model_dir):
    done = _validate(tmp_path, _job(tmp_path, "rubric_judge_openai_workflow", tiny_model_dir))
    assert done.returncode == 2
    assert "buffer.explorer_input.taskset.workflow_args.judge_model_name: is required" in done.stderr
    assert "OPENAI_BASE_URL" in done.stderr  # the variable it will read, not set here


def test_simple_mm_on_the_local_engine_is_refused_with_the_reason(tmp_path, tiny_model_dir):
    cfg = _job(tmp_path, "simple_mm_workflow", tiny_model_dir)
    cfg["model"]["tinker"]["base_url"] = "local"
    done = _validate(tmp_path, cfg)
    assert done.returncode == 2 and "the local engine (model.tinker.base_url: local) serves text models" in done.stderr


@no_trinity
def test_an_environment_workflow_validates_with_a_warning_and_run_stops_before_step_1(tmp_path, tiny_model_dir):
    cfg = _job(tmp_path, "sciworld_workflow", tiny_model_dir)
    valid = _validate(tmp_path, cfg)
    assert valid.returncode == 0, valid.stderr
    assert "pip install 'rft-platform[trinity]' scienceworld" in valid.stderr
    run = subprocess.run(rft("run", "--config", str(tmp_path / "job.yaml"), "--no-progress", "--no-metrics"),
                         capture_output=True, text=True, env=clean_env(), timeout=120)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("rft run:")]
    assert len(errors) == 1 and "needs rft-platform[trinity], scienceworld" in errors[0]
    assert "127.0.0.1:9" not in run.stderr and not metrics(cfg)  # it stopped before reaching for the server


def test_an_unknown_workflow_says_how_to_name_your_own(tmp_path, tiny_model_dir):
    done = _validate(tmp_path, _job(tmp_path, "say_yes", tiny_model_dir))
    assert done.returncode == 2
    (line,) = [line for line in done.stderr.splitlines() if "unknown workflow 'say_yes'" in line]
    assert "'my_module.ClassName'" in line and "--plugin-dir DIR" in line
    assert "@WORKFLOWS.register_module('say_yes')" in line


@no_trinity
def test_validate_with_a_plugin_dir_loads_the_classes_it_names(tmp_path, tiny_model_dir):
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "needs_more", '''
from trinity.common.workflows.workflow import SimpleWorkflow


class NeedsMore(SimpleWorkflow):
    def run(self):
        from trinity.common.rewards.no_such_module import Grader  # only at run time: validate cannot see it
        return []
''')
    write_plugin(plugins, "lazy_broken", '''
def make():
    return None
''')
    cfg = _job(tmp_path, "needs_more.NeedsMore", tiny_model_dir)
    assert _validate(tmp_path, cfg, "--plugin-dir", str(plugins)).returncode == 0
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = "lazy_broken.Missing"
    done = _validate(tmp_path, cfg, "--plugin-dir", str(plugins))
    assert done.returncode == 2 and "module 'lazy_broken' has no 'Missing'" in done.stderr
    # without the folder, a module that is not here is a warning: the job's image may hold it
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = "somewhere_else.Flow"
    done = _validate(tmp_path, cfg)
    assert done.returncode == 0 and "not checked here: pass --plugin-dir DIR" in done.stderr


def _python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=clean_env(PYTHONPATH=f"{ROOT / 'runtime'}"), timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@no_trinity
def test_the_stand_in_offers_trinitys_reward_modules_and_step_wise_bases():
    out = _python("""
        import json
        from rft_runtime.workflows import trinity_compat
        trinity_compat.install()
        from trinity.common.rewards import REWARD_FUNCTIONS, RewardFn
        from trinity.common.rewards.math_reward import MathBoxedRewardFn, MathRewardFn
        from trinity.common.rewards.dapo_reward import MathDAPORewardFn
        from trinity.common.rewards.qwen25_eval import verify_math_answer
        from trinity.common.workflows.step_wise_workflow import RewardPropagationWorkflow

        boxed = MathBoxedRewardFn()(response="so \\\\boxed{12}", truth="12", with_think=True, response_token=[1])
        cls = REWARD_FUNCTIONS.get("countdown_reward")
        print(json.dumps({"boxed": boxed, "math": MathRewardFn()(response="<answer>3</answer>", truth="3"),
                          "dapo": MathDAPORewardFn()(response="\\\\boxed{2}", truth="3", response_token=[1]),
                          "eval": verify_math_answer("the answer is 1/2", "0.5")[0],
                          "countdown": issubclass(cls, RewardFn) and isinstance(cls(), RewardFn),
                          "step_wise": RewardPropagationWorkflow.__module__}))
    """)
    assert out["boxed"] == {"accuracy": 1.0, "format_score": -0.1}
    assert out["math"] == {"accuracy": 1.0, "format_score": -0.1}
    assert out["dapo"] == {"accuracy": -1.0, "format_score": 0.0}
    assert out["eval"] == 1.0 and out["countdown"] and out["step_wise"] == "rft_runtime.workflows.step_wise"


@no_trinity
def test_a_trinity_class_path_resolves_to_the_runtimes_implementation_without_trinity():
    cls = registry.get_workflow("trinity.common.workflows.eval_workflow.MathEvalWorkflow")
    assert cls is registry.get_workflow("math_eval_workflow")


# ---------------------------------------------------------------- grading pieces the workflows use


@pytest.mark.parametrize(("reply", "truth", "right"), [
    ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{2x+1}", "\\boxed{1+2x}", True),  # a bare expression as truth reads as its last number
    ("\\boxed{50\\%}", "50", True),
    ("The answer is 72.", "#### 72", True),
    ("\\boxed{3}", "\\boxed{4}", False),
    ("no number at all", "7", False),
])
def test_math_eval_grading_reads_boxed_answers_as_qwen_math_does(reply, truth, right):
    from rft_runtime.workflows.math_grading import verify_math_answer

    assert verify_math_answer(reply, truth)[0] == (1.0 if right else 0.0)


def test_math_dapo_reward_overlong_shaping():
    from rft_runtime.workflows.rewards import math_dapo_reward

    args = {"enable_overlong_penalty": True, "max_response_length": 10, "cache_length": 4, "penalty_factor": 1.0}
    assert math_dapo_reward("</think> \\boxed{3}", "3", response_token=[0] * 5, **args) == \
        {"accuracy": 1.0, "format_score": 0.0}
    assert math_dapo_reward("\\boxed{3}", "3", response_token=[0] * 8, **args)["format_score"] == -0.5
    assert math_dapo_reward("\\boxed{3}", "3", response_token=[0] * 11, **args)["format_score"] == -1.0
    with pytest.raises(ValueError, match="needs reward_fn_args"):
        math_dapo_reward("x", "3", enable_overlong_penalty=True)


@pytest.mark.parametrize(("reply", "score"), [
    ('<think>add</think><tool_call>[{"name": "add", "arguments": {"a": 1, "b": 1}}]</tool_call>', 1.0),
    ('<think>add</think><tool_call>{"name": "add", "arguments": {"b": 1, "a": 1}}</tool_call>', 1.0),
    ('<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 1}}]</tool_call>', 0.0),  # no think block
    ('<think>add</think><tool_call>[{"name": "add", "arguments": {"a": 2}}]</tool_call>', 0.0),
    ('<tool_call>[]</tool_call><think>late</think>', 0.0),
])
def test_tool_call_reward_is_tool_n1s(reply, score):
    from rft_runtime.workflows.tool_call import tool_call_reward

    assert tool_call_reward(reply, json.dumps([{"name": "add", "arguments": {"a": 1, "b": 1}}])) == score


def test_judges_replies_are_read_as_trinity_reads_them():
    from rft_runtime.workflows.judged import parse_rating, parse_ruler_scores

    assert parse_ruler_scores("thinking... [0.2, 1.5, -1]", 3) == [0.2, 1.0, 0.0]
    assert parse_ruler_scores("[0.2, 0.5]", 3) is None and parse_ruler_scores("no list", 1) is None
    assert parse_rating('```json\n{"rating": 7}\n```') == pytest.approx(0.7)
    assert parse_rating('```json\n{"rating": 11}```') is None and parse_rating("7/10") is None


def test_sudoku_rules_and_boards():
    from rft_runtime.workflows.games.sudoku import board_ok, generate, parse_moves

    puzzle, solution = generate(rng=random.Random(3))
    assert board_ok(solution) and all(0 not in row for row in solution) and sum(r.count(0) for r in puzzle) == 40
    assert all(p in (0, s) for prow, srow in zip(puzzle, solution, strict=True) for p, s in zip(prow, srow, strict=True))
    assert parse_moves("0 2 4\n1 3 5") == [(0, 2, 4), (1, 3, 5)]
    assert parse_moves("0 2") is None and parse_moves("9 0 1") is None and parse_moves("\n".join(["0 0 1"] * 6)) is None


def test_frozen_lake_maps_are_reproducible_and_solvable():
    pytest.importorskip("gymnasium", reason="frozen_lake_workflow needs gymnasium (the dev extra installs it)")
    from rft_runtime.workflows.games.frozen_lake import parse_move, random_map

    lake = random_map(4, 0.8, seed=7, max_steps=6)
    assert lake == random_map(4, 0.8, seed=7, max_steps=6)
    assert sum(row.count("S") for row in lake) == 1 and sum(row.count("G") for row in lake) == 1
    assert parse_move("I go ```Up```") == 4 and parse_move("```3```") == 3 and parse_move("up") == 0


# ---------------------------------------------------------------- the house: no cycle, one rule


def _edges(path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` a file imports, anywhere in it (function-level imports count too): `from pkg
    import sub` is an import of pkg.sub when that is a module, else of pkg (a name its __init__ holds)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out & modules


def test_the_workflows_package_has_no_import_cycle():
    base = ROOT / "runtime"
    files = {".".join(p.relative_to(base).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (base / "rft_runtime" / "workflows").rglob("*.py")}
    graph = {m: _edges(p, set(files)) - {m} for m, p in files.items()}
    cycles = []
    for start in graph:
        stack = [(start, (start,))]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(path)
                elif nxt not in path:
                    stack.append((nxt, (*path, nxt)))
    assert not cycles, cycles[:3]


def test_one_split_import_path_rule():
    defs = [p for p in (ROOT / "runtime").rglob("*.py") if "def split_import_path" in p.read_text()]
    assert [p.relative_to(ROOT).as_posix() for p in defs] == ["runtime/rft_runtime/import_paths.py"]
    from rft_runtime.config import catalog
    from rft_runtime.import_paths import split_import_path

    assert catalog.split_import_path is split_import_path
    assert registry.split_import_path is split_import_path


@no_trinity
def test_trinitys_guru_math_benchmark_validates_with_its_reward_plugin(tmp_path):
    """benchmark/config/guru_math-template.yaml names math_boxed_reward_naive_dapo, which Trinity's benchmark
    registers from a plugin (Trinity 0.6's registry does not hold it): with such a plugin it is valid on Tinker."""
    example = ROOT.parent / "shared" / "trinity-examples" / "benchmark" / "config" / "guru_math-template.yaml"
    if not example.exists():
        pytest.skip(f"{example} is not beside the repo (it is in CI)")
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "guru_rewards", '''
from trinity.common.rewards import REWARD_FUNCTIONS
from trinity.common.rewards.math_reward import MathBoxedRewardFn


@REWARD_FUNCTIONS.register_module("math_boxed_reward_naive_dapo")
class NaiveDapo(MathBoxedRewardFn):
    def __call__(self, response, truth=None, **kwargs):
        from trinity.common.rewards.naive_dapo_score import compute_score

        return {"accuracy": compute_score(response, truth)[0], "format_score": 0.0}
''')
    env = clean_env(**{v: str(tmp_path / v.lower()) for v in ("TRINITY_TASKSET_PATH", "TRINITY_MODEL_PATH",
                                                              "TRINITY_CHECKPOINT_ROOT_DIR")})
    args = rft("validate", "-c", str(example), "-c", str(ROOT.parent / "shared" / "seeds" / "tinker-snippet.yaml"))
    without = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert "unknown reward function 'math_boxed_reward_naive_dapo'" in without.stderr
    done = subprocess.run([*args, "--plugin-dir", str(plugins)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert "math_boxed_reward_naive_dapo" not in done.stderr, done.stderr


def test_a_reply_prefix_starts_the_models_reply(tiny_model_dir):
    """format.reply_prefix (or explorer_input.reply_prefix) is the start of the assistant's turn, continued by
    the model, as Trinity's workflows send it; a Tinker config may set it."""
    from transformers import AutoTokenizer

    from rft_runtime.config import load_config_dict
    from rft_runtime.workflows.model import ModelSettings, ModelWrapper
    from rft_runtime.workflows.runner import WorkflowRunner

    cfg = job_dict(Path("/tmp"), tiny_model_dir, DEAD)
    cfg["buffer"]["explorer_input"]["reply_prefix"] = "<think>"
    job = load_config_dict(cfg)
    runner = WorkflowRunner(job, job.buffer.explorer_input.taskset)
    wf = runner.workflow_cls(task=runner.make_task({"question": "1+1?", "answer": "2"}, 0, 0, 1), model=None)
    messages = wf.format_messages()
    assert messages[-1] == {"role": "assistant", "content": "<think>"}
    model = ModelWrapper(None, AutoTokenizer.from_pretrained(str(tiny_model_dir)), ModelSettings(name="m"))
    ids, _ = model.chat_prompt(messages)
    assert model.tokenizer.decode(ids).endswith("<|im_start|>assistant\n<think>")
