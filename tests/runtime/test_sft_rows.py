"""How SFT and DPO dataset rows become prompts and targets, as Trinity-RFT 0.6's SFT and DPO formatters make
them: a plaintext row's system prompt column before format.system_prompt, a conversation taken as it is
(a JSON string too), an SFT row's tool definitions (format.tools_key) handed to the chat template, a reply
that calls a tool trained on the template's rendering of the call, and format.chat_template.

The datums are built by the stage's own step builders with the tiny model's real tokenizer and a chat
template that renders tools the way Qwen2.5's does (a tools block in the system turn, <tool_call> markup);
every expected prompt is the tokenizer's own rendering. The DPO step takes its reference logprobs from the
real local engine, and one SFT job with tool-use rows runs to the end on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rft_runtime.loop.errors import RunError
from tests.runtime.test_run_support import clean_env, metrics, run_cli, write_config

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools><|im_end|>\n"
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'assistant' %}<|im_start|>assistant\n{{ message.content or '' }}"
    "{% for call in message.tool_calls or [] %}<tool_call>\n"
    "{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}\n</tool_call>{% endfor %}"
    "<|im_end|>\n"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "<|im_end|>\n"
    "{% elif message.role != 'system' %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}


def _rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _job(tmp: Path, model: Path, data: Path, fmt: dict[str, Any], algo: str = "sft", **model_more: Any) -> dict:
    return {
        "mode": "train", "project": "t", "group": "", "name": algo, "checkpoint_root_dir": str(tmp / "ckpt"),
        "algorithm": {"algorithm_type": algo},
        "model": {"model_path": str(model), "max_prompt_tokens": 600, "max_response_tokens": 200,
                  "tinker": {"enable": True, "rank": 4}, **model_more},
        "buffer": {"batch_size": 2, "total_epochs": 1, "trainer_input": {"experience_buffer": {
            "name": "rows", "storage_type": "file", "path": str(data), "format": fmt}}},
        "monitor": {"monitor_type": "none"},
    }


def _runner(job: dict, conn: Any = None, trainer: Any = None) -> Any:
    from transformers import AutoTokenizer

    from rft_runtime.config import load_config_dict
    from rft_runtime.loop.prompts import PromptEncoder
    from rft_runtime.loop.stage import StageRunner, make_stream

    cfg = load_config_dict(job)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.model_path)
    return StageRunner(cfg, conn, None, None, step_base=0, job_total=None, stream=make_stream(cfg),
                       encoder=PromptEncoder.for_stage(tokenizer, cfg), trainer=trainer)


def _split(datum: Any) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a text datum: the prompt is every position before the first weighted target."""
    targets = [int(t) for t in datum.loss_fn_inputs["target_tokens"].data]
    weights = [float(w) for w in datum.loss_fn_inputs["weights"].data]
    tokens = datum.model_input.to_ints() + targets[-1:]
    start = next(i for i, w in enumerate(weights) if w) + 1
    return tokens[:start], tokens[start:]


def _render(tok: Any, messages: list[dict], template: str | None = None, **kwargs: Any) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, chat_template=template, **kwargs)
    return list(tok.encode(text, add_special_tokens=False))


def _by_key(tasks: list[Any], datums: list[Any], key: str) -> dict[Any, Any]:
    return {json.dumps(t.row[key]): d for t, d in zip(tasks, datums, strict=True)}


def test_a_plaintext_sft_row_takes_its_system_prompt_column_before_system_prompt(tmp_path, tiny_model_dir):
    data = _rows(tmp_path / "sft.jsonl", [
        {"prompt": "1+1=?", "response": "2", "sys": "Answer in digits."},
        {"prompt": "2+2=?", "response": "4", "sys": ""},
    ])
    runner = _runner(_job(tmp_path, tiny_model_dir, data, {
        "prompt_type": "plaintext", "system_prompt_key": "sys", "system_prompt": "Be brief."}))
    tasks = next(iter(runner.stream))
    work, _ = runner._sft_work(1, tasks)
    tok = runner.encoder.tokenizer
    by_prompt = _by_key(tasks, work.datums, "prompt")
    prompt, reply = _split(by_prompt['"1+1=?"'])
    assert prompt == _render(tok, [{"role": "system", "content": "Answer in digits."},
                                   {"role": "user", "content": "1+1=?"}], add_generation_prompt=True)
    assert reply == runner.encoder.response_ids("2") and _trained(tok, by_prompt['"1+1=?"']) == [tok.decode(reply)]
    # an empty column falls back to format.system_prompt
    prompt, _ = _split(by_prompt['"2+2=?"'])
    assert prompt == _render(tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2=?"}],
                             add_generation_prompt=True)


