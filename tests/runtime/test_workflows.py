"""Workflows and rewards: math_workflow on a GSM8K-format file, simple_workflow, user code by import path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from rft_runtime.config import load_config_dict
from rft_runtime.data.tasksets import load_rows
from rft_runtime.workflows import Score, WorkflowError, get_reward_fn, get_workflow, known_workflows

ROOT = Path(__file__).resolve().parents[2]
GSM8K = ROOT / "tests" / "data" / "gsm8k_sample.jsonl"


@pytest.fixture(scope="module")
def gsm8k_cfg(tmp_path_factory):
    """The seed's tinker.yaml pointed at the local GSM8K-format file."""
    raw = yaml.safe_load((ROOT / "examples" / "tinker.yaml").read_text())
    raw["checkpoint_root_dir"] = str(tmp_path_factory.mktemp("ckpt"))
    taskset = raw["buffer"]["explorer_input"]["taskset"]
    taskset.update(path=str(GSM8K), subset_name=None)
    return load_config_dict(raw)


@pytest.fixture(scope="module")
def math(gsm8k_cfg):
    ts = gsm8k_cfg.buffer.explorer_input.taskset
    name = gsm8k_cfg.buffer.explorer_input.default_workflow_type
    return get_workflow(name)(ts.format, ts.workflow_args, ts.reward_fn_args)


@pytest.fixture(scope="module")
def rows(gsm8k_cfg):
    return load_rows(gsm8k_cfg.buffer.explorer_input.taskset)


def test_builtins_are_registered():
    assert {"math_workflow", "simple_workflow"} <= set(known_workflows())


def test_math_prompt_asks_for_think_and_answer_tags(math, rows):
    messages = math.messages(rows[0])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "<think>" in messages[0]["content"] and "<answer>" in messages[0]["content"]
    assert messages[1]["content"] == rows[0]["question"]


def test_system_prompt_from_the_taskset_format_replaces_the_default(rows):
    fmt = SimpleNamespace(prompt_key="question", response_key="answer", system_prompt="Answer briefly.")
    messages = get_workflow("math_workflow")(fmt, {}, {}).messages(rows[0])
    assert messages[0] == {"role": "system", "content": "Answer briefly."}


# rows[0]: "#### 12"; rows[1]: 1335; rows[4]: 1008; rows[5]: -7; rows[6]: 2.25; rows[7]: 7200
@pytest.mark.parametrize(("row", "response", "reward", "accuracy", "format_score"), [
    # right answer in the right shape: 1 + 0.1
    (0, "<think>24 + 18 = 42, 42 - 30 = 12</think> <answer>12</answer>", 1.1, 1.0, 0.1),
    (0, "<think>\nsome thought\n</think>\n<answer>\n12\n</answer>\n", 1.1, 1.0, 0.1),
    # wrong answer in the right shape: 0 + 0.1
    (0, "<think>24 + 18 = 42</think> <answer>42</answer>", 0.1, 0.0, 0.1),
    # missing tags: the whole response is read for the number, the format costs 0.1
    (0, "There are 12 muffins left.", 0.9, 1.0, -0.1),
    (0, "I do not know.", -0.1, 0.0, -0.1),
    # malformed: unclosed think, answer before think, two answers, text after the answer
    (0, "<think>24 + 18 = 42 <answer>12</answer>", 0.9, 1.0, -0.1),
    (0, "<answer>12</answer> <think>easy</think>", 0.9, 1.0, -0.1),
    (0, "<think>hmm</think> <answer>11</answer> <answer>12</answer>", 0.9, 1.0, -0.1),
    (0, "<think>hmm</think> <answer>12</answer> and more", 0.9, 1.0, -0.1),
    # an answer tag with no number in it is wrong even if the thinking had the number
    (0, "<think>it is 12</think> <answer>twelve</answer>", 0.1, 0.0, 0.1),
    # numbers with commas, units, decimals, signs, \boxed
    (1, "<think>1250 + 85</think> <answer>1,335</answer>", 1.1, 1.0, 0.1),
    (1, "<think>1250 + 85</think> <answer>$1,335 dollars</answer>", 1.1, 1.0, 0.1),
    (4, "<think>7 * 144</think> <answer>1,008</answer>", 1.1, 1.0, 0.1),
    (4, "<think>7 * 144</think> <answer>1,0008</answer>", 0.1, 0.0, 0.1),
    (5, "<think>5 - 12</think> <answer>-7</answer>", 1.1, 1.0, 0.1),
    (5, "<think>5 - 12</think> <answer>7</answer>", 0.1, 0.0, 0.1),
    (6, "<think>9 / 4</think> <answer>2.25</answer>", 1.1, 1.0, 0.1),
    (6, "<think>9 / 4</think> <answer>9/4</answer>", 1.1, 1.0, 0.1),
    (7, "<think>600 * 12</think> <answer>\\boxed{7,200}</answer>", 1.1, 1.0, 0.1),
    (7, "<think>600 * 12</think> <answer>7200.00</answer>", 1.1, 1.0, 0.1),
    (7, "<think>600 * 12</think> <answer>72000</answer>", 0.1, 0.0, 0.1),
])
def test_math_rewards_match_hand_checked_cases(math, rows, row, response, reward, accuracy, format_score):
    score = math.score(rows[row], response)
    assert score.reward == pytest.approx(reward)
    assert score.metrics == pytest.approx({"accuracy": accuracy, "format_score": format_score})


