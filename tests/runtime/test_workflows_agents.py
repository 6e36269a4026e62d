"""Trinity-API workflows train on the local engine: a multi-turn text game (masks checked per token), an
agent that only speaks OpenAI, a judge on a second sampling client, and a job whose prompts cannot fit.

The workflows are written against Trinity-RFT's API (`from trinity.common.workflows import ...`) in a
plugin folder; trinity-rft is not installed, so the runtime's stand-in serves those imports.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import tinker
from test_run_support import GSM8K_ROWS, clean_env, job_dict, metrics, rft, write_config
from trinity_wheel import HOW, trinity_package
from workflow_plugins import GUESS_GAME, JUDGED, OPENAI_AGENT, read_log, write_plugin, write_rows

from rft_runtime.config import load_config_dict
from rft_runtime.loop.errors import RunError
from rft_runtime.loop.job import run_job
from rft_runtime.workflows import registry, trinity_compat

pytestmark = pytest.mark.skipif(trinity_compat.real_trinity_root() is not None,
                                reason="trinity-rft is installed here; these tests check the runtime without it")


def _job(tmp_path: Path, model_dir: Path, base_url: str, workflow: str, rows: list[dict], log: Path, **kw):
    cfg = job_dict(tmp_path, model_dir, base_url, name=workflow, **kw)
    ts = cfg["buffer"]["explorer_input"]["taskset"]
    ts["path"] = str(write_rows(tmp_path / "data" / f"{workflow}.jsonl", rows))
    ts["format"] = {"prompt_key": "question", "response_key": "answer"}
    ts["workflow_args"] = {"log": str(log)}
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = workflow
    return cfg


def _rft_run(config: Path, plugins: Path, timeout: float = 240):
    return subprocess.run(rft("run", "--config", str(config), "--plugin-dir", str(plugins), "--no-progress",
                              "--no-metrics"), capture_output=True, text=True, env=clean_env(), timeout=timeout)


@pytest.fixture
def plugin_registry(tmp_path):
    """Forget the plugin modules, the stand-in's registries and the names a test loaded into this process."""
    before = dict(registry._WORKFLOWS)
    path = list(sys.path)
    yield
    registry._WORKFLOWS.clear()
    registry._WORKFLOWS.update(before)
    sys.path[:] = path
    for name, module in list(sys.modules.items()):
        origin = str(getattr(module, "__file__", "") or "")
        if name == "trinity" or name.startswith("trinity.") or origin.startswith(str(tmp_path)):
            del sys.modules[name]


def _expected_mask(tokenizer, tokens: list[int]) -> list[int]:
    """1 on the tokens of every assistant turn (its content, <|im_end|> and the newline the template puts
    after it), found by reading the tiny tokenizer's one-token-per-character text: independent of how
    the runtime computes masks."""
    pieces = [tokenizer.decode([t]) for t in tokens]
    mask = [0] * len(tokens)
    i = 0
    while i < len(pieces):
        header = ["<|im_start|>", *"assistant", "\n"]
        if pieces[i:i + len(header)] == header:
            j = i + len(header)
            while j < len(pieces) and pieces[j] != "<|im_end|>":
                mask[j] = 1
                j += 1
            for k in (j, j + 1):  # <|im_end|> and "\n"
                if k < len(pieces):
                    mask[k] = 1
            i = j
        i += 1
    return mask


@pytest.mark.slow
def test_multi_turn_text_game_trains_only_on_the_models_tokens(tmp_path, tiny_model_dir, local_engine,
                                                                plugin_registry, monkeypatch):
    from rft_runtime.loop.trainer import Trainer
    from rft_runtime.workflows.plugins import load_plugins

    plugins = tmp_path / "plugins"
    write_plugin(plugins, "guess_game", GUESS_GAME)
    assert load_plugins([str(plugins)]) == ["guess_game"]
    log = tmp_path / "game.jsonl"
    rows = [{"question": "play", "secret": d} for d in range(8)]
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, "guess_game", rows, log, steps=2, batch=2,
               repeat=3)
    sent = []
    original = Trainer.train

    def spy(self, work):  # the real datums, on their way to the real engine
        sent.append(work)
        return original(self, work)

    monkeypatch.setattr(Trainer, "train", spy)
    run_job(load_config_dict(cfg), metrics_port=None, progress=False)

    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["rollouts"] == 2 * 3 and r["failed_rollouts"] == 0 for r in records)
    games = read_log(log)
    assert len(games) == 2 * 2 * 3
    assert any(len(g["messages"]) > 3 for g in games), "no game went past the first turn"

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    datums = [d for work in sent for d in work.datums]
    assert datums and all(work.loss_name == "ppo" for work in sent)
    checked = 0
    for datum in datums:
        targets = [int(x) for x in datum.loss_fn_inputs["target_tokens"].data]
        full = [datum.model_input.to_ints()[0], *targets]
        advantages = list(datum.loss_fn_inputs["advantages"].data)
        expected = _expected_mask(tok, full)
        assert any(expected), "a game with no assistant turn"
        # position k of the datum scores token k + 1; a rollout's tokens all share one advantage's sign
        carries_loss = [a != 0.0 for a in advantages]
        assert carries_loss == [bool(m) for m in expected[1:]], tok.decode(full)
        checked += 1
        # the environment's turns sit between the model's: the mask is not one block
        if full.count(tok.convert_tokens_to_ids("<|im_start|>")) > 4:
            assert any(not m for m in expected[expected.index(1):len(expected) - expected[::-1].index(1)])
    assert checked == len(datums)
    # every trained sequence is one of the games the workflow played
    played = {tuple(g["tokens"]) for g in games}
    assert all(tuple([d.model_input.to_ints()[0], *[int(x) for x in d.loss_fn_inputs["target_tokens"].data]])
               in played for d in datums)


