"""Trinity's workflow protocol without trinity-rft: the stand-in `trinity` package, plugin folders, the
built-in rewards Trinity users name, assistant masks, datums from masks, and the loopback OpenAI endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_run_support import clean_env, job_dict, rft, write_config
from trinity_wheel import HOW, trinity_package
from workflow_plugins import GUESS_GAME, write_plugin

from rft_runtime.workflows import (
    Experience,
    WorkflowError,
    get_reward_fn,
    known_reward_fns,
    known_workflows,
    trinity_compat,
)

ROOT = Path(__file__).resolve().parents[2]
no_trinity = pytest.mark.skipif(trinity_compat.real_trinity_root() is not None,
                                reason="trinity-rft is installed here; these check the runtime without it")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=clean_env(PYTHONPATH=f"{ROOT / 'runtime'}"))


# ---------------------------------------------------------------- the stand-in trinity package


@no_trinity
def test_importing_the_runtime_does_not_make_trinity_importable():
    done = _python("""
        import rft_runtime, rft_runtime.workflows, rft_runtime.loop.explorer
        try:
            import trinity
        except ImportError:
            print("absent")
    """)
    assert done.stdout.strip() == "absent", done.stderr


@no_trinity
def test_trinity_imports_resolve_to_the_runtimes_classes_once_a_workflow_is_loaded():
    done = _python("""
        import json
        from rft_runtime.workflows import trinity_compat, Workflow, Experience, registry
        assert trinity_compat.install()
        from trinity.common.workflows import WORKFLOWS, Task, Workflow as TW
        from trinity.common.workflows.workflow import MultiTurnWorkflow, SimpleWorkflow, MathWorkflow
        from trinity.common.experience import Experience as TE, EID
        from trinity.common.rewards import REWARD_FUNCTIONS, RewardFn
        from trinity.common.models.model import ModelWrapper
        from trinity.utils.log import get_logger

        @WORKFLOWS.register_module("my_flow")
        class Mine(TW):
            def run(self):
                return []

        @REWARD_FUNCTIONS.register_module("my_reward")
        class R(RewardFn):
            def __init__(self, bonus=0.0):
                self.bonus = bonus
            def __call__(self, response, truth=None):
                return {"hit": float(response == truth) + self.bonus}

        out = {"same": TW is Workflow and TE is Experience, "flow": "my_flow" in registry.known_workflows(),
               "reward": "my_reward" in registry.known_reward_fns(),
               "got": registry.get_workflow("my_flow") is Mine,
               "score": registry.get_reward_fn("my_reward", {"bonus": 0.5})(response="a", truth="a")}
        try:
            import trinity.common.models.vllm_model
        except ImportError as exc:
            out["missing"] = str(exc)
        print(json.dumps(out))
    """)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["same"] and out["flow"] and out["reward"] and out["got"]
    assert out["score"] == {"hit": 1.5}
    assert "trinity-rft is not installed" in out["missing"] and "pip install 'rft-platform[trinity]'" in out["missing"]


# ---------------------------------------------------------------- plugin folders and import paths


@no_trinity
def test_validate_knows_plugin_names_only_with_the_plugin_dir(tmp_path, tiny_model_dir):
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "guess_game", GUESS_GAME)
    cfg = job_dict(tmp_path, tiny_model_dir, "http://127.0.0.1:1")
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = "guess_game"
    config = write_config(tmp_path / "job.yaml", cfg)
    without = subprocess.run(rft("validate", "--config", str(config)), capture_output=True, text=True,
                             env=clean_env())
    assert without.returncode == 2 and "unknown workflow 'guess_game'" in without.stderr + without.stdout
    with_dir = subprocess.run(rft("validate", "--config", str(config), "--plugin-dir", str(plugins)),
                              capture_output=True, text=True, env=clean_env())
    assert with_dir.returncode == 0, with_dir.stderr
    # Trinity's dotted form `module.Class` names the same class
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = "guess_game.GuessGame"
    dotted = subprocess.run(rft("validate", "--config", str(write_config(tmp_path / "dotted.yaml", cfg)),
                                "--plugin-dir", str(plugins)), capture_output=True, text=True, env=clean_env())
    assert dotted.returncode == 0, dotted.stderr


def test_a_bad_plugin_dir_stops_the_command_with_the_reason(tmp_path, tiny_model_dir):
    config = write_config(tmp_path / "job.yaml", job_dict(tmp_path, tiny_model_dir, "http://127.0.0.1:1"))
    missing = subprocess.run(rft("validate", "--config", str(config), "--plugin-dir", str(tmp_path / "nope")),
                             capture_output=True, text=True, env=clean_env())
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    write_plugin(tmp_path / "broken", "oops", "raise RuntimeError('bad plugin')\n")
    broken = subprocess.run(rft("run", "--config", str(config), "--plugin-dir", str(tmp_path / "broken")),
                            capture_output=True, text=True, env=clean_env())
    assert broken.returncode == 2 and "oops.py failed to import: RuntimeError: bad plugin" in broken.stderr


def test_builtin_names_cover_trinitys_math_family_and_rewards():
    assert {"math_workflow", "math_boxed_workflow", "async_math_workflow", "math_rm_workflow",
            "simple_workflow"} <= set(known_workflows())
    assert {"math_reward", "math_boxed_reward", "countdown_reward", "format_reward",
            "accuracy_reward"} <= set(known_reward_fns())


def test_importing_the_registry_pulls_in_no_heavy_package():
    done = _python("""
        import sys, rft_runtime.workflows
        rft_runtime.workflows.known_workflows(); rft_runtime.workflows.known_reward_fns()
        print(sorted(m for m in ('torch', 'tinker', 'openai', 'transformers', 'trinity', 'datasets')
                     if m in sys.modules))
    """)
    assert done.stdout.strip() == "[]", done.stderr


# ---------------------------------------------------------------- rewards Trinity users name


@pytest.mark.parametrize(("response", "truth", "score"), [
    ("<think>x</think>\n<answer>(3 + 5) * 2</answer>", {"target": 16, "numbers": [3, 5, 2]}, 1.0),
    ("<answer>3 * 5 + 2</answer>", json.dumps({"target": 17, "numbers": [2, 3, 5]}), 1.0),
    ("<answer>3 * 5 - 2</answer>", {"target": 17, "numbers": [2, 3, 5]}, 0.1),   # wrong value
    ("<answer>3 * 5 + 2 + 2</answer>", {"target": 19, "numbers": [2, 3, 5]}, 0.1),  # 2 used twice
    ("<answer>__import__('os')</answer>", {"target": 1, "numbers": []}, 0.1),  # not arithmetic
    ("no answer tag", {"target": 1, "numbers": [1]}, 0.0),
    ("<answer>1 + 1</answer>\ntrailing line", {"target": 2, "numbers": [1, 1]}, 0.0),  # last line only
])
def test_countdown_reward(response, truth, score):
    assert get_reward_fn("countdown_reward")(response=response, truth=truth) == {"score": score}


@pytest.mark.parametrize(("response", "truth", "with_think", "expected"), [
    ("so \\boxed{42}", "42", False, {"accuracy": 1.0, "format_score": 0.0}),
    ("\\boxed{\\frac{1}{2}}", "The answer is $\\boxed{\\dfrac{1}{2}}$", False, {"accuracy": 1.0, "format_score": 0.0}),
    ("\\boxed{41}", "42", False, {"accuracy": 0.0, "format_score": 0.0}),
    ("42", "42", False, {"accuracy": 0.0, "format_score": 0.0}),  # no box, no credit
    ("<think>hm</think> \\boxed{7}", "7", True, {"accuracy": 1.0, "format_score": 0.0}),
    ("\\boxed{7}", "7", True, {"accuracy": 1.0, "format_score": -0.1}),
])
def test_math_boxed_reward(response, truth, with_think, expected):
    got = get_reward_fn("math_boxed_reward")(response=response, truth=truth, with_think=with_think)
    assert got == pytest.approx(expected)


def test_format_reward_takes_trinitys_pattern_argument():
    fn = get_reward_fn("format_reward", {"pattern": r"^<answer>.*</answer>$"})
    assert fn(response="<answer>1</answer>") == {"format_score": 0.1}
    assert fn(response="1") == {"format_score": -0.1}


# ---------------------------------------------------------------- experiences, masks, datums


def test_experience_defaults_follow_trinity():
    single = Experience(tokens=[1, 2, 3, 4], prompt_length=2, logprobs=[-0.5, -0.25])
    assert [bool(x) for x in single.action_mask] == [True, True] and single.experience_type == "single_turn"
    multi = Experience(tokens=[1, 2, 3, 4], prompt_length=1, logprobs=[0, 0, 0], action_mask=[1, 0, 1])
    assert multi.experience_type == "multi_turn"
    with pytest.raises(ValueError, match="more tokens than its prompt"):
        Experience(tokens=[1, 2], prompt_length=2)
    assert single.eid.tid == f"{single.eid.batch}/{single.eid.task}"


def test_assistant_mask_marks_exactly_the_assistant_turns(tiny_model_dir):
    from transformers import AutoTokenizer

    from rft_runtime.workflows.model import ModelSettings, ModelWrapper

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = ModelWrapper(None, tok, ModelSettings(name="m"))
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"}, {"role": "user", "content": "obs"},
                {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}]
    tokens, mask = model.assistant_mask(messages)
    marked = "".join(tok.decode([t]) if m else "." for t, m in zip(tokens, mask, strict=True))
    # only the replies, each with the <|im_end|> and newline the template closes it with
    assert marked.replace(".", " ").split() == ["yo<|im_end|>", "ok<|im_end|>"]
    assert sum(mask) == 2 * (2 + 2)
    with pytest.raises(WorkflowError, match="at least one assistant message"):
        model.assistant_mask(messages[:2])
    import asyncio

    # Trinity's FrozenLake budgets its turns with this: the prompt chat() would send, header included
    prompt = tok.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=False)
    assert asyncio.run(model.get_message_token_len(messages[:2])) == len(tok.encode(prompt, add_special_tokens=False))


def test_a_masked_token_gets_neither_advantage_nor_weight():
    from types import SimpleNamespace

    from rft_runtime.loop.datums import loss_datum

    # a built-in advantage loss (grpo's ppo): the masked tokens' advantages are 0
    ppo = SimpleNamespace(builtin=("ppo", {}), advantage_factor=1.0)
    datum = loss_datum(ppo, [1, 2, 3], [4, 5, 6, 7], [-1.0, -2.0, -3.0, -4.0], 2.0, 0.25, [1, 0, 0, 1])
    assert list(datum.loss_fn_inputs["advantages"].data) == [0.0, 0.0, 0.5, 0.0, 0.0, 0.5]
    # a client-side loss: only the weights travel, 0 on the masked tokens
    custom = SimpleNamespace(builtin=None, advantage_factor=1.0)
    with_ref = loss_datum(custom, [1, 2, 3], [4, 5, 6, 7], [-1.0] * 4, 2.0, 0.25, [1, 0, 0, 1])
    assert list(with_ref.loss_fn_inputs["weights"].data) == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    # cross-entropy (sft on rollouts): the scale on the model's own tokens only
    ce = SimpleNamespace(builtin=("cross_entropy", None), advantage_factor=1.0)
    sft = loss_datum(ce, [1, 2, 3], [4, 5, 6, 7], [0.0] * 4, 0.0, 0.25, [1, 0, 0, 1])
    assert list(sft.loss_fn_inputs["weights"].data) == [0.0, 0.0, 0.25, 0.0, 0.0, 0.25]


# ---------------------------------------------------------------- the loopback OpenAI endpoint


@pytest.mark.slow
def test_the_loopback_endpoint_speaks_openai(tiny_model_dir, local_engine):
    import openai
    import tinker
    from transformers import AutoTokenizer

    from rft_runtime.workflows.model import ModelSettings, ModelWrapper
    from rft_runtime.workflows.openai_server import OpenAIServer

    service = tinker.ServiceClient(base_url=local_engine.base_url, api_key="tml-local")
    sampler = service.create_sampling_client(base_model=str(Path(tiny_model_dir).resolve())).result()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    server = OpenAIServer()
    try:
        policy = ModelWrapper(sampler, tok, ModelSettings(name="policy", max_tokens=4, enable_history=True,
                                                          enable_openai_api=True, max_prompt_tokens=30),
                              server=server, seed=3)
        server.set_models([policy])
        rollout = policy.clone_with_isolated_history()
        client = rollout.get_openai_client()
        assert [m.id for m in client.models.list()] == ["policy"]
        resp = client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}], n=2)
        assert len(resp.choices) == 2 and resp.usage.completion_tokens == sum(
            len(c.model_extra["token_ids"]) for c in resp.choices)
        recorded = rollout.extract_experience_from_history()
        assert [list(map(int, e.tokens[e.prompt_length:])) for e in recorded] == \
            [c.model_extra["token_ids"] for c in resp.choices]
        assert policy.history == []  # another rollout's history is not touched
        with pytest.raises(openai.BadRequestError, match="streaming is not supported"):
            client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}],
                                           stream=True)
        with pytest.raises(openai.BadRequestError, match="over model.max_prompt_tokens"):
            client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "x" * 80}])
        stranger = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
        # an agent in another process keeps the URL after its rollout ended
        late = openai.OpenAI(base_url=str(client.base_url), api_key=rollout.api_key, max_retries=0)
        rollout.close()
        with pytest.raises(openai.NotFoundError, match="has finished"):
            late.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}])
        # the plain /v1 route serves the current sampler, recording nothing
        plain = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)
        assert plain.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}]).choices
        assert policy.history == []
    finally:
        server.close()


def test_the_openai_client_needs_the_setting_trinity_needs(tiny_model_dir):
    from rft_runtime.workflows.model import ModelSettings, ModelWrapper

    model = ModelWrapper(None, None, ModelSettings(name="m"))
    with pytest.raises(WorkflowError, match="enable_openai_api: true"):
        model.get_openai_client()
    with pytest.raises(WorkflowError, match="enable_history: true"):
        model.extract_experience_from_history()


@pytest.mark.slow
def test_truncation_follows_trinity(tiny_model_dir, local_engine):
    import tinker
    from transformers import AutoTokenizer

    from rft_runtime.workflows import MultiTurnWorkflow, Task
    from rft_runtime.workflows.experience import as_floats, as_ints
    from rft_runtime.workflows.model import ModelSettings, ModelWrapper

    service = tinker.ServiceClient(base_url=local_engine.base_url, api_key="tml-local")
    sampler = service.create_sampling_client(base_model=str(Path(tiny_model_dir).resolve())).result()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = ModelWrapper(sampler, tok, ModelSettings(name="m", max_tokens=50, max_prompt_tokens=40, max_model_len=60),
                         seed=1)
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a" * 30},
             {"role": "user", "content": "more"}, {"role": "assistant", "content": "b" * 30}]
    exp = model.convert_messages_to_experience(convo)
    # cut at max_model_len - 1 tokens, the mask and logprobs cut with it
    assert exp.truncate_status == "response_truncated" and len(as_ints(exp.tokens)) == 59
    assert len(as_floats(exp.logprobs)) == len(as_ints(exp.action_mask)) == 59 - exp.prompt_length
    wf = MultiTurnWorkflow(task=Task(raw_task={}), model=model)
    assert wf.process_messages_to_experience(convo, reward=1.0).reward == 0.0  # Trinity: a cut game earns 0
    # a prompt over max_prompt_tokens is not sampled: a masked-out, reward-0 placeholder per requested reply
    long = [{"role": "user", "content": "x" * 60}]
    dummies = model.chat(long, n=2)
    assert [e.truncate_status for e in dummies] == ["prompt_truncated"] * 2
    assert all(e.reward == 0.0 and not any(as_ints(e.action_mask)) for e in dummies)
    assert model.calls[-1].truncated and model.calls[-1].prompt_tokens > 40
    # a reply never runs past max_model_len, whatever max_tokens asks for
    (reply,) = model.chat([{"role": "user", "content": "y" * 30}], max_tokens=500)
    assert len(as_ints(reply.tokens)) <= 60


def test_trinitys_own_names_are_listed_from_an_installed_package_without_importing_it(tmp_path):
    source = trinity_package()
    if source is None:
        pytest.skip(f"needs trinity-rft's files, from its real install: {HOW}")
    import shutil

    shutil.copytree(source, tmp_path / "site" / "trinity")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json, sys
        from rft_runtime.workflows import known_workflows, known_reward_fns, trinity_compat
        print(json.dumps({"workflows": known_workflows(), "rewards": known_reward_fns(),
                          "stand_in": trinity_compat.install(), "imported": "trinity" in sys.modules}))
    """)], capture_output=True, text=True, env=clean_env(PYTHONPATH=f"{ROOT / 'runtime'}:{tmp_path / 'site'}"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert {"alfworld_workflow", "frozen_lake_workflow", "agentscope_react_workflow", "math_workflow"} <= \
        set(out["workflows"])
    # Trinity registers 37; every name known here is one of them, so the union is Trinity's 37
    assert set(known_workflows()) == set(out["workflows"]) and len(set(out["workflows"])) == 37
    assert {"math_dapo_reward", "countdown_reward"} <= set(out["rewards"])
    # the real package is left alone: no stand-in, and listing imported nothing of it
    assert out["stand_in"] is False and out["imported"] is False
