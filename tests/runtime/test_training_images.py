"""A training dataset's images (SFT rows, DPO rows, mix / mix_chord expert data) reach Tinker as image chunks.

The datums are built by the stage's own step builders from rows with images, with the processor and
tokenizer of a real (tiny, random) vision-language model made here with transformers; what they hold is
checked against that processor (the ids it expands the images to) and against the model itself (it
refuses image features that do not match the image tokens). No server here serves a vision-language
model: the local engine refuses image chunks with its reason, which is asserted through the real SDK.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.runtime.vlm_model import TEMPLATE, VLMScorer, make_vlm

SHAPES = {"square.png": (8, 8), "wide.jpg": (84, 56), "tall.png": (56, 84)}
EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "trinity-examples" / "examples"
SNIPPET = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "tinker-snippet.yaml"


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vlm(tmp_path_factory.mktemp("vlm") / "llava-next-tiny")


@pytest.fixture(scope="module")
def scorer(vlm_dir: Path) -> VLMScorer:
    return VLMScorer(vlm_dir)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("pictures")
    out = {}
    for (name, size), colour in zip(SHAPES.items(), ("red", "blue", "green"), strict=True):
        Image.new("RGB", size, colour).save(root / name)
        out[name] = root / name
    return out


def _rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _job(tmp: Path, model: Path, data: Path, fmt: dict[str, Any], algo: str = "sft", **more: Any) -> Any:
    from rft_runtime.config import load_config_dict

    cfg: dict[str, Any] = {
        "mode": "train", "project": "t", "name": algo, "checkpoint_root_dir": str(tmp / "ckpt"),
        "algorithm": {"algorithm_type": algo},
        # the Tinker service (base_url null): no connection is made by the step builders
        "model": {"model_path": str(model), "max_prompt_tokens": 400, "max_response_tokens": 16,
                  "tinker": {"enable": True, "rank": 4}},
        "buffer": {"batch_size": 2, "total_epochs": 1, "trainer_input": {"experience_buffer": {
            "name": "rows", "storage_type": "file", "path": str(data), "format": fmt}}},
        "monitor": {"monitor_type": "none"},
    }
    for key, value in more.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return load_config_dict(cfg)


def _runner(cfg: Any, model: Path, conn: Any = None, trainer: Any = None) -> Any:
    from transformers import AutoTokenizer

    from rft_runtime.loop.prompts import PromptEncoder
    from rft_runtime.loop.stage import StageRunner, make_stream

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    return StageRunner(cfg, conn, None, None, step_base=0, job_total=None, stream=make_stream(cfg),
                       encoder=PromptEncoder.for_stage(tokenizer, cfg), trainer=trainer)


def _count(vlm_dir: Path, size: tuple[int, int]) -> int:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(vlm_dir), local_files_only=True)
    width, height = size
    return processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0]


def _arrays(datum: Any) -> tuple[list[int], list[float]]:
    inputs = datum.loss_fn_inputs
    return [int(t) for t in inputs["target_tokens"].data], [float(w) for w in inputs["weights"].data]


def _prompt_len(datum: Any) -> int:
    """Positions of the prompt: those before the first weighted target, plus the one that predicts it."""
    weights = _arrays(datum)[1]
    return next(i for i, w in enumerate(weights) if w) + 1


def _over_the_wire(datum: Any) -> Any:
    """The datum's model input as a server gets it: the SDK's own proto of a forward_backward request."""
    import tinker
    from tinker.proto import request_conv
    from tinker.proto import tinker_public_pb2 as pb
    from tinker.types.forward_backward_input import ForwardBackwardInput
    from tinker.types.forward_backward_request import ForwardBackwardRequest

    request = ForwardBackwardRequest(ForwardBackwardInput(data=[datum], loss_fn="cross_entropy"), model_id="m", seq_id=1)
    sent = pb.ForwardBackwardRequest()
    sent.ParseFromString(request_conv.forward_backward_request_to_proto(request).SerializeToString())
    chunks: list[Any] = []
    for chunk in sent.data[0].model_input:
        if chunk.WhichOneof("chunk") == "image":
            chunks.append(tinker.types.ImageChunk(data=chunk.image.data, format=chunk.image.format,
                                                  expected_tokens=chunk.image.expected_tokens))
        else:
            import numpy as np

            chunks.append(tinker.types.EncodedTextChunk(
                tokens=np.frombuffer(chunk.encoded_text.tokens, dtype=np.int32).tolist()))
    return tinker.ModelInput(chunks=chunks)


def test_an_sft_rows_images_become_image_chunks_where_the_template_puts_them_sized_by_the_processor(
        tmp_path, vlm_dir, pictures, scorer):
    from PIL import Image
    from transformers import AutoProcessor

    data = _rows(tmp_path / "sft.jsonl", [
        {"problem": "Which is bigger, <image> or <image>?", "response": "the first",
         "images": [str(pictures["square.png"]), str(pictures["wide.jpg"])]},
        # an image beyond the prompt's tags comes first, as in Trinity's message builder
        {"problem": "What colour is it?", "response": "green", "images": str(pictures["tall.png"])},
    ])
    cfg = _job(tmp_path, vlm_dir, data, {"prompt_type": "plaintext", "prompt_key": "problem",
                                          "response_key": "response", "image_key": "images"})
    runner = _runner(cfg, vlm_dir)
    tasks = next(iter(runner.stream))
    work, extra = runner._sft_work(1, tasks)
    assert len(work.datums) == 2 and work.loss_name == "cross_entropy"
    processor = AutoProcessor.from_pretrained(str(vlm_dir), local_files_only=True)
    tok = processor.tokenizer
    by_prompt = {t.row["problem"]: d for t, d in zip(tasks, work.datums, strict=True)}

    two = by_prompt["Which is bigger, <image> or <image>?"]
    kinds = [c.type for c in two.model_input.chunks]
    assert kinds == ["encoded_text", "image", "encoded_text", "image", "encoded_text"]
    first, second = two.model_input.chunks[1], two.model_input.chunks[3]
    # the image token's place: the text before it ends where the template writes <image>
    assert tok.decode(two.model_input.chunks[0].tokens).endswith("Which is bigger, ")
    assert tok.decode(two.model_input.chunks[2].tokens).startswith("\n or ")
    # each sized by the model's processor, from its own size: the counts differ, and PNG / JPEG pass as they are
    assert (first.format, second.format) == ("png", "jpeg")
    assert Image.open(io.BytesIO(second.data)).size == SHAPES["wide.jpg"]
    assert first.expected_tokens == _count(vlm_dir, SHAPES["square.png"])
    assert second.expected_tokens == _count(vlm_dir, SHAPES["wide.jpg"]) != first.expected_tokens

    # one loss entry per position of the input, zero over the whole prompt (the images' positions too)
    targets, weights = _arrays(two)
    response = runner.encoder.response_ids("the first")
    assert two.model_input.length == len(targets) == len(weights)
    prompt_len = len(weights) - len(response) + 1
    assert all(w == 0 for w in weights[:prompt_len - 1]) and all(w > 0 for w in weights[prompt_len - 1:])
    assert targets[prompt_len - 1:] == response
    # the prompt's ids are what the model's own processor makes of the rendered text and the images
    ids, seen = scorer.ids_and_pictures(two.model_input)
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Which is bigger, "}, {"type": "image"},
                                      {"type": "text", "text": " or "}, {"type": "image"},
                                      {"type": "text", "text": "?"}]}], tokenize=False, add_generation_prompt=True)
    expected = processor(text=[text], images=[[Image.open(pictures["square.png"]),
                                               Image.open(pictures["wide.jpg"])]])["input_ids"][0]
    assert ids[:prompt_len] == list(expected)
    # and the model takes the input as a server gets it: its image features fill exactly those positions
    assert len(scorer.logprobs(_over_the_wire(two))) == two.model_input.length

    one = by_prompt["What colour is it?"]
    assert [c.type for c in one.model_input.chunks] == ["encoded_text", "image", "encoded_text"]
    assert tok.decode(one.model_input.chunks[2].tokens).startswith("\nWhat colour is it?")
    assert one.model_input.chunks[1].expected_tokens == _count(vlm_dir, SHAPES["tall.png"])
    # the prompt's length counts the image positions, as the model's context does
    assert extra["prompt_tokens"] == sum(_prompt_len(d) for d in work.datums)
    assert _prompt_len(two) == prompt_len


def test_a_conversations_image_parts_train_in_either_form(tmp_path, vlm_dir, pictures, scorer):
    data_url = "data:image/png;base64," + base64.b64encode(pictures["tall.png"].read_bytes()).decode()
    data = _rows(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                                   {"type": "text", "text": "Describe."}]},
                      {"role": "assistant", "content": "tall"}]},
        {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                      {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                                   {"type": "image", "image": str(pictures["square.png"])}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "square"}]}]},
    ])
    cfg = _job(tmp_path, vlm_dir, data, {"prompt_type": "messages", "messages_key": "messages"})
    runner = _runner(cfg, vlm_dir)
    tasks = next(iter(runner.stream))
    work, _ = runner._sft_work(1, tasks)
    for task, datum in zip(tasks, work.datums, strict=True):
        images = [c for c in datum.model_input.chunks if c.type == "image"]
        assert len(images) == 1 and images[0].expected_tokens > 0
        targets, weights = _arrays(datum)
        reply = task.row["messages"][-1]["content"]
        reply = reply if isinstance(reply, str) else reply[0]["text"]
        n = len(runner.encoder.response_ids(reply))
        assert targets[-n:] == runner.encoder.response_ids(reply) and sum(1 for w in weights if w) == n
        assert len(scorer.logprobs(_over_the_wire(datum))) == datum.model_input.length
    # a list of text parts is its text (not the list's repr)
    text = runner.encoder.tokenizer.decode(work.datums[[t.row["messages"][0]["role"] for t in tasks].index("system")]
                                           .model_input.chunks[0].tokens)
    assert "Be brief." in text and "'type'" not in text


def test_a_dpo_rows_images_reach_both_replies_and_the_reference_model(tmp_path, vlm_dir, pictures, scorer):
    data = _rows(tmp_path / "pairs.jsonl", [
        {"prompt": f"<image> What is it {i}?", "chosen": "a dot", "rejected": "a cat",
         "images": [str(pictures["wide.jpg" if i else "square.png"])]} for i in range(2)])
    cfg = _job(tmp_path, vlm_dir, data, {"prompt_type": "plaintext", "image_key": "images"}, algo="dpo")
    conn = SimpleNamespace(generation=0, sampling_client=lambda *a, **k: scorer)
    runner = _runner(cfg, vlm_dir, conn=conn, trainer=SimpleNamespace(call_timeout=60))
    before = len(scorer.inputs)
    work, _ = runner._dpo_work(1, next(iter(runner.stream)))
    assert len(work.datums) == 4 and work.custom_loss is not None
    chosen, rejected = runner.encoder.response_ids("a dot"), runner.encoder.response_ids("a cat")
    for pair in (work.datums[:2], work.datums[2:]):
        images = [[c for c in d.model_input.chunks if c.type == "image"] for d in pair]
        assert len(images[0]) == len(images[1]) == 1 and images[0][0].data == images[1][0].data
        assert _arrays(pair[0])[0][-len(chosen):] == chosen and _arrays(pair[1])[0][-len(rejected):] == rejected
    # the reference logprobs were taken with the images: the model saw each picture at its image tokens
    asked = scorer.inputs[before:]
    assert len(asked) == 4 and all(sum(c.type == "image" for c in mi.chunks) == 1 for mi in asked)


def test_mix_chords_expert_rows_bring_their_images(tmp_path, vlm_dir, pictures):
    tasks = _rows(tmp_path / "tasks.jsonl", [{"question": f"{i}+1?", "answer": str(i + 1)} for i in range(4)])
    expert = _rows(tmp_path / "expert.jsonl", [
        {"problem": "<image> Which shape?", "response": "wide", "images": [str(pictures["wide.jpg"])]}
        for _ in range(4)])
    cfg = _job(tmp_path, vlm_dir, tasks, {}, algo="mix_chord", mode="both",
               buffer={"batch_size": 2, "total_epochs": 1, "explorer_input": {
                   "taskset": {"name": "t", "path": str(tasks),
                               "format": {"prompt_key": "question", "response_key": "answer"}},
                   "default_workflow_type": "math_workflow"},
                   "trainer_input": {"auxiliary_buffers": {"sft_dataset": {
                       "name": "sft_dataset", "storage_type": "file", "path": str(expert),
                       "format": {"prompt_type": "plaintext", "prompt_key": "problem", "response_key": "response",
                                  "image_key": "images"}}}}},
               algorithm={"algorithm_type": "mix_chord", "repeat_times": 2,
                          "sample_strategy_args": {"expert_data_ratio": 0.5}})
    runner = _runner(cfg, vlm_dir)
    datums: list[Any] = []
    seqs: list[Any] = []
    added = runner._add_expert_data(datums, seqs)
    assert added == math.ceil(0.5 * cfg.train_batch_size) == len(datums)
    for datum, seq in zip(datums, seqs, strict=True):
        (image,) = [c for c in datum.model_input.chunks if c.type == "image"]
        assert image.expected_tokens == _count(vlm_dir, SHAPES["wide.jpg"]) and image.format == "jpeg"
        # the expert flag, and the prompt's last position (images included) where the loss starts
        assert seq[6] is True and seq[0] == datum.model_input.length - len(seq[3])


def test_a_rollouts_images_are_sized_by_the_base_models_processor_after_a_sync(vlm_dir, pictures):
    from transformers import AutoTokenizer

    from rft_runtime.workflows.images import mm_message
    from rft_runtime.workflows.model import ModelSettings, ModelWrapper

    tok = AutoTokenizer.from_pretrained(str(vlm_dir))
    messages = [mm_message("<image> Which shape?", [str(pictures["tall.png"])])]
    # after the first sync the sampler serves trained weights named by a tinker:// path: no processor there
    for path in (None, "tinker://run-1/sampler_weights/s0-sampler000001"):
        policy = ModelWrapper(None, tok, ModelSettings(name=str(vlm_dir)), model_path=path)
        ids, chunks = policy.chat_prompt(messages)
        (image,) = [c for c in chunks if c.type == "image"]
        assert image.expected_tokens == _count(vlm_dir, SHAPES["tall.png"])
        assert sum(c.length for c in chunks) == len(ids)


def _no_processor(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A text model's folder with an image token and a template that writes it: no processor counts images."""
    from transformers import AutoTokenizer

    model = tmp_path / "textonly"
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.chat_template = TEMPLATE
    tok.save_pretrained(model)
    return model