def test_a_system_prompt_column_the_rows_lack_names_the_field(tmp_path, tiny_model_dir):
    data = _rows(tmp_path / "sft.jsonl", [{"prompt": f"{i}", "response": "x"} for i in range(2)])
    runner = _runner(_job(tmp_path, tiny_model_dir, data, {"prompt_type": "plaintext", "system_prompt_key": "sys"}))
    with pytest.raises(RunError, match="no 'sys' column .format.system_prompt_key"):
        runner._sft_work(1, next(iter(runner.stream)))


def test_a_conversation_is_trained_as_it_is_written_json_string_included(tmp_path, tiny_model_dir):
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    data = _rows(tmp_path / "chat.jsonl", [{"messages": convo}, {"messages": json.dumps(convo)}])
    # Trinity's SFT formatter adds no system prompt to a conversation: format.system_prompt is for plaintext rows
    runner = _runner(_job(tmp_path, tiny_model_dir, data, {
        "prompt_type": "messages", "messages_key": "messages", "system_prompt": "Be brief."}))
    work, _ = runner._sft_work(1, next(iter(runner.stream)))
    expected = _render(runner.encoder.tokenizer, convo[:1], add_generation_prompt=True)
    assert [_split(d) for d in work.datums] == [(expected, runner.encoder.response_ids("hello"))] * 2


def test_sft_rows_tools_reach_the_chat_template_and_a_tool_call_is_trained_as_it_renders(tmp_path, tiny_model_dir):
    history = [{"role": "system", "content": "You can look up the weather."},
               {"role": "user", "content": "Weather in Paris?"}]
    answer = [*history, CALL, {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]
    data = _rows(tmp_path / "tools.jsonl", [
        # the tools as a JSON string (Trinity's advice for datasets) and as a list; the target is the call itself
        {"messages": [*history, CALL], "tools": json.dumps([WEATHER])},
        # after the tool's answer the target is text again, with the tool call in the prompt
        {"messages": answer, "tools": [WEATHER]},
    ])
    runner = _runner(_job(tmp_path, tiny_model_dir, data, {"prompt_type": "messages", "messages_key": "messages"},
                          custom_chat_template=TOOLS_TEMPLATE))
    tasks = next(iter(runner.stream))
    work, extra = runner._sft_work(1, tasks)
    tok = runner.encoder.tokenizer
    call_row, answer_row = (d for t, d in sorted(zip(tasks, work.datums, strict=True),
                                                 key=lambda td: len(td[0].row["messages"])))

    prompt, reply = _split(call_row)
    assert prompt == _render(tok, history, TOOLS_TEMPLATE, tools=[WEATHER], add_generation_prompt=True)
    assert '"name": "get_weather"' in tok.decode(prompt) and "# Tools" in tok.decode(prompt)
    # the reply is the template's rendering of the call after the prompt, as Trinity's SFT formatter slices it
    full = tok.apply_chat_template([*history, CALL], tokenize=False, chat_template=TOOLS_TEMPLATE, tools=[WEATHER])
    assert tok.decode(reply) == full[len(tok.decode(prompt)):]
    assert tok.decode(reply) == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                                 '</tool_call><|im_end|>\n')

    prompt, reply = _split(answer_row)
    assert prompt == _render(tok, answer[:-1], TOOLS_TEMPLATE, tools=[WEATHER], add_generation_prompt=True)
    assert "<tool_response>\nsunny" in tok.decode(prompt) and "<tool_call>" in tok.decode(prompt)
    assert reply == runner.encoder.response_ids("Sunny.")
    assert extra["prompt_tokens"] == sum(len(_split(d)[0]) for d in work.datums)


