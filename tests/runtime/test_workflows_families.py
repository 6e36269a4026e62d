"""Each family of workflows Trinity-RFT 0.6 registers trains 2 steps on the local engine (the real tinker SDK
over HTTP, the tiny model), with this runtime's own implementation of it: math_eval, the judged ones
(RULER, trainable RULER, rubric judge and its API form), on-policy distillation, tool_call, Sudoku, the
step-wise pattern, math_dapo_reward; FrozenLake needs the small model's context. Judges and teachers are
the tiny model again, as explorer.auxiliary_models[0]: a random model rarely writes a readable grade, so
the tests check the wiring a user would notice (what was sampled, judged, graded and trained), not scores.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_run_support import GSM8K_ROWS, clean_env, job_dict, metrics, rft, write_config
from workflow_plugins import write_plugin, write_rows

from rft_runtime.config import load_config_dict
from rft_runtime.loop.job import run_job

pytestmark = pytest.mark.slow


def _job(tmp_path: Path, model_dir: Path, base_url: str, workflow: str, *, rows: list[dict] | None = None,
         steps: int = 2, batch: int = 2, repeat: int = 2, **kw) -> dict:
    cfg = job_dict(tmp_path, model_dir, base_url, name=workflow, steps=steps, batch=batch, repeat=repeat, **kw)
    ei = cfg["buffer"]["explorer_input"]
    ei["default_workflow_type"] = workflow
    if rows is not None:
        ei["taskset"]["path"] = str(write_rows(tmp_path / "data" / f"{workflow}.jsonl", rows))
    return cfg


def _judge(cfg: dict, model_dir: Path, **settings) -> dict:
    cfg["explorer"]["auxiliary_models"] = [{"model_path": str(model_dir), "max_response_tokens": 16, **settings}]
    return cfg


SUMS = [{"question": f"{a} + {a} = ?", "answer": str(2 * a)} for a in range(4)]


def _trained(cfg: dict, steps: int = 2) -> list[dict]:
    run_job(load_config_dict(cfg), metrics_port=None, progress=False)
    records = metrics(cfg)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all(r["failed_rollouts"] == 0 for r in records), records
    return records


@pytest.mark.parametrize(("workflow", "needs"), [
    ("simple_workflow", None), ("async_simple_workflow", None), ("math_workflow", None),
    ("async_math_workflow", None), ("math_boxed_workflow", None), ("async_math_boxed_workflow", None),
    ("math_eval_workflow", None), ("math_rm_workflow", "judge"), ("async_math_rm_workflow", "judge"),
    ("on_policy_distill_workflow", "teacher"),
])
def test_each_single_turn_name_trains_two_steps(tmp_path, tiny_model_dir, local_engine, workflow, needs):
    """The rest of the registered names with no environment, each through two training steps."""
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, workflow, rows=SUMS)
    if needs:
        _judge(cfg, tiny_model_dir)
    if needs == "teacher":
        cfg["algorithm"]["algorithm_type"] = "on_policy_distill"
    records = _trained(cfg)
    assert all(r["rollouts"] == 4 for r in records)


def test_math_eval_workflow_grades_the_boxed_answer(tmp_path, tiny_model_dir, local_engine):
    rows = [{"question": f"What is {a} + {a}?", "answer": str(2 * a)} for a in range(4)]
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, "async_math_eval_workflow", rows=rows, repeat=2)
    records = _trained(cfg)
    # one reply per run (Trinity's fixed evaluation sampling), graded: accuracy is logged for every step
    assert all(r["rollouts"] == 4 and "rollout/accuracy/mean" in r for r in records)


@pytest.mark.parametrize("workflow", ["math_ruler_workflow", "async_math_ruler_workflow"])
def test_ruler_scores_the_group_with_the_judge(tmp_path, small_engine, workflow):
    model_dir, engine = small_engine
    cfg = _judge(_job(tmp_path, model_dir, engine.base_url, workflow, rows=SUMS, repeat=3), model_dir)
    # the judge's prompt holds the question and all three replies: about 1300 byte-level tokens
    cfg["model"].update(max_prompt_tokens=1500, max_model_len=2048)
    records = _trained(cfg)
    for r in records:
        # the judge sampled (no prompt skipped) and its reply was read: a random one writes no [s1, s2, s3]
        assert r["rollouts"] == 6 and r["truncated_prompts"] == 0
        assert "rollout/gold_reward/mean" in r and r["rollout/judge_success/mean"] == 0.0


def test_trainable_ruler_judges_with_the_policy(tmp_path, small_engine, monkeypatch):
    from rft_runtime.workflows import judged

    model_dir, engine = small_engine
    # the ground-truth branch (taken on 20% of tasks) is the one that adds the judge's own experiences
    monkeypatch.setattr(judged, "GROUND_TRUTH_SHARE", 1.0)
    cfg = _job(tmp_path, model_dir, engine.base_url, "math_trainable_ruler_workflow", rows=SUMS, repeat=2)
    cfg["model"].update(max_prompt_tokens=1500, max_model_len=2048)
    records = _trained(cfg)
    # 2 tasks x (2 replies + 2 judgements of them), the judgements a group of their own ("<task>-ruler")
    assert all(r["rollouts"] == 8 and r["truncated_prompts"] == 0 for r in records)


def test_rubric_judge_rates_each_reply_with_the_judge(tmp_path, small_engine):
    model_dir, engine = small_engine
    rows = [{"question": f"Describe {w}.", "rubric": [{"description": "mentions colour", "weight": 1}]}
            for w in ("sky", "grass", "sea", "sun")]
    cfg = _judge(_job(tmp_path, model_dir, engine.base_url, "rubric_judge_workflow", rows=rows), model_dir)
    cfg["model"].update(max_prompt_tokens=1500, max_model_len=2048)
    records = _trained(cfg)
    assert all(r["rollouts"] == 4 and r["truncated_prompts"] == 0 and "rollout/judge_success/mean" in r
               for r in records)


def test_rubric_judge_openai_asks_the_api_named_by_the_environment(tmp_path, small_engine):
    """The external judge is an OpenAI-compatible server on loopback (this runtime's endpoint over the base
    model), found through the variables workflow_args name: what rubric_judge_openai_workflow does."""
    import tinker
    from transformers import AutoTokenizer

    from rft_runtime.workflows.model import ModelSettings, ModelWrapper
    from rft_runtime.workflows.openai_server import OpenAIServer

    model_dir, engine = small_engine
    service = tinker.ServiceClient(base_url=engine.base_url, api_key="tml-local")
    sampler = service.create_sampling_client(base_model=str(Path(model_dir).resolve())).result()
    server = OpenAIServer()
    judge = ModelWrapper(sampler, AutoTokenizer.from_pretrained(str(model_dir)),
                         ModelSettings(name="judge-9000", max_tokens=8, enable_openai_api=True), server=server)
    server.set_models([judge])
    try:
        rows = [{"question": f"Describe {w}.", "rubric": []} for w in ("sky", "sea", "sun", "moon")]
        cfg = _job(tmp_path, model_dir, engine.base_url, "rubric_judge_openai_workflow", rows=rows)
        cfg["buffer"]["explorer_input"]["taskset"]["workflow_args"] = {
            "judge_model_name": "judge-9000", "judge_api_base_url_env": "MY_JUDGE_URL",
            "judge_api_key_env": "MY_JUDGE_KEY"}
        env = clean_env(MY_JUDGE_URL=f"{server.base_url}/v1", MY_JUDGE_KEY=server.api_key)
        done = subprocess.run(rft("run", "--config", str(write_config(tmp_path / "api.yaml", cfg)), "--no-progress",
                                  "--no-metrics"), capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert [r["failed_rollouts"] for r in metrics(cfg)] == [0, 0]
        # without the variable the run stops before step 1, naming it
        cfg["name"] = "no-url"
        env.pop("MY_JUDGE_URL")
        done = subprocess.run(rft("run", "--config", str(write_config(tmp_path / "nourl.yaml", cfg)),
                                  "--no-progress", "--no-metrics"), capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 1 and "MY_JUDGE_URL" in done.stderr and not metrics(cfg)
    finally:
        server.close()


def test_on_policy_distillation_trains_on_the_teachers_logprobs(tmp_path, tiny_model_dir, local_engine):
    cfg = _judge(_job(tmp_path, tiny_model_dir, local_engine.base_url, "on_policy_distill_math_workflow",
                      rows=[{"question": r["question"], "answer": r["answer"]} for r in GSM8K_ROWS[:4]]),
                 tiny_model_dir)
    cfg["algorithm"].update(algorithm_type="on_policy_distill")
    records = _trained(cfg)
    # the student is the teacher's own weights at step 1: their logprobs agree, so the KL starts near 0
    assert abs(records[0]["rollout/kl_divergence/mean"]) < 1e-2
    assert all("rollout/accuracy/mean" in r for r in records)


TOOL_ROWS = [{
    "tools": json.dumps([{"name": "add", "description": "add numbers", "parameters": {"type": "object"}}]),
    "raw_system": "You can use tools.",
    "conversations": [{"from": "human", "value": f"Add {a} and 1."}],
    "answer": json.dumps([{"name": "add", "arguments": {"a": a, "b": 1}}]),
} for a in range(4)]


def test_tool_call_workflow_scores_the_calls_against_the_answer(tmp_path, small_engine):
    model_dir, engine = small_engine
    cfg = _job(tmp_path, model_dir, engine.base_url, "tool_call_workflow", rows=TOOL_ROWS)
    # the rows' prompt is their conversation (the data layer wants a prompt column to exist)
    cfg["buffer"]["explorer_input"]["taskset"]["format"]["prompt_key"] = "conversations"
    # Tool-N1's instructions and the tool list: about 1100 byte-level tokens
    cfg["model"].update(max_prompt_tokens=1500, max_model_len=2048)
    records = _trained(cfg)
    # a random model writes no <think> + <tool_call>: every reply scores 0
    assert all(r["rollouts"] == 4 and r["critic/rewards/mean"] == 0.0 for r in records)


def test_sudoku_plays_turns_until_a_bad_move(tmp_path, tiny_model_dir, local_engine):
    import random

    from rft_runtime.workflows.games.sudoku import generate

    boards = [generate(rng=random.Random(s)) for s in range(4)]
    rows = [{"question": "sudoku", "puzzle": p, "solution": s} for p, s in boards]
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, "sudoku_workflow", rows=rows)
    cfg["model"]["max_prompt_tokens"] = 900
    records = _trained(cfg)
    # a random reply is no `row col value` move: the first turn ends the game with reward -1
    assert all(r["rollouts"] == 4 and r["critic/rewards/mean"] == -1.0 for r in records)


def test_math_dapo_reward_gives_minus_one_for_a_wrong_answer(tmp_path, tiny_model_dir, local_engine):
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, "math_boxed_workflow")
    cfg["buffer"]["explorer_input"]["default_reward_fn_type"] = "math_dapo_reward"
    cfg["buffer"]["explorer_input"]["taskset"]["reward_fn_args"] = {
        "enable_overlong_penalty": True, "max_response_length": 12, "cache_length": 4, "penalty_factor": 0.5}
    records = _trained(cfg)
    # no \\boxed{} answer from a random model: accuracy -1; its 12-token replies hit the overlong ramp's end
    assert all(r["rollout/accuracy/mean"] == -1.0 and r["rollout/format_score/mean"] < 0 for r in records)


STEP_WISE = '''
from trinity.common.workflows import WORKFLOWS
from trinity.common.workflows.step_wise_workflow import RewardPropagationWorkflow


@WORKFLOWS.register_module("two_step_agent")
class TwoStepAgent(RewardPropagationWorkflow):
    """Asks twice through the OpenAI client; every call shares the run's reward."""

    @property
    def max_step_num(self):
        return 2

    def step(self, step_num):
        self.client.chat.completions.create(model=self.client.model_path, max_tokens=4,
                                            messages=[{"role": "user", "content": f"step {step_num}"}])
        return True

    def reward(self, exps):
        return float(len(exps)) + 0.1 * (hash(exps[0].response_text) % 5)