def test_an_image_nothing_can_size_stops_the_step_saying_why(tmp_path, tiny_model_dir, pictures):
    from rft_runtime.loop.errors import RunError

    data = _rows(tmp_path / "sft.jsonl", [{"prompt": "<image> ?", "response": "x",
                                           "images": [str(pictures["square.png"])]}] * 2)
    model = _no_processor(tmp_path, tiny_model_dir)
    cfg = _job(tmp_path, model, data, {"prompt_type": "plaintext", "image_key": "images"})
    runner = _runner(cfg, model)
    with pytest.raises(RunError, match=r"sft\.jsonl \(buffer\.trainer_input\.experience_buffer\): a row's image has "
                                       r"no token count.*processor of .*textonly"):
        runner._sft_work(1, next(iter(runner.stream)))


def test_a_rollout_whose_image_nothing_can_size_fails_saying_why(tmp_path, tiny_model_dir, pictures):
    from transformers import AutoTokenizer

    from rft_runtime.workflows.images import mm_message
    from rft_runtime.workflows.model import ModelSettings, ModelWrapper
    from rft_runtime.workflows.runner import experience_problem

    model = _no_processor(tmp_path, tiny_model_dir)
    policy = ModelWrapper(None, AutoTokenizer.from_pretrained(str(model)), ModelSettings(name=str(model)))
    messages = [mm_message("<image> ?", [str(pictures["square.png"])])]
    ids, chunks = policy.chat_prompt(messages)
    # what a vision-language sampler would answer (none serves one here): one reply of one token
    reply = SimpleNamespace(sequences=[SimpleNamespace(tokens=[7], logprobs=[-0.5], stop_reason="stop")])
    (exp,) = policy._experiences(ids, reply, messages, None, chunks)
    exp.reward = 1.0
    problem = experience_problem(exp)
    assert problem.startswith("an image's token count is unknown (the processor of ") and "textonly" in problem