def test_ground_truth_with_commas_and_plain_numbers():
    wf = get_workflow("math_workflow")(None, {}, {})  # defaults: prompt / response columns
    assert wf.score({"prompt": "q", "response": "#### 1,234"}, "<think>x</think><answer>1234</answer>").reward \
        == pytest.approx(1.1)
    assert wf.score({"prompt": "q", "response": "72"}, "<think>x</think><answer>72</answer>").reward \
        == pytest.approx(1.1)


def test_format_score_coefficient_is_a_reward_fn_arg(rows):
    fmt = SimpleNamespace(prompt_key="question", response_key="answer", system_prompt=None)
    wf = get_workflow("math_workflow")(fmt, {}, {"format_score_coef": 0.5})
    assert wf.score(rows[0], "12").metrics == {"accuracy": 1.0, "format_score": -0.5}


# ---------------------------------------------------------------- simple_workflow and user code


def test_simple_workflow_has_no_system_prompt_and_scores_accuracy():
    fmt = SimpleNamespace(prompt_key="q", response_key="a", system_prompt=None)
    wf = get_workflow("simple_workflow")(fmt, {}, {})
    assert wf.messages({"q": "2+2?", "a": "4"}) == [{"role": "user", "content": "2+2?"}]
    assert wf.score({"q": "2+2?", "a": "4"}, "4").reward == 1.0
    assert wf.score({"q": "2+2?", "a": "4"}, "5").reward == 0.0


