"""The engine through the official tinker SDK only, against the shared `rft engine serve` process."""

from __future__ import annotations

import math
import threading
import time

import pytest
import tinker
from engine_support import encode, flat, logprobs, rl_datum, service, sft_batch, sft_datum, train
from tinker import types


@pytest.fixture(scope="module")
def sc(local_engine):
    client = service(local_engine.base_url)
    yield client
    client.close("success")


@pytest.fixture(scope="module")
def tokenizer(sc, tiny_model_dir):
    tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=0).result()
    return tc.get_tokenizer()


def test_tokenizer_comes_from_the_model_directory_and_round_trips_text(sc, tiny_model_dir, tokenizer):
    text = "Q: 7+8=?\n<answer>15</answer> ~!@#$%^&*()"
    assert tokenizer.decode(encode(tokenizer, text)) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "1+1=?"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("assistant\n")
    tc = sc.create_lora_training_client(base_model=tiny_model_dir.name, rank=2, seed=1).result()
    assert tc.get_info().model_data.model_name == str(tiny_model_dir)
    assert tc.get_info().lora_rank == 2


@pytest.mark.slow
def test_twenty_sft_steps_lower_the_loss_and_the_same_seed_repeats_it(sc, tiny_model_dir, tokenizer):
    data = sft_batch(tokenizer)
    runs = []
    for _ in range(2):
        tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=8, seed=7).result()
        runs.append(train(tc, data, 20, lr=2e-3))
    first, second = runs
    assert first[-1] < 0.6 * first[0], first
    assert first == pytest.approx(second, rel=1e-5, abs=1e-4)


def test_same_seed_same_adapter_other_seed_other_adapter(sc, tiny_model_dir, tokenizer):
    data = sft_batch(tokenizer)[:2]
    after = []
    for seed in (3, 3, 4):
        tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=seed).result()
        train(tc, data, 1)
        after.append(logprobs(tc, data))
    assert flat(after[0]) == pytest.approx(flat(after[1]), abs=1e-6)
    assert after[0][0] != pytest.approx(after[2][0], abs=1e-4)