def test_more_image_tags_than_images_names_the_column(tmp_path, vlm_dir, pictures):
    from rft_runtime.loop.errors import RunError

    data = _rows(tmp_path / "sft.jsonl", [{"prompt": "<image> and <image>", "response": "x",
                                           "images": [str(pictures["square.png"])]}] * 2)
    cfg = _job(tmp_path, vlm_dir, data, {"prompt_type": "plaintext", "image_key": "images"})
    runner = _runner(cfg, vlm_dir)
    with pytest.raises(RunError, match=r"format\.image_key 'images'.*more <image> tags than the row has images"):
        runner._sft_work(1, next(iter(runner.stream)))


def test_a_rollouts_images_survive_a_buffer_record(pictures):
    import tinker

    from rft_runtime.loop.explorer import Rollout
    from rft_runtime.loop.records import from_record, to_record

    chunks = [tinker.types.EncodedTextChunk(tokens=[1, 2]),
              tinker.types.ImageChunk(data=pictures["square.png"].read_bytes(), format="png", expected_tokens=3),
              tinker.types.EncodedTextChunk(tokens=[4])]
    rollout = Rollout(task_index=0, prompt_ids=[1, 2, 9, 9, 9, 4], tokens=[5, 6], logprobs=[-0.1, -0.2], text="x",
                      info={"prompt_chunks": chunks, "stop_reason": "stop"})
    record = json.loads(json.dumps(to_record(rollout, explore_step=1, model_version=0)))
    back = from_record(record)
    assert back.info["prompt_chunks"] == chunks and back.info["stop_reason"] == "stop"