@pytest.mark.slow
def test_an_agent_that_only_speaks_openai_trains_on_exactly_what_was_sampled(tmp_path, tiny_model_dir,
                                                                             local_engine):
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "openai_agent", OPENAI_AGENT)
    log = tmp_path / "agent.jsonl"
    rows = [{"question": f"What is {i} + 1?"} for i in range(4)]
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, "openai_agent", rows, log, steps=2, batch=2,
               repeat=2)
    cfg["explorer"]["rollout_model"].update(enable_openai_api=True, enable_history=True)
    done = _rft_run(write_config(tmp_path / "agent.yaml", cfg), plugins)
    assert done.returncode == 0, done.stderr[-3000:]
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2]
    # two completions per run, each its own experience
    assert all(r["rollouts"] == 2 * 2 * 2 and r["failed_rollouts"] == 0 for r in records)

    runs = read_log(log)
    assert len(runs) == 2 * 2 * 2
    service = tinker.ServiceClient(base_url=local_engine.base_url, api_key="tml-local")
    base = service.create_sampling_client(base_model=str(Path(tiny_model_dir).resolve())).result()
    step1 = [r for r in runs if r["model_version"] == 0]
    assert step1 and all(r["model_path"] != runs[-1]["model_path"] for r in step1)
    assert runs[-1]["model_path"].startswith("tinker://")
    for run in runs:
        assert len(run["recorded"]) == 2
        for reply, rec in zip(run["replies"], run["recorded"], strict=True):
            n = rec["prompt_length"]
            # what trains is exactly what the endpoint returned to the agent: prompt, tokens, logprobs
            assert rec["tokens"][:n] == reply["prompt_token_ids"]
            assert rec["tokens"][n:] == reply["token_ids"]
            assert rec["logprobs"] == pytest.approx(reply["logprobs"], abs=1e-6)
    for run in step1:
        for rec in run["recorded"]:
            # and the sampler really produced those tokens with those logprobs: step 1 samples the base model
            scored = base.compute_logprobs(tinker.ModelInput.from_ints(rec["tokens"])).result()
            assert rec["logprobs"] == pytest.approx(scored[rec["prompt_length"]:], abs=2e-3)


@pytest.mark.slow
def test_a_judge_scores_through_a_second_sampling_client_of_the_base_model(tmp_path, tiny_model_dir,
                                                                           local_engine):
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "judged", JUDGED)
    log = tmp_path / "judge.jsonl"
    rows = [{"question": f"Name {i}."} for i in range(4)]
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, "judged", rows, log, steps=3, batch=2, repeat=2)
    cfg["explorer"]["auxiliary_models"] = [{"model_path": str(tiny_model_dir), "name": "judge",
                                            "temperature": 1.0}]
    done = _rft_run(write_config(tmp_path / "judged.yaml", cfg), plugins)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in metrics(cfg)] == [1, 2, 3]

    runs = read_log(log)
    service = tinker.ServiceClient(base_url=local_engine.base_url, api_key="tml-local")
    base = service.create_sampling_client(base_model=str(Path(tiny_model_dir).resolve())).result()
    late = [r for r in runs if r["policy_path"].startswith("tinker://")]
    assert late, "the policy never moved to trained weights"
    for run in runs:
        assert run["judge_path"] == str(Path(tiny_model_dir).resolve())
        for grade in run["judge"]:
            # the judge samples the untrained base weights, whatever step the policy is at
            scored = base.compute_logprobs(
                tinker.ModelInput.from_ints(grade["prompt_token_ids"] + grade["token_ids"])).result()
            assert grade["logprobs"] == pytest.approx(scored[len(grade["prompt_token_ids"]):], abs=2e-3)
    # while the policy's own samples after training no longer score the same under the base weights
    moved = 0
    for run in late:
        for ans in run["policy"]:
            scored = base.compute_logprobs(tinker.ModelInput.from_ints(ans["tokens"])).result()
            tail = scored[ans["prompt_length"]:]
            moved += any(abs(a - b) > 1e-3 for a, b in zip(ans["logprobs"], tail, strict=True))
    assert moved, "the policy samples the base weights: the two clients are not distinct"