def test_rows_without_tools_render_no_tools_block(tmp_path, tiny_model_dir):
    data = _rows(tmp_path / "plain.jsonl", [{"prompt": "q", "response": "a", "tools": ""},
                                            {"prompt": "r", "response": "b"}])
    runner = _runner(_job(tmp_path, tiny_model_dir, data, {"prompt_type": "plaintext"},
                          custom_chat_template=TOOLS_TEMPLATE))
    work, _ = runner._sft_work(1, next(iter(runner.stream)))
    assert not any("# Tools" in runner.encoder.tokenizer.decode(_split(d)[0]) for d in work.datums)


def test_a_tools_value_that_is_not_json_names_format_tools_key(tmp_path, tiny_model_dir):
    data = _rows(tmp_path / "bad.jsonl", [{"prompt": f"{i}", "response": "x", "functions": "[{oops"}
                                          for i in range(2)])
    runner = _runner(_job(tmp_path, tiny_model_dir, data, {"prompt_type": "plaintext", "tools_key": "functions"},
                          custom_chat_template=TOOLS_TEMPLATE))
    with pytest.raises(RunError, match="'functions' value is not JSON .*format.tools_key"):
        runner._sft_work(1, next(iter(runner.stream)))


def test_an_sft_datasets_chat_template_renders_its_rows(tmp_path, tiny_model_dir):
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    data = _rows(tmp_path / "sft.jsonl", [{"prompt": "2+2=?", "response": "4"}] * 2)
    runner = _runner(_job(tmp_path, tiny_model_dir, data, {"prompt_type": "plaintext", "chat_template": template},
                          custom_chat_template=TOOLS_TEMPLATE))
    work, _ = runner._sft_work(1, next(iter(runner.stream)))
    assert runner.encoder.tokenizer.decode(_split(work.datums[0])[0]) == "[user] 2+2=?\n[assistant] "
    assert runner.encoder.source == "buffer.trainer_input.experience_buffer.format.chat_template"


def _trained(tok: Any, datum: Any) -> list[str]:
    """The trained stretches of a datum's response, as text."""
    targets = [int(t) for t in datum.loss_fn_inputs["target_tokens"].data]
    weights = [float(w) for w in datum.loss_fn_inputs["weights"].data]
    runs: list[list[int]] = []
    for i, (t, w) in enumerate(zip(targets, weights, strict=True)):
        if w:
            if not i or not weights[i - 1]:
                runs.append([])
            runs[-1].append(t)
    return [tok.decode(r) for r in runs]