'''


def test_the_step_wise_pattern_trains_every_call_of_the_run(tmp_path, tiny_model_dir, local_engine):
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "two_step", STEP_WISE)
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, "two_step_agent")
    cfg["explorer"]["rollout_model"].update(enable_history=True, enable_openai_api=True)
    done = subprocess.run(rft("run", "--config", str(write_config(tmp_path / "steps.yaml", cfg)), "--plugin-dir",
                              str(plugins), "--no-progress", "--no-metrics"), capture_output=True, text=True,
                          env=clean_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # 2 tasks x 2 runs x 2 model calls, each its own experience
    assert [r["rollouts"] for r in metrics(cfg)] == [8, 8]


def test_frozen_lake_plays_the_lake_with_gymnasium(tmp_path, small_engine):
    pytest.importorskip("gymnasium", reason="frozen_lake_workflow needs gymnasium (the dev extra installs it)")
    model_dir, engine = small_engine
    rows = [{"question": "lake", "size": 3, "p": 0.8, "seed": s} for s in range(4)]
    cfg = _job(tmp_path, model_dir, engine.base_url, "frozen_lake_workflow", rows=rows)
    cfg["buffer"]["explorer_input"]["taskset"]["workflow_args"] = {"env_max_steps": 4, "agent_max_steps": 2}
    cfg["model"].update(max_prompt_tokens=1350, max_response_tokens=8)
    records = _trained(cfg)
    # one experience per episode: the whole conversation, only the model's turns trained
    assert all(r["rollouts"] == 4 and r["response_tokens"] > 0 for r in records)


def test_a_step_in_which_every_rollout_failed_stops_the_job(tmp_path, tiny_model_dir, local_engine):
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "broken", '''
from trinity.common.workflows import WORKFLOWS, Workflow


