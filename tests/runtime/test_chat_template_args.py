"""model.enable_thinking and the other chat-template arguments reach the template, where the runtime encodes
prompts (rollouts, SFT data) and where workflows chat through the model wrapper or its OpenAI endpoint; and
an external model (an OpenAI-compatible endpoint) standing in for the policy in evaluation.

The model here is the tiny preset with a Qwen3-style template: with enable_thinking false it writes an empty
think block after the assistant header, as Qwen3's does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_run_support import job_dict, metrics

from rft_runtime.config import load_config_dict
from rft_runtime.loop.job import run_job
from rft_runtime.loop.prompts import PromptEncoder

THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
THINK_BLOCK = "<think>\n\n</think>\n\n"  # 19 bytes: 19 tokens of the byte-level tokenizer


@pytest.fixture(scope="module")
def thinking_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model, its tokenizer's own chat template reading enable_thinking."""
    from transformers import AutoTokenizer

    from rft_runtime.engine.model_factory import make_model

    out = make_model(tmp_path_factory.mktemp("thinking") / "model", preset=str(tiny_model_dir))
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.chat_template = THINKING_TEMPLATE
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def thinking_engine(thinking_model_dir, tmp_path_factory):
    """A local engine serving the thinking model (stopped by PID at the end of the module)."""
    from rft_runtime.engine.launcher import LocalEngine

    root = tmp_path_factory.mktemp("thinking-engine")
    engine = LocalEngine(thinking_model_dir, state_dir=root / "state", port=0, api_key="tml-local",
                         log_file=root / "engine.log")
    try:
        engine.start(timeout=120)
        yield engine
    finally:
        engine.stop()


def _cfg(tmp_path, model_dir, base_url, **overrides):
    return load_config_dict(job_dict(tmp_path, model_dir, base_url, **overrides))


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _text(enc, messages):
    return enc.tokenizer.decode(enc.prompt_ids(messages))


MESSAGES = [{"role": "user", "content": "What is 2 plus 2?"}]


def test_the_prompt_encoder_passes_enable_thinking_with_trinitys_precedence(tmp_path, thinking_model_dir):
    tok = _tokenizer(thinking_model_dir)
    unset = _cfg(tmp_path, thinking_model_dir, "local")
    assert THINK_BLOCK not in _text(PromptEncoder.for_stage(tok, unset), MESSAGES)
    off = _cfg(tmp_path, thinking_model_dir, "local", model__enable_thinking=False)
    assert _text(PromptEncoder.for_stage(tok, off), MESSAGES).endswith(f"assistant\n{THINK_BLOCK}")
    # explorer.rollout_model's own value wins over the model's for rollouts
    rollout_on = _cfg(tmp_path, thinking_model_dir, "local", model__enable_thinking=False,
                      explorer__rollout_model__enable_thinking=True)
    assert THINK_BLOCK not in _text(PromptEncoder.for_stage(tok, rollout_on), MESSAGES)
    # an SFT dataset (mode train) takes its format's value, else the model's
    sft = _cfg(tmp_path, thinking_model_dir, "local", mode="train", algorithm__algorithm_type="sft",
               model__enable_thinking=True,
               buffer__trainer_input__experience_buffer={"path": str(tmp_path / "sft.jsonl"), "storage_type": "file",
                                                         "format": {"enable_thinking": False}})
    assert THINK_BLOCK in _text(PromptEncoder.for_stage(tok, sft), MESSAGES)


def test_the_model_wrapper_passes_enable_thinking_and_a_requests_chat_template_kwargs(thinking_model_dir):
    from rft_runtime.workflows.model import ModelSettings, ModelWrapper

    tok = _tokenizer(thinking_model_dir)
    off = ModelWrapper(None, tok, ModelSettings(name="m", enable_thinking=False))
    assert off.render(MESSAGES).endswith(THINK_BLOCK)
    plain = ModelWrapper(None, tok, ModelSettings(name="m"))
    assert not plain.render(MESSAGES).endswith(THINK_BLOCK)
    # vLLM's chat_template_kwargs, as an OpenAI client's extra_body sends them, override per request
    assert plain.render(MESSAGES, template_kwargs={"enable_thinking": False}).endswith(THINK_BLOCK)