def test_simple_workflow_with_a_builtin_reward_fn_by_name():
    fmt = SimpleNamespace(prompt_key="q", response_key="a", system_prompt=None)
    wf = get_workflow("simple_workflow")(fmt, {}, {"reward_fn": "exact_match_reward"})
    assert wf.score({"q": "say hi", "a": "hi"}, " hi\n").reward == 1.0
    assert wf.score({"q": "say hi", "a": "hi"}, "hi there").reward == 0.0


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    pkg = tmp_path / "myrewards"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "scoring.py").write_text(textwrap.dedent("""
        from rft_runtime.workflows import Score, SingleTurnWorkflow

        def length_reward(response, truth, target=5):
            return -abs(len(response) - target)

        class Keyword:
            def __init__(self, word="yes"):
                self.word = word
            def __call__(self, response, **kwargs):
                return {"hit": float(self.word in response), "row_seen": float("row" in kwargs)}

        class Echo(SingleTurnWorkflow):
            def messages(self, row):
                return [{"role": "user", "content": "repeat: " + row["text"]}]
            def score(self, row, response):
                ok = response.strip() == row["text"]
                return Score(1.0 if ok else 0.0, {"accuracy": 1.0 if ok else 0.0})

        NOT_A_WORKFLOW = 3
    """))
    (pkg / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "myrewards"
    for name in [m for m in sys.modules if m.startswith("myrewards")]:
        del sys.modules[name]


def test_user_reward_function_and_class_by_import_path(user_package):
    fmt = SimpleNamespace(prompt_key="q", response_key="a", system_prompt=None)
    wf = get_workflow("simple_workflow")(fmt, {}, {"reward_fn": "myrewards.scoring:length_reward", "target": 3})
    assert wf.score({"q": "x", "a": ""}, "abcdef").reward == -3.0
    keyword = get_workflow("simple_workflow")(fmt, {}, {"reward_fn": "myrewards.scoring:Keyword", "word": "ok"})
    score = keyword.score({"q": "x", "a": ""}, "it is ok")
    assert score == Score(2.0, {"hit": 1.0, "row_seen": 1.0})


def test_user_workflow_by_import_path(user_package):
    wf = get_workflow("myrewards.scoring:Echo")(None, {}, {})
    assert wf.messages({"text": "abc"}) == [{"role": "user", "content": "repeat: abc"}]
    assert wf.score({"text": "abc"}, "abc\n").metrics == {"accuracy": 1.0}


@pytest.mark.parametrize(("spec", "message"), [
    ("nosuchpkg.mod:Thing", r"cannot import workflow 'nosuchpkg.mod:Thing': No module named 'nosuchpkg'.*PYTHONPATH"),
    ("myrewards.scoring:Missing", r"module 'myrewards.scoring' has no 'Missing'.*Echo"),
    ("myrewards.broken:Thing", r"importing module 'myrewards.broken'.*RuntimeError: boom at import"),
    ("myrewards.scoring:NOT_A_WORKFLOW", r"must be a class with run\(\).*got a int"),
    ("myrewards.scoring.Missing", r"module 'myrewards.scoring' has no 'Missing'"),
    ("math_wrkflow", r"unknown workflow 'math_wrkflow'; did you mean 'math_workflow'\? known: simple_workflow, "
                     r".*'my_module.ClassName'.*--plugin-dir"),
])
def test_workflow_errors_say_what_failed(user_package, spec, message):
    with pytest.raises(WorkflowError, match=message):
        get_workflow(spec)


def test_reward_fn_errors_say_what_failed(user_package):
    with pytest.raises(WorkflowError, match="unknown reward function 'accuracy'.*math_reward"):
        get_reward_fn("accuracy")
    with pytest.raises(WorkflowError, match="does not accept reward_fn_args"):
        get_reward_fn("myrewards.scoring:Keyword", {"colour": "red"})
    fmt = SimpleNamespace(prompt_key="q", response_key="a", system_prompt=None)
    wf = get_workflow("simple_workflow")(fmt, {}, {"reward_fn": "nosuchpkg:f"})
    with pytest.raises(WorkflowError, match="cannot import reward function 'nosuchpkg:f'"):
        wf.score({"q": "x", "a": "y"}, "y")


def test_reward_fn_returning_nonsense_is_an_error(user_package, tmp_path):
    (tmp_path / "myrewards" / "bad.py").write_text("def f(response):\n    return 'high'\n")
    fmt = SimpleNamespace(prompt_key="q", response_key="a", system_prompt=None)
    wf = get_workflow("simple_workflow")(fmt, {}, {"reward_fn": "myrewards.bad:f"})
    with pytest.raises(WorkflowError, match="returned 'high'"):
        wf.score({"q": "x", "a": "y"}, "y")


def test_importing_workflows_stays_light():
    # the config validator imports the registry: it must not pull in torch or datasets
    code = ("import sys, rft_runtime.workflows, rft_runtime.algorithms, rft_runtime.data; "
            "print(sorted(m for m in ('torch', 'datasets', 'transformers', 'tinker') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_messages_format_rows_keep_their_conversation():
    fmt = SimpleNamespace(prompt_type="messages", messages_key="chat", prompt_key="q", response_key="a",
                          system_prompt=None, system_prompt_key=None)
    row = {"chat": [{"role": "user", "content": "hi"}], "a": "4"}
    messages = get_workflow("math_workflow")(fmt, {}, {}).messages(row)
    assert messages[0]["role"] == "system" and "<answer>" in messages[0]["content"]
    assert messages[1:] == [{"role": "user", "content": "hi"}]
    with pytest.raises(WorkflowError, match="'chat' value is not a list"):
        get_workflow("math_workflow")(fmt, {}, {}).messages({"chat": "hi"})


def test_a_per_row_system_prompt_column():
    fmt = SimpleNamespace(prompt_key="q", response_key="a", system_prompt="default", system_prompt_key="sys")
    wf = get_workflow("simple_workflow")(fmt, {}, {})
    assert wf.messages({"q": "x", "sys": "be terse"})[0] == {"role": "system", "content": "be terse"}
    assert wf.messages({"q": "x"})[0] == {"role": "system", "content": "default"}