def test_the_local_engine_refuses_image_datums_with_its_reason(tmp_path, vlm_dir, pictures, tiny_model_dir,
                                                               local_engine):
    import tinker

    data = _rows(tmp_path / "sft.jsonl", [{"prompt": "<image> ?", "response": "x",
                                           "images": [str(pictures["square.png"])]}] * 2)
    cfg = _job(tmp_path, vlm_dir, data, {"prompt_type": "plaintext", "image_key": "images"})
    runner = _runner(cfg, vlm_dir)
    work, _ = runner._sft_work(1, next(iter(runner.stream)))
    service = tinker.ServiceClient(base_url=local_engine.base_url, api_key="tml-local")
    trainer = service.create_lora_training_client(base_model=str(Path(tiny_model_dir).resolve()), rank=4).result(timeout=60)
    with pytest.raises(tinker.TinkerError, match="serves text models"):
        trainer.forward_backward(work.datums, "cross_entropy").result(timeout=60)
    # the reference model of a dpo step is asked through a sampler: refused with the same reason
    sampler = service.create_sampling_client(base_model=str(Path(tiny_model_dir).resolve())).result(timeout=60)
    with pytest.raises(tinker.TinkerError, match="serves text models"):
        sampler.compute_logprobs(work.datums[0].model_input).result(timeout=60)