@pytest.mark.slow
def test_rft_jobs_prompt_with_the_think_block_only_when_enable_thinking_is_false(tmp_path, thinking_model_dir,
                                                                               thinking_engine):
    lengths = {}
    for value in (False, True):
        cfg = job_dict(tmp_path, thinking_model_dir, thinking_engine.base_url, steps=2, name=f"think-{value}",
                       model__enable_thinking=value)
        run_job(load_config_dict(cfg), metrics_port=None, progress=False)
        lengths[value] = [r["prompt_length/mean"] for r in metrics(cfg)]
    # the same tasks in the same order: every prompt is longer by exactly the think block's tokens
    assert [a - b for a, b in zip(lengths[False], lengths[True], strict=True)] == [len(THINK_BLOCK)] * 2


@pytest.mark.slow
def test_the_loopback_endpoint_hands_chat_template_kwargs_to_the_template(thinking_model_dir, thinking_engine):
    import openai
    import tinker

    from rft_runtime.workflows.model import ModelSettings, ModelWrapper
    from rft_runtime.workflows.openai_server import OpenAIServer

    service = tinker.ServiceClient(base_url=thinking_engine.base_url, api_key="tml-local")
    sampler = service.create_sampling_client(base_model=str(thinking_model_dir)).result()
    tok = _tokenizer(thinking_model_dir)
    server = OpenAIServer()
    server.set_models([ModelWrapper(sampler, tok, ModelSettings(name="policy", max_tokens=4, timeout=60))])
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)
        prompts = {}
        for extra in ({}, {"chat_template_kwargs": {"enable_thinking": False}}):
            resp = client.chat.completions.create(model="policy", messages=MESSAGES, max_tokens=4, extra_body=extra)
            prompts[bool(extra)] = tok.decode(resp.model_extra["prompt_token_ids"])
        assert prompts[True] == prompts[False] + THINK_BLOCK
    finally:
        server.close()
        service.close("success").result(timeout=30)


@pytest.mark.slow
def test_an_external_model_is_evaluated_through_its_openai_endpoint(tmp_path, thinking_model_dir, thinking_engine,
                                                                   monkeypatch):
    """model.external_model (mode bench): the eval tasks go to an OpenAI-compatible endpoint, here the runtime's
    own loopback endpoint over the local engine, reached by its address and key from the environment."""
    import tinker

    from rft_runtime.backends.tinker_client import Connection
    from rft_runtime.loop.evaluate import evaluate
    from rft_runtime.workflows.model import ModelSettings, ModelWrapper
    from rft_runtime.workflows.openai_server import OpenAIServer

    service = tinker.ServiceClient(base_url=thinking_engine.base_url, api_key="tml-local")
    tok = _tokenizer(thinking_model_dir)
    served = ModelWrapper(service.create_sampling_client(base_model=str(thinking_model_dir)).result(), tok,
                          ModelSettings(name="served-policy", max_tokens=6, timeout=60))
    server = OpenAIServer()
    server.set_models([served])
    requests: list[dict] = []
    original = served.chat

    def counted(messages, **kwargs):
        requests.append({"messages": messages, **kwargs})
        return original(messages, **kwargs)

    served.chat = counted
    served.with_settings = lambda **changes: served  # the plain route serves this very wrapper
    monkeypatch.setenv("EVAL_BASE_URL", server.base_url)  # without /v1: Trinity's form
    monkeypatch.setenv("EVAL_KEY", server.api_key)
    cfg = load_config_dict(job_dict(tmp_path, thinking_model_dir, thinking_engine.base_url, name="bench",
                                    model__enable_thinking=False))
    # mode bench with the external model; the loader refuses mode bench on Tinker until it runs there, so
    # the section is set on the loaded config as the bench stage will
    cfg = cfg.model_copy(update={"mode": "bench", "model": cfg.model.model_copy(update={
        "external_model": cfg.model.external_model.model_copy(update={
            "enable": True, "base_url_env": "EVAL_BASE_URL", "api_key_env": "EVAL_KEY",
            "model_name": "served-policy"})})})
    conn = Connection(cfg, tmp_path / "job")
    rows = [json.loads(line) for line in Path(cfg.buffer.explorer_input.taskset.path).read_text().splitlines()][:3]
    try:
        result = evaluate(cfg, conn, rows, sampler_path=None)
    finally:
        conn.close()
        server.close()
        service.close("success").result(timeout=30)
    assert result.tasks == 3 and len(requests) == 3
    # greedy evaluation, and the job's enable_thinking travelled in the request as vLLM takes it
    assert all(r["temperature"] == 0.0 and r["chat_template_kwargs"] == {"enable_thinking": False}
               for r in requests)
    # every eval task was asked once (concurrently, so in any order)
    assert sorted(r["messages"][-1]["content"] for r in requests) == sorted(row["question"] for row in rows)