@pytest.mark.slow
def test_math_rm_workflow_grades_with_the_auxiliary_reward_model(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="rm", steps=1, batch=2, repeat=2)
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = "math_rm_workflow"
    cfg["explorer"]["auxiliary_models"] = [{"model_path": str(tiny_model_dir), "max_response_tokens": 6}]
    run_job(load_config_dict(cfg), metrics_port=None, progress=False)
    (record,) = metrics(cfg)
    assert record["rollouts"] == 4 and record["failed_rollouts"] == 0
    # a random tiny grader never writes <score>N</score>: every grade is a parse error, reward 0
    assert record["critic/rewards/mean"] == 0.0


def test_math_rm_workflow_without_a_reward_model_says_what_to_configure(tmp_path, tiny_model_dir):
    from rft_runtime.workflows import Task, WorkflowError, get_workflow

    cls = get_workflow("math_rm_workflow")
    wf = cls(task=Task(raw_task={"prompt": "1+1?", "response": "2"}), model=None)
    with pytest.raises(WorkflowError, match=r"explorer.auxiliary_models"):
        wf.score({"prompt": "1+1?", "response": "2"}, "2")


# ---------------------------------------------------------------- prompts that cannot fit


@pytest.mark.slow
def test_a_job_whose_prompts_all_exceed_max_prompt_tokens_fails_at_once(tmp_path, tiny_model_dir, local_engine):
    from transformers import AutoTokenizer

    from rft_runtime.workflows.single_turn import MATH_SYSTEM_PROMPT

    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="nofit", steps=2)
    cfg["model"]["max_prompt_tokens"] = 40
    started = time.monotonic()
    done = subprocess.run(rft("run", "--config", str(write_config(tmp_path / "nofit.yaml", cfg)), "--no-progress",
                              "--no-metrics"), capture_output=True, text=True, env=clean_env(), timeout=240)
    assert done.returncode == 1, done.stderr[-2000:]
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    longest = max(len(tok.encode(tok.apply_chat_template(
        [{"role": "system", "content": MATH_SYSTEM_PROMPT}, {"role": "user", "content": r["question"]}],
        add_generation_prompt=True, tokenize=False), add_special_tokens=False)) for r in GSM8K_ROWS)
    assert "model.max_prompt_tokens (40)" in done.stderr
    assert f"at least {longest}" in done.stderr
    assert not metrics(cfg), "a step ran although nothing could be sampled"
    assert time.monotonic() - started < 200


@pytest.mark.slow
def test_a_custom_workflow_whose_prompts_never_fit_fails_on_its_first_step(tmp_path, tiny_model_dir, local_engine,
                                                                          plugin_registry):
    from rft_runtime.workflows.plugins import load_plugins

    plugins = tmp_path / "plugins"
    write_plugin(plugins, "guess_game", GUESS_GAME)
    load_plugins([str(plugins)])
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, "guess_game",
               [{"question": "play", "secret": d} for d in range(4)], tmp_path / "g.jsonl", steps=2, batch=2, repeat=2)
    cfg["model"]["max_prompt_tokens"] = 5
    with pytest.raises(RunError, match=r"no prompt of explore step 1 .*model.max_prompt_tokens \(5\).*at least \d+"):
        run_job(load_config_dict(cfg), metrics_port=None, progress=False)
    assert not metrics(cfg)