@WORKFLOWS.register_module("always_broken")
class AlwaysBroken(Workflow):
    def run(self):
        raise RuntimeError("the environment is down")
''')
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, "always_broken")
    cfg["explorer"]["max_retry_times"] = 1
    done = subprocess.run(rft("run", "--config", str(write_config(tmp_path / "broken.yaml", cfg)), "--plugin-dir",
                              str(plugins), "--no-progress", "--no-metrics"), capture_output=True, text=True,
                          env=clean_env(), timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "every rollout of explore step 1 failed" in done.stderr
    assert "RuntimeError: the environment is down (tried 2 times: explorer.max_retry_times 1)" in done.stderr
    assert not metrics(cfg)


def test_a_run_that_fails_once_is_retried_and_trains(tmp_path, tiny_model_dir, local_engine):
    plugins = tmp_path / "plugins"
    marks = tmp_path / "marks"
    marks.mkdir()
    write_plugin(plugins, "flaky_once", '''
import os, uuid

from trinity.common.workflows import WORKFLOWS
from trinity.common.workflows.workflow import MathWorkflow


@WORKFLOWS.register_module("flaky_once")
class FlakyOnce(MathWorkflow):
    def run(self):
        folder = self.task.workflow_args["marks"]
        mark = os.path.join(folder, f"{self.task.batch_id}-{self.task.task_id}")
        if not os.path.exists(mark):
            open(mark, "w").close()
            raise RuntimeError("the game server is still starting")
        return super().run()