@pytest.mark.parametrize(("thinks", "trained"), [
    (False, ["a one<|im_end|>\n", "a two<|im_end|>\n"]),
    # a template that thinks: only the turns after the last user message, as Trinity's action mask
    (True, ["a two<|im_end|>\n"]),
])
def test_concatenated_multi_turn_trains_every_assistant_turn_as_it_renders(tmp_path, tiny_model_dir, thinks, trained):
    from rft_runtime.engine.model_factory import CHAT_TEMPLATE

    convo = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q one"},
             {"role": "assistant", "content": "a one"}, {"role": "user", "content": "q two"},
             {"role": "assistant", "content": "a two"}]
    data = _rows(tmp_path / "chat.jsonl", [{"messages": convo}] * 2)
    template = ("{# <think> #}" if thinks else "") + CHAT_TEMPLATE
    runner = _runner(_job(tmp_path, tiny_model_dir, data, {
        "prompt_type": "messages", "messages_key": "messages", "enable_concatenated_multi_turn": True},
        custom_chat_template=template))
    work, extra = runner._sft_work(1, next(iter(runner.stream)))
    tok = runner.encoder.tokenizer
    datum = work.datums[0]
    assert _trained(tok, datum) == trained
    # the whole conversation is the datum, as the template renders it, and the prompt ends at the first trained turn
    whole = datum.model_input.to_ints() + [int(datum.loss_fn_inputs["target_tokens"].data[-1])]
    assert tok.decode(whole) == tok.apply_chat_template(convo, tokenize=False, chat_template=template)
    first = 2 if not thinks else 4
    prompt, _ = _split(datum)
    assert prompt == _render(tok, convo[:first], template, add_generation_prompt=True)
    # every weight is the same (token-mean over the trained tokens of the step)
    weights = [float(w) for w in datum.loss_fn_inputs["weights"].data if w]
    n = sum(len(tok.encode(t, add_special_tokens=False)) for t in trained * 2)
    assert weights == pytest.approx([1.0 / n] * (n // 2), rel=1e-6)


def test_a_dpo_row_takes_its_system_prompt_column(tmp_path, tiny_model_dir, local_engine):
    import tinker

    data = _rows(tmp_path / "pairs.jsonl", [
        {"prompt": "1+1=?", "chosen": "2", "rejected": "3", "sys": "Digits only."},
        {"prompt": "2+2=?", "chosen": "4", "rejected": "5", "sys": "Words only."},
    ])
    service = tinker.ServiceClient(base_url=local_engine.base_url, api_key="tml-local")
    try:
        sampler = service.create_sampling_client(base_model=str(tiny_model_dir)).result()
        conn = SimpleNamespace(generation=0, sampling_client=lambda *a, **k: sampler)
        runner = _runner(_job(tmp_path, tiny_model_dir, data, {
            "prompt_type": "plaintext", "system_prompt_key": "sys", "system_prompt": "unused"}, algo="dpo"),
            conn=conn, trainer=SimpleNamespace(call_timeout=60))
        tasks = next(iter(runner.stream))
        work, _ = runner._dpo_work(1, tasks)
    finally:
        service.close("success").result(timeout=30)
    tok = runner.encoder.tokenizer
    assert len(work.datums) == 4
    for task, pair in zip(tasks, (work.datums[:2], work.datums[2:]), strict=True):
        expected = _render(tok, [{"role": "system", "content": task.row["sys"]},
                                 {"role": "user", "content": task.row["prompt"]}], add_generation_prompt=True)
        assert [_split(d) for d in pair] == [(expected, runner.encoder.response_ids(task.row[k]))
                                             for k in ("chosen", "rejected")]


@pytest.mark.slow
def test_a_tool_use_sft_job_trains_on_the_tools_prompts(tmp_path, tiny_model_dir, local_engine):
    """A whole SFT job on the local engine: the prompt and reply lengths it logs are those of the rows rendered
    with their tools by the chat template, tool calls included."""
    from transformers import AutoTokenizer

    history = [{"role": "user", "content": "Weather in Paris?"}]
    rows = [{"messages": [*history, CALL], "tools": json.dumps([WEATHER])} for _ in range(4)]
    data = _rows(tmp_path / "tools.jsonl", rows)
    cfg = _job(tmp_path, tiny_model_dir, data, {"prompt_type": "messages", "messages_key": "messages"},
               custom_chat_template=TOOLS_TEMPLATE)
    cfg["model"]["tinker"]["base_url"] = local_engine.base_url
    cfg["buffer"]["train_batch_size"] = 2
    res = run_cli(write_config(tmp_path / "tools.yaml", cfg), env=clean_env())
    assert res.returncode == 0, res.stderr[-3000:]
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2]
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompt = _render(tok, history, TOOLS_TEMPLATE, tools=[WEATHER], add_generation_prompt=True)
    full = tok.apply_chat_template([*history, CALL], tokenize=False, chat_template=TOOLS_TEMPLATE, tools=[WEATHER])
    reply = tok.encode(full[len(tok.decode(prompt)):], add_special_tokens=False)
    assert all(r["prompt_length/mean"] == len(prompt) and r["response_length/mean"] == len(reply) for r in records)
    assert all(r["grad_norm"] > 0 for r in records)