# ---------------------------------------------------------------- validate


def _validate(capsys: pytest.CaptureFixture, *files: Path) -> tuple[int, str]:
    from rft_runtime import cli

    code = cli.main(["validate", *[a for f in files for a in ("-c", str(f))]])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def trinity_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("TRINITY_CHECKPOINT_ROOT_DIR", "TRINITY_TASKSET_PATH", "TRINITY_MODEL_PATH",
                "TRINITY_SFT_DATASET_PATH", "TRINITY_EVAL_TASKSET_PATH"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    return tmp_path


def test_trinitys_mix_vlm_validates_on_the_service_and_the_local_engine_says_why_not(trinity_env, capsys):
    example = EXAMPLES / "mix_vlm" / "mix_vlm.yaml"
    if not example.exists():
        pytest.skip(f"{example} is not beside the repo (it is in CI)")
    code, out = _validate(capsys, example, SNIPPET)
    assert code == 0, out
    assert "image_key" not in out  # honoured: neither refused nor listed as having no effect
    other = trinity_env / "other.yaml"
    other.write_text("model:\n  tinker:\n    base_url: http://127.0.0.1:9\n")
    assert _validate(capsys, example, SNIPPET, other)[0] == 0
    local = trinity_env / "local.yaml"
    local.write_text("model:\n  tinker:\n    base_url: local\n")
    code, out = _validate(capsys, example, SNIPPET, local)
    assert code != 0
    assert "buffer.trainer_input.auxiliary_buffers.sft_dataset.format.image_key: 'images'" in out
    assert "serves text models and refuses image chunks" in out


def test_an_image_key_nothing_reads_is_a_warning(trinity_env, capsys):
    import yaml

    data = _rows(trinity_env / "rows.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "yo"}]}])
    job = trinity_env / "job.yaml"
    job.write_text(yaml.safe_dump({
        "mode": "train", "project": "t", "name": "w", "checkpoint_root_dir": str(trinity_env / "ckpt"),
        "algorithm": {"algorithm_type": "sft"}, "model": {"model_path": "org/some-vl-model",
                                                          "tinker": {"enable": True}},
        "buffer": {"batch_size": 1, "trainer_input": {"experience_buffer": {
            "name": "rows", "storage_type": "file", "path": str(data),
            "format": {"prompt_type": "messages", "messages_key": "messages", "image_key": "images"}}}}}))
    code, out = _validate(capsys, job)
    assert code == 0, out
    assert "buffer.trainer_input.experience_buffer.format.image_key is not read: with prompt_type messages" in out