''')
    cfg = _job(tmp_path, tiny_model_dir, local_engine.base_url, "flaky_once")
    cfg["buffer"]["explorer_input"]["taskset"]["workflow_args"] = {"marks": str(marks)}
    done = subprocess.run(rft("run", "--config", str(write_config(tmp_path / "flaky.yaml", cfg)), "--plugin-dir",
                              str(plugins), "--no-progress", "--no-metrics"), capture_output=True, text=True,
                          env=clean_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(r["rollouts"], r["failed_rollouts"]) for r in metrics(cfg)] == [(4, 0), (4, 0)]
    assert len(os.listdir(marks)) == 4  # every task failed its first try


# ---------------------------------------------------------------- tools and images on the loopback endpoint

TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n"
    "{% for c in m.tool_calls %}<tool_call>\n{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}"
    "\n</tool_call>{% endfor %}<|im_end|>\n{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>"
    "{{ m.content }}</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ADD = {"type": "function", "function": {"name": "add", "description": "add two numbers",
                                        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}


def test_a_tool_calling_agent_through_the_openai_client(tiny_model_dir, local_engine):
    """The tiny model is first taught (cross-entropy, a few dozen steps) to answer with a Hermes tool call, so
    that a real sampled reply holds one; the agent then runs a tool round through the official client."""
    import numpy as np
    import openai
    import tinker
    from transformers import AutoTokenizer

    from rft_runtime.workflows.model import ModelSettings, ModelWrapper
    from rft_runtime.workflows.openai_server import OpenAIServer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    service = tinker.ServiceClient(base_url=local_engine.base_url, api_key="tml-local")
    base = str(Path(tiny_model_dir).resolve())
    server = OpenAIServer()
    settings = ModelSettings(name="policy", max_tokens=80, enable_history=True, enable_openai_api=True,
                             temperature=0.0)
    question = [{"role": "user", "content": "add"}]
    teacher = ModelWrapper(None, tok, settings, chat_template=TOOL_TEMPLATE)
    prompt, _ = teacher.chat_prompt(question, [ADD])
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call><|im_end|>'
    target = tok.encode(call, add_special_tokens=False)
    ids = prompt + target
    datum = tinker.Datum(model_input=tinker.ModelInput.from_ints(ids[:-1]), loss_fn_inputs={
        "target_tokens": np.asarray(ids[1:], dtype=np.int64),
        "weights": np.asarray([0.0] * (len(prompt) - 1) + [1.0] * len(target), dtype=np.float32)})
    # seeded: with a random LoRA init, 60 steps now and then left the call unlearnt (a CI run failed on it)
    trainer = service.create_lora_training_client(base_model=base, rank=16, seed=0).result(timeout=120)
    for _ in range(60):
        trainer.forward_backward([datum], "cross_entropy").result()
        trainer.optim_step(tinker.AdamParams(learning_rate=4e-3)).result()
    sampler = trainer.save_weights_and_get_sampling_client()
    sampler = sampler.result() if hasattr(sampler, "result") else sampler
    policy = ModelWrapper(sampler, tok, settings, chat_template=TOOL_TEMPLATE, server=server)
    server.set_models([policy])
    try:
        rollout = policy.clone_with_isolated_history()
        client = rollout.get_openai_client()
        first = client.chat.completions.create(model="policy", messages=question, tools=[ADD], tool_choice="auto")
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message.content
        (tool_call,) = choice.message.tool_calls
        assert tool_call.function.name == "add" and json.loads(tool_call.function.arguments) == {"a": 2}
        # the tool's answer goes back as a tool message; the template renders the call and the result
        follow = [*question, choice.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": tool_call.id, "content": "3"}]
        second = client.chat.completions.create(model="policy", messages=follow, tools=[ADD])
        assert second.choices[0].message.role == "assistant"
        # what trains is exactly what was sampled, the tool-call text included
        recorded = rollout.extract_experience_from_history()
        assert [list(map(int, e.tokens[e.prompt_length:])) for e in recorded] == \
            [first.choices[0].model_extra["token_ids"], second.choices[0].model_extra["token_ids"]]
        assert tok.decode(recorded[0].tokens[recorded[0].prompt_length:]).startswith("<tool_call>")
        with pytest.raises(openai.BadRequestError, match="forces a tool call"):
            client.chat.completions.create(model="policy", messages=question, tools=[ADD], tool_choice="required")
    finally:
        server.close()


VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}"
    "{% for p in m.content %}{% if p.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}"
    "{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_images_reach_the_sampler_as_image_chunks_and_the_local_engine_says_why_it_refuses(
        tmp_path, tiny_model_dir, local_engine):
    import io

    import tinker
    from PIL import Image
    from transformers import AutoTokenizer

    from rft_runtime.workflows import WorkflowError
    from rft_runtime.workflows.model import ModelSettings, ModelWrapper
    from rft_runtime.workflows.multimodal import mm_message

    picture = tmp_path / "dot.png"
    Image.new("RGB", (8, 8), "red").save(picture)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]})
    messages = [{"role": "system", "content": "Look."}, mm_message("What colour is <image> here?", [str(picture)], [])]
    service = tinker.ServiceClient(base_url=local_engine.base_url, api_key="tml-local")
    sampler = service.create_sampling_client(base_model=str(Path(tiny_model_dir).resolve())).result()
    model = ModelWrapper(sampler, tok, ModelSettings(name="policy", max_tokens=4), chat_template=VL_TEMPLATE)
    ids, chunks = model.chat_prompt(messages)
    assert [c.type for c in chunks] == ["encoded_text", "image", "encoded_text"]
    assert Image.open(io.BytesIO(chunks[1].data)).size == (8, 8) and chunks[1].format == "png"
    # the image sits where the template put it: between the vision markers, after "What colour is "
    before = tok.decode(chunks[0].tokens)
    assert before.endswith("What colour is <|vision_start|>") and tok.decode(chunks[2].tokens).startswith("<|vision_end|>")
    assert len(ids) == len(chunks[0].tokens) + 1 + len(chunks[2].tokens)  # the processor cannot size it here
    with pytest.raises(tinker.TinkerError, match="this engine serves text models"):
        model.chat(messages)
    # a text model's own template writes nothing for an image: said at once
    text_only = ModelWrapper(sampler, tok, ModelSettings(name="policy", max_tokens=4))
    with pytest.raises(WorkflowError, match="not a vision-language model's template"):
        text_only.chat(messages)