def test_forward_reports_the_loss_the_formulas_give(sc, tiny_model_dir, tokenizer):
    tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=0).result()
    toks = encode(tokenizer, "2+2=?<answer>4</answer>")
    lp = logprobs(tc, [sft_datum(toks)])[0]
    n = len(lp)
    q = [x + (0.5 if i % 3 == 0 else -0.3 if i % 3 == 1 else 0.0) for i, x in enumerate(lp)]
    adv = [1.0 if i % 2 == 0 else -0.5 for i in range(n)]
    r = [math.exp(a - b) for a, b in zip(lp, q, strict=True)]
    expect = {
        "importance_sampling": -sum(ri * a for ri, a in zip(r, adv, strict=True)),
        "ppo": -sum(min(ri * a, min(max(ri, 0.8), 1.2) * a) for ri, a in zip(r, adv, strict=True)),
        "cispo": -sum(min(max(ri, 0.8), 1.2) * a * x for ri, a, x in zip(r, adv, lp, strict=True)),
    }
    for name, value in expect.items():
        out = tc.forward([rl_datum(toks, q, adv)], name,
                         loss_fn_config={"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}).result()
        assert out.metrics["loss:sum"] == pytest.approx(value, rel=1e-4, abs=1e-4), name
    ce = tc.forward([sft_datum(toks)], "cross_entropy").result()
    assert ce.metrics["loss:sum"] == pytest.approx(-sum(lp), rel=1e-5)


def test_ppo_clipping_changes_the_gradient(sc, tiny_model_dir, tokenizer):
    """Old logprobs one nat below the current ones put every ratio at e > 1.2 with positive advantages:
    PPO clips every token (zero gradient, weights stay put) while importance sampling still moves them."""
    toks = encode(tokenizer, "3+3=?<answer>6</answer>")
    moved = {}
    for name in ("ppo", "importance_sampling", "cispo"):
        tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=11).result()
        before = logprobs(tc, [sft_datum(toks)])[0]
        datum = rl_datum(toks, [x - 1.0 for x in before], [1.0] * len(before))
        tc.forward_backward([datum], name, loss_fn_config={"clip_low_threshold": 0.8,
                                                            "clip_high_threshold": 1.2}).result()
        tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
        after = logprobs(tc, [sft_datum(toks)])[0]
        moved[name] = max(abs(a - b) for a, b in zip(after, before, strict=True))
    assert moved["ppo"] < 1e-6
    assert moved["importance_sampling"] > 1e-3
    assert moved["cispo"] > 1e-3


def test_sampling_is_seeded_stops_where_asked_and_its_logprobs_match_forward(sc, tiny_model_dir, tokenizer):
    tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=0).result()
    train(tc, sft_batch(tokenizer), 3)
    path = tc.save_weights_for_sampler("sampling-test").result().path
    assert path.startswith("tinker://") and path.endswith("/sampler_weights/sampling-test")
    sampler = sc.create_sampling_client(model_path=path).result()
    prompt = types.ModelInput.from_ints(encode(tokenizer, "1+2=?"))
    params = types.SamplingParams(max_tokens=12, seed=5, temperature=1.0, stop=[])
    a = sampler.sample(prompt, 4, params).result()
    b = sampler.sample(prompt, 4, params).result()
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    assert all(len(s.tokens) == 12 and s.stop_reason == "length" for s in a.sequences)
    c = sampler.sample(prompt, 4, types.SamplingParams(max_tokens=12, seed=6, stop=[])).result()
    assert [s.tokens for s in c.sequences] != [s.tokens for s in a.sequences]
    # logprobs of each sampled sequence agree with a forward pass over the same tokens
    for seq in a.sequences[:2]:
        full = prompt.to_ints() + list(seq.tokens)
        fwd = logprobs(tc, [sft_datum(full)])[0][len(prompt.to_ints()) - 1:]
        assert fwd == pytest.approx(list(seq.logprobs), abs=1e-4)
    # a stop token id ends the sequence on that token
    first = a.sequences[0].tokens[2]
    stopped = sampler.sample(prompt, 4, types.SamplingParams(max_tokens=12, seed=5, stop=[first])).result()
    s0 = stopped.sequences[0]
    assert s0.tokens == a.sequences[0].tokens[:3] and s0.stop_reason == "stop"
    # a stop string ends the sequence once the text contains it
    text = tokenizer.decode(a.sequences[0].tokens[:4])
    stop_str = text[-2:] if len(text) >= 2 else text
    by_str = sampler.sample(prompt, 4, types.SamplingParams(max_tokens=12, seed=5, stop=[stop_str])).result()
    assert stop_str in tokenizer.decode(by_str.sequences[0].tokens)
    assert by_str.sequences[0].stop_reason == "stop" and len(by_str.sequences[0].tokens) <= 4
    # greedy: temperature 0 and top_k=1 agree, and every sample is the same
    greedy = sampler.sample(prompt, 3, types.SamplingParams(max_tokens=8, temperature=0.0, stop=[])).result()
    topk1 = sampler.sample(prompt, 3, types.SamplingParams(max_tokens=8, top_k=1, seed=1, stop=[])).result()
    assert len({tuple(s.tokens) for s in greedy.sequences}) == 1
    assert greedy.sequences[0].tokens == topk1.sequences[0].tokens
    nucleus = sampler.sample(prompt, 3, types.SamplingParams(max_tokens=8, top_p=1e-6, seed=1, stop=[])).result()
    assert nucleus.sequences[0].tokens == greedy.sequences[0].tokens
    # compute_logprobs scores the prompt like forward does
    ids = encode(tokenizer, "2+5=?<answer>7</answer>")
    scored = sampler.compute_logprobs(types.ModelInput.from_ints(ids)).result()
    assert scored[0] is None
    assert scored[1:] == pytest.approx(logprobs(tc, [sft_datum(ids)])[0], abs=1e-4)


def test_default_stop_is_eos_and_base_model_sampling_works(sc, tiny_model_dir, tokenizer):
    base = sc.create_sampling_client(base_model=str(tiny_model_dir)).result()
    assert base.get_tokenizer().decode(encode(tokenizer, "abc")) == "abc"
    res = base.sample(types.ModelInput.from_ints(encode(tokenizer, "hi")), 8,
                      types.SamplingParams(max_tokens=64, seed=0)).result()
    for s in res.sequences:
        if s.stop_reason == "stop":
            assert s.tokens[-1] == tokenizer.eos_token_id
        else:
            assert len(s.tokens) == 64 and tokenizer.eos_token_id not in s.tokens


