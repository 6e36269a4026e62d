"""The Engine object in-process: LoRA module groups, every AdamParams field, and the tokenizer-name quirk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from rft_runtime.engine.core import Engine, EngineError, LoraSpec, tokenizer_safe_name


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    torch.set_num_threads(1)
    return Engine(tiny_model_dir, tmp_path_factory.mktemp("core-state"))


def _layers(engine, model_id):
    return {n.split(".lora_")[0].split(".")[-1] for n, _ in engine.training.get(model_id).params}


def test_train_flags_choose_exactly_the_module_groups(engine, tiny_model_dir):
    cases = {
        "attn": (LoraSpec(2, 0, train_mlp=False, train_attn=True, train_unembed=False),
                 {"q_proj", "k_proj", "v_proj", "o_proj"}),
        "mlp": (LoraSpec(2, 0, train_mlp=True, train_attn=False, train_unembed=False),
                {"gate_proj", "up_proj", "down_proj"}),
        "unembed": (LoraSpec(2, 0, train_mlp=False, train_attn=False, train_unembed=True), {"lm_head"}),
        "all": (LoraSpec(2, 0), {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                 "lm_head"}),
    }
    for name, (spec, layers) in cases.items():
        engine.create_run(f"groups-{name}", str(tiny_model_dir), spec)
        assert _layers(engine, f"groups-{name}") == layers, name
    with pytest.raises(EngineError, match="cover no layers"):
        engine.create_run("groups-none", str(tiny_model_dir), LoraSpec(2, 0, False, False, False))
    with pytest.raises(EngineError, match="outside 1..128"):
        engine.create_run("groups-big", str(tiny_model_dir), LoraSpec(129, 0))


def test_optim_step_is_adamw_with_every_adam_param_and_global_norm_clipping(engine, tiny_model_dir):
    engine.create_run("adam", str(tiny_model_dir), LoraSpec(4, 1))
    run = engine.training.get("adam")
    tokens = list(range(10, 40))
    data = [{"tokens": tokens[:-1], "inputs": {"target_tokens": torch.tensor(tokens[1:])}}]
    hp = {"learning_rate": 0.05, "beta1": 0.5, "beta2": 0.7, "eps": 1e-3, "weight_decay": 0.3,
          "grad_clip_norm": 0.01}
    shadow = [p.detach().clone().requires_grad_(True) for _, p in run.params]
    ref = torch.optim.AdamW(shadow, lr=0.05, betas=(0.5, 0.7), eps=1e-3, weight_decay=0.3)
    for _ in range(3):
        engine.training.forward_backward("adam", data, "cross_entropy", {}, False)
        grads = [p.grad.detach().clone() for _, p in run.params]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        assert norm > 0.01  # so clipping really happens
        for s, g in zip(shadow, grads, strict=True):
            s.grad = g * (0.01 / (norm + 1e-6))
        ref.step()
        out = engine.training.optim_step("adam", hp)
        assert out["metrics"]["grad_norm"] == pytest.approx(norm, rel=1e-5)
        for s, (_, p) in zip(shadow, run.params, strict=True):
            assert torch.allclose(s, p, atol=1e-6)
    assert all(p.grad is None for _, p in run.params)  # gradients are cleared by the step


def test_a_two_slash_model_path_still_loads_its_tokenizer_through_the_sdk(tiny_model_dir):
    from tinker.lib.public_interfaces.sampling_client import _load_tokenizer_from_model_info

    link = Path(tempfile.gettempdir()) / f"rft-tiny-{os.getpid()}"
    link.symlink_to(tiny_model_dir)
    try:
        assert str(link).count("/") == 2
        name = tokenizer_safe_name(str(link))
        assert name != str(link) and Path(name).resolve() == tiny_model_dir
        tok = _load_tokenizer_from_model_info(name)
        assert tok.decode(tok.encode("a+b", add_special_tokens=False)) == "a+b"
    finally:
        link.unlink()
    assert tokenizer_safe_name("/a/b/c/model") == "/a/b/c/model"


def test_evicted_sampler_adapters_come_back_from_disk_unchanged(engine, tiny_model_dir):
    from rft_runtime.engine.samplers import MAX_SAMPLER_ADAPTERS
    from rft_runtime.engine.sampling import parse_spec

    engine.create_run("lru", str(tiny_model_dir), LoraSpec(4, 2))
    tokens = list(range(20, 50))
    data = [{"tokens": tokens[:-1], "inputs": {"target_tokens": torch.tensor(tokens[1:])}}]
    spec = parse_spec({"max_tokens": 6, "seed": 1, "stop": []}, engine.eos_ids, engine.max_context)
    first = {}
    for i in range(MAX_SAMPLER_ADAPTERS + 2):
        engine.training.forward_backward("lru", data, "cross_entropy", {}, False)
        engine.training.optim_step("lru", {"learning_rate": 0.05})
        path = engine.save("lru", f"v{i}", "sampler_weights")
        engine.create_sampler(f"lru-{i}", path, None)
        first[i] = [s.tokens for s in engine.samplers.sample(f"lru-{i}", tokens[:5], 2, spec, False)[0]]
    assert len(engine.samplers.adapters) == MAX_SAMPLER_ADAPTERS
    assert len({tuple(map(tuple, v)) for v in first.values()}) > 1  # the versions really differ
    for i in range(MAX_SAMPLER_ADAPTERS + 2):  # the oldest were evicted and are reloaded from disk
        assert [s.tokens for s in engine.samplers.sample(f"lru-{i}", tokens[:5], 2, spec, False)[0]] == first[i]


def test_snapshot_samplers_of_an_rl_loop_do_not_pile_up_in_memory(engine, tiny_model_dir, monkeypatch):
    from rft_runtime.engine import samplers
    from rft_runtime.engine.sampling import parse_spec

    engine.create_run("loop", str(tiny_model_dir), LoraSpec(8, 6))
    one = engine.training.get("loop").adapter.state()
    budget_mb = 3 * sum(t.numel() * 4 for t in one.values()) / 2**20  # room for three adapters
    monkeypatch.setattr(samplers, "MAX_SAMPLER_ADAPTER_MB", budget_mb)
    tokens = list(range(20, 40))
    data = [{"tokens": tokens[:-1], "inputs": {"target_tokens": torch.tensor(tokens[1:])}}]
    spec = parse_spec({"max_tokens": 4, "seed": 3, "stop": []}, engine.eos_ids, engine.max_context)
    first = None
    for step in range(6):  # train, snapshot, sample: what an RL loop does every step
        engine.training.forward_backward("loop", data, "cross_entropy", {}, False)
        engine.training.optim_step("loop", {"learning_rate": 0.05})
        engine.snapshot_sampler("loop", f"loop-s{step}")
        out = engine.samplers.sample(f"loop-s{step}", tokens[:5], 2, spec, False)[0]
        first = first or [s.tokens for s in out]
        assert len(engine.samplers.adapters) <= 3
    # the oldest snapshot was evicted from memory and comes back from its file unchanged
    assert "snapshot:loop-s0" not in engine.samplers.adapters
    assert [s.tokens for s in engine.samplers.sample("loop-s0", tokens[:5], 2, spec, False)[0]] == first


def test_a_padded_batch_gives_each_datum_the_logprobs_it_gets_alone(engine, tiny_model_dir):
    engine.create_run("pad", str(tiny_model_dir), LoraSpec(4, 3))
    seqs = [list(range(5, 40)), list(range(60, 70)), list(range(100, 125))]
    data = [{"tokens": s[:-1], "inputs": {"target_tokens": torch.tensor(s[1:])}} for s in seqs]
    batch = engine.training.forward_backward("pad", data, "cross_entropy", {}, True)["logprobs"]
    for d, got in zip(data, batch, strict=True):
        alone = engine.training.forward_backward("pad", [d], "cross_entropy", {}, True)["logprobs"][0]
        assert got.shape == alone.shape
        assert torch.allclose(got, alone, atol=1e-5)


def test_a_batch_too_big_for_one_pass_trains_in_chunks_with_the_same_gradients(engine, tiny_model_dir, monkeypatch):
    from rft_runtime.engine.training import train_chunk_tokens

    seqs = [list(range(5 + i, 45 + 3 * i)) for i in range(6)]
    data = [{"tokens": s[:-1], "inputs": {"target_tokens": torch.tensor(s[1:]), "advantages": torch.ones(len(s) - 1)
                                          * (1 if i % 2 else -0.5), "logprobs": torch.full((len(s) - 1,), -3.0)}}
            for i, s in enumerate(seqs)]
    results = {}
    for mb in ("1000", "1"):  # everything in one pass; then a budget of a few datums a chunk
        monkeypatch.setenv("RFT_ENGINE_TRAIN_MB", mb)
        engine.create_run(f"chunks-{mb}", str(tiny_model_dir), LoraSpec(4, 5))
        training = engine.training
        chunks = training.chunks(data)
        assert [d for c in chunks for d in c] == data
        assert len(chunks) == 1 if mb == "1000" else len(chunks) >= 3
        assert all(sum(len(d["tokens"]) for d in c) <= train_chunk_tokens(engine.tf) for c in chunks)
        out = training.forward_backward(f"chunks-{mb}", data, "ppo", {}, False)
        results[mb] = (out, [p.grad.clone() for _, p in training.get(f"chunks-{mb}").params])
    assert train_chunk_tokens(engine.tf) == max(1, 2**20 // engine.tf.activation_bytes())
    (one, grads_one), (many, grads_many) = results["1000"], results["1"]
    assert one["metrics"]["loss:sum"] == pytest.approx(many["metrics"]["loss:sum"], rel=1e-5)
    for a, b in zip(one["logprobs"] + one["elementwise_loss"], many["logprobs"] + many["elementwise_loss"], strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    for a, b in zip(grads_one, grads_many, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_finishing_a_session_frees_its_adapters_but_keeps_its_checkpoints(engine, tiny_model_dir):
    engine.create_run("sess-x:train:0", str(tiny_model_dir), LoraSpec(2, 0))
    path = engine.save("sess-x:train:0", "kept", "weights")
    snapshot = engine.snapshot_sampler("sess-x:train:0", "sess-x:sample:0").snapshot
    assert snapshot.exists() and snapshot.parent == engine.state_dir / ".snapshots"  # on disk, not in memory
    engine.create_run("sess-y:train:0", str(tiny_model_dir), LoraSpec(2, 0))
    assert engine.drop_session("sess-x") == 2
    assert not snapshot.exists()
    assert "sess-x:train:0" not in engine.training.runs and "sess-x:sample:0" not in engine.samplers.sessions
    assert "sess-y:train:0" in engine.training.runs
    assert engine.checkpoints.find(path)[1] == "weights"
    engine.load(path, True, "sess-z:train:0")  # a later session can still resume from it
    assert engine.training.get("sess-z:train:0").lora.rank == 2


def test_a_checkpoint_loads_when_the_model_directory_has_moved(engine, tiny_model_dir, tmp_path):
    import shutil

    engine.create_run("moved:train:0", str(tiny_model_dir), LoraSpec(3, 4))
    path = engine.save("moved:train:0", "before-move", "weights")
    moved = tmp_path / "elsewhere" / tiny_model_dir.name
    shutil.copytree(tiny_model_dir, moved)
    other = Engine(moved, engine.state_dir)
    other.load(path, True, "moved:train:1")
    assert other.training.get("moved:train:1").base_model == str(moved)
    a, b = engine.training.get("moved:train:0"), other.training.get("moved:train:1")
    before = dict(a.params)
    assert [n for n, _ in b.params] == list(before)
    for name, value in b.params:
        assert torch.equal(value, before[name])


def test_a_batch_of_requests_gives_each_exactly_what_it_gets_alone(engine, tiny_model_dir):
    from rft_runtime.engine.sampling import SampleJob, parse_spec

    engine.create_run("batch-src", str(tiny_model_dir), LoraSpec(4, 3))
    path = engine.save("batch-src", "w", "sampler_weights")
    engine.create_sampler("batch-lora", path, None)
    engine.create_sampler("batch-base", None, str(tiny_model_dir))
    tok = engine.tokenizer
    alone_first = engine.samplers.sample("batch-base", tok.encode("ab", add_special_tokens=False), 1,
                                parse_spec({"max_tokens": 6, "seed": 9, "stop": []}, engine.eos_ids, 1024), False)
    stop_tok = alone_first[0][0].tokens[2]  # a token this request samples: its stop ends it early
    # prompts of different lengths, on two different weights, with stop tokens, a stop string, EOS,
    # different max_tokens and temperatures, one and several samples
    cases = [
        ("batch-base", "ab", 1, {"max_tokens": 6, "seed": 9, "stop": [stop_tok]}, False),
        ("batch-lora", "the cat sat on the mat and", 3, {"max_tokens": 12, "seed": 1, "stop": []}, True),
        ("batch-base", "1+2=?", 2, {"max_tokens": 20, "seed": 2, "temperature": 0.6, "stop": ["a", "e"]}, False),
        ("batch-lora", "x", 1, {"max_tokens": 9, "temperature": 0.0, "stop": []}, False),
        ("batch-base", "hello world, hello", 4, {"max_tokens": 40, "seed": 3, "top_k": 20, "top_p": 0.9}, True),
        ("batch-lora", "0123456789", 2, {"max_tokens": 3, "seed": 4, "stop": []}, False),
    ]
    jobs = [SampleJob(sid, tok.encode(text, add_special_tokens=False), n,
                      parse_spec(params, engine.eos_ids, 1024), plp) for sid, text, n, params, plp in cases]
    alone = [engine.samplers.sample(j.sampler_id, j.prompt, j.num_samples, j.spec, j.prompt_logprobs) for j in jobs]
    engine.samplers.sample_many(jobs)
    lengths, reasons = set(), set()
    for job, (seqs, plp) in zip(jobs, alone, strict=True):
        assert job.error is None
        got, got_plp = job.result
        assert [s.tokens for s in got] == [s.tokens for s in seqs]
        assert [s.stop_reason for s in got] == [s.stop_reason for s in seqs]
        for g, s in zip(got, seqs, strict=True):
            assert g.logprobs == pytest.approx(s.logprobs, abs=1e-5)
            lengths.add(len(g.tokens))
            reasons.add(g.stop_reason)
        if plp is None:
            assert got_plp is None
        else:
            assert got_plp[1:] == pytest.approx(plp[1:], abs=1e-5)
    assert jobs[0].result[0][0].tokens == alone_first[0][0].tokens[:3]  # stopped on the stop token
    assert reasons == {"stop", "length"} and len(lengths) >= 4  # the batch really mixed its rows
    # the samples of one request differ, and a request's sample 0 is the same whatever n is
    assert len({tuple(s.tokens) for s in jobs[4].result[0]}) > 1
    one = engine.samplers.sample("batch-base", jobs[4].prompt, 1, jobs[4].spec, False)[0]
    assert one[0].tokens == jobs[4].result[0][0].tokens


def test_a_bad_request_in_a_batch_fails_alone(engine, tiny_model_dir):
    from rft_runtime.engine.sampling import SampleJob, parse_spec

    engine.create_sampler("batch-ok", None, str(tiny_model_dir))
    spec = parse_spec({"max_tokens": 4, "seed": 0, "stop": []}, engine.eos_ids, 1024)
    good, bad = SampleJob("batch-ok", [5, 6, 7], 2, spec), SampleJob("no-such-sampler", [5, 6], 1, spec)
    engine.samplers.sample_many([bad, good])
    assert isinstance(bad.error, EngineError) and "no-such-sampler" in str(bad.error)
    assert good.error is None and [len(s.tokens) for s in good.result[0]] == [4, 4]


def test_requests_joining_a_running_batch_get_what_they_get_alone(engine, tiny_model_dir):
    from rft_runtime.engine.sampling import SampleJob, parse_spec

    engine.create_sampler("join-base", None, str(tiny_model_dir))
    engine.create_run("join-src", str(tiny_model_dir), LoraSpec(4, 8))
    engine.create_sampler("join-lora", engine.save("join-src", "w", "sampler_weights"), None)
    tok = engine.tokenizer

    def job(sid, text, n, max_tokens, seed, stop=()):
        spec = parse_spec({"max_tokens": max_tokens, "seed": seed, "stop": list(stop)}, engine.eos_ids, 1024)
        return SampleJob(sid, tok.encode(text, add_special_tokens=False), n, spec, True)

    first = job("join-base", "abc", 2, 25, 1)
    # arriving at later steps: a longer prompt than the batch's cache, a shorter one, and one on other
    # weights, which the batch must not take
    arrivals = {2: [job("join-base", "a much longer prompt than the first one was", 1, 6, 2)],
                5: [job("join-base", "x", 3, 30, 3), job("join-lora", "abc", 1, 5, 4)]}
    waiting: list = []
    calls = {"n": 0}
    offered_rows = []

    def more(accept, rows):
        calls["n"] += 1
        waiting.extend(arrivals.pop(calls["n"], []))
        offered_rows.append(rows)
        taken = [j for j in waiting if accept(j)]
        for j in taken:
            waiting.remove(j)
        return taken

    done_order = []
    engine.samplers.sample_many([first], more=more, on_done=done_order.append)
    joined = [j for j in done_order if j is not first]
    assert len(joined) == 2 and waiting and waiting[0].sampler_id == "join-lora"  # other weights wait
    assert done_order.index(joined[0]) < done_order.index(first)  # answered when done, not at the end
    for j in [first] + joined:
        seqs, plp = engine.samplers.sample(j.sampler_id, j.prompt, j.num_samples, j.spec, True)
        assert [s.tokens for s in j.result[0]] == [s.tokens for s in seqs]
        for got, want in zip(j.result[0], seqs, strict=True):
            assert got.logprobs == pytest.approx(want.logprobs, abs=1e-5)
        assert j.result[1][1:] == pytest.approx(plp[1:], abs=1e-5)
    assert offered_rows[0] == 64 - 2  # room left under the batch cap


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_a_local_checkpoint_of_each_supported_architecture_trains_and_samples(arch, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from rft_runtime.engine.model_factory import build_tokenizer
    from rft_runtime.engine.sampling import SampleJob, parse_spec

    tok = build_tokenizer()
    cfg = AutoConfig.for_model(arch, vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               max_position_embeddings=256, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / arch)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(tmp_path / arch)
    tok.save_pretrained(tmp_path / arch)

    eng = Engine(tmp_path / arch, tmp_path / "state")
    assert eng.arch == arch
    assert {n.rsplit(".", 1)[-1] for n in eng.tf.groups["attn"]} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert {n.rsplit(".", 1)[-1] for n in eng.tf.groups["mlp"]} == {"gate_proj", "up_proj", "down_proj"}
    eng.create_run("r", arch, LoraSpec(4, 0))
    ids = tok.encode("1+2=?<answer>3</answer>", add_special_tokens=False)
    data = [{"tokens": ids[:-1], "inputs": {"target_tokens": torch.tensor(ids[1:]),
                                            "weights": torch.ones(len(ids) - 1)}}]
    losses = []
    for _ in range(3):
        losses.append(eng.training.forward_backward("r", data, "cross_entropy", {}, False)["metrics"]["loss:sum"])
        eng.training.optim_step("r", {"learning_rate": 1e-2})
    assert losses[-1] < losses[0]
    eng.create_sampler("s", eng.save("r", "w", "sampler_weights"), None)
    spec = parse_spec({"max_tokens": 8, "seed": 1, "stop": []}, eng.eos_ids, eng.max_context)
    jobs = [SampleJob("s", ids[:n], 2, spec) for n in (3, 9)]
    eng.samplers.sample_many(jobs)
    for j in jobs:
        alone = eng.samplers.sample("s", j.prompt, 2, spec, False)[0]
        assert [s.tokens for s in j.result[0]] == [s.tokens for s in alone]