@pytest.mark.slow
def test_a_step_that_skipped_prompts_says_so_in_its_log_line(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name="someskip", steps=1, batch=8, repeat=2)
    cfg["buffer"]["explorer_input"]["taskset"]["format"]["system_prompt"] = "Solve."
    cfg["model"]["max_prompt_tokens"] = 60  # the short questions fit, the word problems do not
    done = subprocess.run(rft("run", "--config", str(write_config(tmp_path / "someskip.yaml", cfg)),
                              "--no-metrics"), capture_output=True, text=True, env=clean_env(), timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = metrics(cfg)
    skipped = int(record["truncated_prompts"])
    assert 0 < skipped < 8
    step_lines = [line for line in done.stderr.splitlines() if "step 1/1" in line]
    assert step_lines and f"skipped_prompts={skipped}" in step_lines[-1]
    assert f"{skipped} of 8 prompts were longer than model.max_prompt_tokens (60" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("workflow", "workflow_args"), [
    ("async_math_workflow", {}),
    ("math_boxed_workflow", {"use_base": True, "with_think": True}),
    ("async_math_boxed_workflow", {"use_base": True}),
])
def test_builtin_trinity_workflows_train(tmp_path, tiny_model_dir, local_engine, workflow, workflow_args):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, name=workflow, steps=1, batch=2, repeat=3)
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = workflow
    cfg["buffer"]["explorer_input"]["taskset"]["workflow_args"] = workflow_args
    run_job(load_config_dict(cfg), metrics_port=None, progress=False)
    (record,) = metrics(cfg)
    assert record["rollouts"] == 2 * 3 and record["failed_rollouts"] == 0
    assert record["prompt_tokens"] > 0 and "rollout/accuracy/mean" in record
    if workflow_args.get("with_think"):
        # the tiny model never writes a <think> block: the boxed format penalty is the whole reward
        assert record["rollout/format_score/mean"] == pytest.approx(-0.1)


@pytest.mark.slow
def test_workflow_bugs_fail_their_runs_not_the_job(tmp_path, tiny_model_dir, local_engine, plugin_registry, caplog):
    from workflow_plugins import FLAKY

    from rft_runtime.workflows.plugins import load_plugins

    plugins = tmp_path / "plugins"
    write_plugin(plugins, "flaky", FLAKY)
    load_plugins([str(plugins)])
    rows = [{"question": "q", "kind": k} for k in ("ok", "hang", "raise", "noreward")]
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, "flaky", rows, tmp_path / "f.jsonl", steps=1,
               batch=4, repeat=2)
    cfg["explorer"]["max_timeout"] = 3
    started = time.monotonic()
    with caplog.at_level("WARNING"):
        run_job(load_config_dict(cfg), metrics_port=None, progress=False)
    (record,) = metrics(cfg)
    # only the "ok" task's two runs train; the other three tasks' six runs are counted as failed
    assert record["rollouts"] == 2 and record["failed_rollouts"] == 6
    text = caplog.text
    assert "timed out after explorer.max_timeout (3s)" in text
    assert "KeyError: 'no such board'" in text and "has no reward" in text
    # each kind of error is logged once, not once per run
    assert text.count("KeyError: 'no such board'") == 1
    assert time.monotonic() - started < 120


# ---------------------------------------------------------------- Trinity's own FrozenLake, unchanged

@pytest.mark.slow
def test_trinitys_own_frozen_lake_workflow_trains_unchanged(tmp_path, small_engine):
    pytest.importorskip("gymnasium", reason="FrozenLake needs gymnasium (the dev extra installs it)")
    source = trinity_package()
    if source is None:
        pytest.skip(f"needs Trinity's files, taken from the real trinity-rft install: {HOW}")
    model_dir, engine = small_engine
    plugins = tmp_path / "plugins"
    # Trinity's files byte for byte, at the path their own imports name
    for name in ("utils.py", "workflow.py"):
        target = plugins / "trinity" / "common" / "workflows" / "envs" / "frozen_lake" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((source / "common" / "workflows" / "envs" / "frozen_lake" / name).read_bytes())
    cfg = job_dict(tmp_path, model_dir, engine.base_url, name="frozen", steps=1, batch=2, repeat=2)
    ts = cfg["buffer"]["explorer_input"]["taskset"]
    ts["path"] = str(write_rows(tmp_path / "data" / "lakes.jsonl", [{"question": "lake", "size": 3, "p": 0.8, "seed": s} for s in range(4)]))
    ts["workflow_args"] = {"env_max_steps": 4, "agent_max_steps": 2}
    cfg["buffer"]["explorer_input"]["default_workflow_type"] = \
        "trinity.common.workflows.envs.frozen_lake.workflow.FrozenLakeWorkflow"
    # a short reply per turn: the context ends a few tokens after the longest prompt
    cfg["model"].update(max_prompt_tokens=1350, max_response_tokens=8)
    done = _rft_run(write_config(tmp_path / "frozen.yaml", cfg), plugins, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = metrics(cfg)
    assert record["rollouts"] == 2 * 2 and record["failed_rollouts"] == 0
    assert record["response_tokens"] > 0