def test_concurrent_sample_calls_are_decoded_together_and_each_gets_what_it_gets_alone(sc, local_engine,
                                                                                     tiny_model_dir, tokenizer):
    import json
    import urllib.request

    def batch_rows() -> list[float]:
        req = urllib.request.Request(f"{local_engine.base_url}/api/v1/engine_stats", headers={"X-API-Key": "tml-local"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read()).get("sample_batch_rows", [])

    tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=2).result()
    sampler = sc.create_sampling_client(model_path=tc.save_weights_for_sampler("concurrent").result().path).result()
    requests = [(encode(tokenizer, "1+2=?" * (1 + i % 3)),
                 types.SamplingParams(max_tokens=4 + 3 * i, seed=100 + i, stop=[] if i % 2 else None,
                                      temperature=0.5 + 0.1 * i)) for i in range(8)]
    alone = [sampler.sample(types.ModelInput.from_ints(p), 1, sp).result() for p, sp in requests]
    before = len(batch_rows())
    # a long forward_backward keeps the compute thread busy while the eight requests arrive
    busy = tc.forward_backward([sft_datum(encode(tokenizer, "the cat sat on the mat " * 40))] * 64, "cross_entropy")
    futures = [sampler.sample(types.ModelInput.from_ints(p), 1, sp) for p, sp in requests]
    together = [f.result() for f in futures]
    busy.result()
    for a, t in zip(alone, together, strict=True):
        assert t.sequences[0].tokens == a.sequences[0].tokens
        assert t.sequences[0].logprobs == pytest.approx(a.sequences[0].logprobs, abs=1e-5)
    # the batch's row count is recorded after its last answer went out: wait for it
    deadline = time.monotonic() + 10
    while len(batch_rows()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert max(batch_rows()[before:]) > 1, "no two of the concurrent requests shared a batch"


@pytest.mark.slow
def test_two_training_clients_and_a_sampler_at_once_keep_their_adapters_apart(sc, tiny_model_dir, tokenizer):
    data = sft_batch(tokenizer)
    a = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=21).result()
    b = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=21).result()
    base = sc.create_sampling_client(base_model=str(tiny_model_dir)).result()
    probe = types.ModelInput.from_ints(encode(tokenizer, SENT := "the cat sat on the mat"))
    base_before = base.compute_logprobs(probe).result()
    b_before = logprobs(b, data)
    errors: list[BaseException] = []
    losses_a: list[float] = []
    b_seen: list[list[list[float]]] = []
    base_seen: list[list[float | None]] = []

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)
        return run

    threads = [
        threading.Thread(target=guard(lambda: losses_a.extend(train(a, data, 8)))),
        threading.Thread(target=guard(lambda: [b_seen.append(logprobs(b, data)) for _ in range(6)])),
        threading.Thread(target=guard(lambda: [base_seen.append(base.compute_logprobs(probe).result())
                                               for _ in range(6)])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert losses_a[-1] < losses_a[0]
    for seen in b_seen:  # b never trained: identical to before, whatever a did meanwhile
        assert flat(seen) == pytest.approx(flat(b_before), abs=1e-6)
    for seen in base_seen:
        assert seen[1:] == pytest.approx(base_before[1:], abs=1e-6)
    assert logprobs(a, data)[0] != pytest.approx(b_before[0], abs=1e-3)
    assert SENT


def _still_serving(sc, tiny_model_dir):
    tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=2, seed=0).result()
    assert tc.get_info().lora_rank == 2


def test_bad_requests_raise_clear_errors_and_the_engine_keeps_serving(sc, tiny_model_dir, tokenizer):
    with pytest.raises(tinker.BadRequestError, match="unknown base model 'Qwen/Qwen3-8B'"):
        sc.create_lora_training_client(base_model="Qwen/Qwen3-8B", rank=4).result()
    _still_serving(sc, tiny_model_dir)
    with pytest.raises(tinker.BadRequestError, match="rank 4096 is outside"):
        sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4096).result()
    _still_serving(sc, tiny_model_dir)
    tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=0).result()
    toks = encode(tokenizer, "1+1=?")
    with pytest.raises(tinker.BadRequestError, match="unknown loss_fn 'dpo'"):
        tc.forward_backward([sft_datum(toks)], "dpo").result()
    tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=0).result()
    bad = types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                      loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * (len(toks) + 3)})
    with pytest.raises(tinker.BadRequestError, match="must be equal"):
        tc.forward_backward([bad], "cross_entropy").result()
    with pytest.raises(tinker.NotFoundError, match="no checkpoint at"):
        sc.create_sampling_client(model_path="tinker://nobody:train:0/sampler_weights/missing").result()
    with pytest.raises(tinker.NotFoundError, match="no checkpoint at"):
        sc.create_training_client_from_state("tinker://nobody:train:0/weights/missing").result()
    tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=0).result()
    tc.save_weights_for_sampler("twice").result()
    with pytest.raises(tinker.BadRequestError, match="already exists"):
        tc.save_weights_for_sampler("twice").result()
    tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=0).result()
    with pytest.raises(tinker.BadRequestError, match="checkpoint name"):
        tc.save_state("has/slash").result()
    sampler = sc.create_sampling_client(base_model=str(tiny_model_dir)).result()
    with pytest.raises(tinker.BadRequestError, match="top_p"):
        sampler.sample(types.ModelInput.from_ints(toks), 1, types.SamplingParams(max_tokens=4, top_p=0.0)).result()
    _still_serving(sc, tiny_model_dir)


def test_a_wrong_api_key_is_refused(local_engine):
    with pytest.raises(tinker.AuthenticationError, match="invalid API key"):
        service(local_engine.base_url, api_key="tml-not-the-key").create_lora_training_client(
            base_model="tiny", rank=2).result()


def test_forward_backward_custom_matches_the_built_in_cross_entropy(sc, tiny_model_dir, tokenizer):
    import torch

    data = sft_batch(tokenizer)[:3]
    builtin = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=9).result()
    custom = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=9).result()

    def neg_logprob_sum(batch, logprobs_list):
        loss = sum(-(lp * torch.tensor(d.loss_fn_inputs["weights"].data)).sum()
                   for d, lp in zip(batch, logprobs_list, strict=True))
        return loss, {"custom:sum": float(loss.detach())}

    a = builtin.forward_backward(data, "cross_entropy").result()
    b = custom.forward_backward_custom(data, neg_logprob_sum).result()
    assert b.metrics["loss:sum"] == pytest.approx(a.metrics["loss:sum"], rel=1e-5)
    for client in (builtin, custom):
        client.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    assert flat(logprobs(custom, data)) == pytest.approx(flat(logprobs(builtin, data)), abs=1e-5)


def test_checkpoints_are_listed_and_deleted_through_the_rest_client(sc, local_engine, tiny_model_dir):
    tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=2, seed=0).result()
    state = tc.save_state("kept").result().path
    sampler = tc.save_weights_for_sampler("dropped").result().path
    rest = tinker.RestClient(base_url=local_engine.base_url, api_key="tml-local")
    listed = rest.list_checkpoints(tc.model_id).result().checkpoints
    assert sorted(c.tinker_path for c in listed) == sorted([state, sampler])
    rest.delete_checkpoint_from_tinker_path(sampler).result()
    with pytest.raises(tinker.NotFoundError):
        sc.create_sampling_client(model_path=sampler).result()
    assert [c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints] == [state]
    # deleting what is not there names the checkpoint, whether the id is well formed or not
    with pytest.raises(tinker.NotFoundError, match="no such checkpoint sampler_weights/dropped"):
        rest.delete_checkpoint_from_tinker_path(sampler).result()
    with pytest.raises(tinker.NotFoundError, match="no such checkpoint kept"):
        rest.delete_checkpoint(tc.model_id, "kept").result()
    assert [c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints] == [state]


def test_save_weights_and_get_sampling_client_samples_the_current_weights(sc, tiny_model_dir, tokenizer):
    tc = sc.create_lora_training_client(base_model=str(tiny_model_dir), rank=4, seed=13).result()
    train(tc, sft_batch(tokenizer), 2)
    sampler = tc.save_weights_and_get_sampling_client().result()
    ids = encode(tokenizer, "4+4=?<answer>8</answer>")
    scored = sampler.compute_logprobs(types.ModelInput.from_ints(ids)).result()
    assert scored[1:] == pytest.approx(logprobs(tc, [sft_datum(ids)])[0], abs=1e-4)
    train(tc, sft_batch(tokenizer), 1)  # a snapshot: later training does not change what it samples
    assert sampler.compute_logprobs(types.ModelInput.from_ints(ids)).result() == pytest.approx(scored, abs=1e-6)
