"""Benchmark of the local engine: each call in-process and through the tinker SDK, with protocol time split out.

    python bench/engine.py [--iters 20] [--batch 8] [--rank 16] [--models tiny,smollm2-135m] [--real-iters 3]

On the tiny preset it times forward_backward (a batch of quickstart-style chat examples), optim_step,
sample (8 sequences x 16 tokens) and save_weights_for_sampler: first calling the Engine object directly, then
through tinker.ServiceClient against a `rft engine serve` child process. For the SDK path it also reports the
server's own compute time for the same calls (from the engine's /api/v1/engine_stats), so what remains is
protocol overhead (HTTP, futures, (de)serialisation). Prints medians in milliseconds and ratios.

Then, per model (the tiny preset and the real SmolLM2-135M-Instruct, when its package is installed),
through the SDK: forward_backward, optim_step and sample (8 x 64 tokens) medians with tokens per second,
the engine process's peak RSS, and the concurrent-sampling row: 8 concurrent sample(num_samples=1) calls
against one sample(num_samples=8) call, same prompt and length (the target is at most 1.5x).

On the real model the same run also times its peers in this process, right after the engine's rounds: Hugging Face `generate` (8 rows x 64
tokens from a 20-token prompt, the whole vocabulary, no early stop) on the plain model and on a peft LoRA
model of the same rank, and peft forward + backward on the same datums; and the machine's float32 matmul
rate, from which the FLOP bounds follow (2 N per sampled token, 4 N T for a forward_backward whose base is
frozen). It prints the engine's time as a ratio to each. The targets (issue 23, on 2 idle cores): sample
8 x 64 <= 3 s and <= 0.5x HF generate; forward_backward <= 1.3x the bound; peak RSS under 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("TINKER_TELEMETRY", "0")


def examples(tokenizer: Any, n: int, task: str = "larger-digit", turns: int = 1) -> list[list[int]]:
    """Chat-templated quickstart questions with their answers, as the quickstart's SFT warm-up sees them
    (`turns` question/answer exchanges per sequence)."""
    from rft_runtime.quickstart_task import SYSTEM_PROMPT, question, response

    out = []
    for i in range(n):
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
        for j in range(turns):
            a, b = (i + j) % 10, (3 * i + 7 * j + 1) % 10
            msgs += [{"role": "user", "content": question(a, b, task)},
                     {"role": "assistant", "content": response(a, b, task)}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        out.append(list(tokenizer.encode(text, add_special_tokens=False)))
    return out


def median_ms(xs: list[float]) -> float:
    """Median of seconds, in milliseconds."""
    return 1000 * statistics.median(xs)


def timed(fn: Any, iters: int, warmup: int = 2) -> list[float]:
    """Wall seconds of fn() for `iters` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_in_process(model_dir: Path, state: Path, seqs: list[list[int]], args: argparse.Namespace) -> dict:
    """Medians of direct Engine calls."""
    import torch

    from rft_runtime.engine.core import Engine, LoraSpec
    from rft_runtime.engine.sampling import parse_spec
    from rft_runtime.engine.server import compute_threads

    eng = Engine(model_dir, state)
    torch.set_num_threads(compute_threads(eng))  # what `rft engine serve` uses
    eng.create_run("bench", str(model_dir), LoraSpec(rank=args.rank, seed=0))
    training, samplers = eng.training, eng.samplers
    data = [{"tokens": s[:-1], "inputs": {"target_tokens": torch.tensor(s[1:]),
                                          "weights": torch.ones(len(s) - 1)}} for s in seqs]
    spec = parse_spec({"max_tokens": 16, "seed": 0, "stop": []}, eng.eos_ids, eng.max_context)
    counter = iter(range(10**6))
    res: dict[str, list[float]] = {"forward_backward": [], "optim_step": []}
    for i in range(args.iters + 2):  # optim_step needs fresh gradients each time, so time them in turn
        t0 = time.perf_counter()
        training.forward_backward("bench", data, "cross_entropy", {}, False)
        t1 = time.perf_counter()
        training.optim_step("bench", {"learning_rate": 1e-4})
        t2 = time.perf_counter()
        if i >= 2:
            res["forward_backward"].append(t1 - t0)
            res["optim_step"].append(t2 - t1)
    res["save_weights_for_sampler"] = timed(
        lambda: eng.save("bench", f"s{next(counter)}", "sampler_weights"), args.iters)
    eng.create_sampler("bench-sampler", "tinker://bench/sampler_weights/s0", None)
    res["sample"] = timed(lambda: samplers.sample("bench-sampler", seqs[0][:60], 8, spec, False), args.iters)
    return {k: median_ms(v) for k, v in res.items()}


def server_stats(base_url: str) -> dict[str, list[float]]:
    """The engine's recent compute seconds per operation."""
    req = urllib.request.Request(f"{base_url}/api/v1/engine_stats", headers={"X-API-Key": "tml-local"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return {k: v for k, v in json.loads(resp.read()).items() if isinstance(v, list)}


def bench_sdk(model_dir: Path, root: Path, seqs: list[list[int]], args: argparse.Namespace) -> dict:
    """Medians through the SDK (wall) and of the server's own compute time for the same calls."""
    import tinker
    from tinker import types

    from rft_runtime.engine.launcher import LocalEngine

    with LocalEngine(model_dir, state_dir=root / "sdk-state", port=0, log_file=root / "engine.log") as engine:
        sc = tinker.ServiceClient(base_url=engine.base_url, api_key="tml-local")
        tc = sc.create_lora_training_client(base_model=str(model_dir), rank=args.rank, seed=0).result()
        data = [types.Datum(model_input=types.ModelInput.from_ints(s[:-1]),
                            loss_fn_inputs={"target_tokens": s[1:], "weights": [1.0] * (len(s) - 1)}) for s in seqs]
        counter = iter(range(10**6))
        path = tc.save_weights_for_sampler("warm").result().path
        sampler = sc.create_sampling_client(model_path=path).result()
        prompt = types.ModelInput.from_ints(seqs[0][:60])
        wall: dict[str, float] = {}
        server: dict[str, float] = {}
        fb_wall: list[float] = []
        opt_wall: list[float] = []
        before = {k: len(v) for k, v in server_stats(engine.base_url).items()}
        for i in range(args.iters + 2):  # optim_step needs fresh gradients each time, so time them in turn
            t0 = time.perf_counter()
            tc.forward_backward(data, "cross_entropy").result()
            t1 = time.perf_counter()
            tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
            t2 = time.perf_counter()
            if i >= 2:
                fb_wall.append(t1 - t0)
                opt_wall.append(t2 - t1)
        stats = server_stats(engine.base_url)
        for label, xs in (("forward_backward", fb_wall), ("optim_step", opt_wall)):
            wall[label] = median_ms(xs)
            server[label] = median_ms(stats[label][before.get(label, 0) + 2:])
        calls = {
            "save_weights_for_sampler": lambda: tc.save_weights_for_sampler(f"s{next(counter)}").result(),
            "sample": lambda: sampler.sample(prompt, 8, types.SamplingParams(max_tokens=16, seed=0, stop=[]))
            .result(),
        }
        for label, fn in calls.items():
            for _ in range(2):
                fn()
            before_n = len(server_stats(engine.base_url).get(label, []))
            wall[label] = median_ms(timed(fn, args.iters, warmup=0))
            server[label] = median_ms(server_stats(engine.base_url)[label][before_n:])
        # the runtime's pattern: submit both, then wait (one round trip of latency hidden)
        def step() -> None:
            fb = tc.forward_backward(data, "cross_entropy")
            op = tc.optim_step(types.AdamParams(learning_rate=1e-4))
            fb.result()
            op.result()
        wall["fb+optim pipelined"] = median_ms(timed(step, args.iters))
        sc.close("success")
    return {"wall": wall, "server": server}


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class HFPeers:
    """Hugging Face's own way of running the same model in this process: generate() on the plain model and
    on a peft LoRA model (unmerged, as a LoRA sampler runs), and peft forward + backward for training."""

    def __init__(self, model_dir: Path, rank: int):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.plain = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        lora_model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.lora = get_peft_model(lora_model, LoraConfig(r=rank, lora_alpha=32, target_modules=targets))
            with torch.no_grad():  # a trained adapter: B away from zero (same cost, but no shortcut)
                for name, p in self.lora.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 1e-3)
        self.lora.eval()
        eos = self.plain.generation_config.eos_token_id
        self.pad = int(eos[0] if isinstance(eos, list) else eos)
        self.weights = sum(m.weight.numel() for m in self.plain.modules() if isinstance(m, torch.nn.Linear))

    def generate(self, model: Any, prompt: list[int], rows: int, tokens: int, seed: int) -> None:
        """rows x tokens sampled tokens (temperature 1, the whole vocabulary, no early stop)."""
        torch = self.torch
        ids = torch.tensor([prompt] * rows)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=tokens, min_new_tokens=tokens,
                                 pad_token_id=self.pad)
        assert out.shape == (rows, len(prompt) + tokens)

    def forward_backward(self, seqs: list[list[int]]) -> None:
        """Cross-entropy forward and backward through the peft model (what the engine did before its own forward)."""
        torch = self.torch
        width = max(len(s) - 1 for s in seqs)
        ids = torch.full((len(seqs), width), self.pad)
        tgt = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s) - 1] = torch.tensor(s[:-1])
            tgt[i, : len(s) - 1] = torch.tensor(s[1:])
        self.lora.train()
        logits = self.lora(input_ids=ids, use_cache=False).logits
        logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        (-logp.sum()).backward()
        self.lora.zero_grad(set_to_none=True)
        self.lora.eval()


def matmul_rate(threads: int) -> float:
    """The machine's best float32 matmul rate (GFLOP/s) at `threads` torch threads: 2048-square products."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(8):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * 2048 ** 3 / best / 1e9


def bench_model(model_dir: Path, root: Path, seqs: list[list[int]], args: argparse.Namespace,
                iters: int, peers: bool) -> dict[str, float]:
    """Through the SDK on one model: fb / optim / sample 8 x 64 medians (s), tokens/s, peak RSS, and the
    median wall of 8 concurrent single-sample calls against one 8-sample call. With peers: Hugging Face
    generate (plain and with peft LoRA) and peft forward_backward on the same inputs, timed right after the
    engine's rounds (in this process, the engine idle), and the FLOP bounds."""
    import tinker
    import torch
    from tinker import types

    from rft_runtime.engine.launcher import LocalEngine
    from rft_runtime.engine.server import default_threads

    out: dict[str, float] = {}
    hf = HFPeers(model_dir, args.rank) if peers else None
    with LocalEngine(model_dir, state_dir=root / "state", port=0, log_file=root / "engine.log") as engine:
        engine.start(timeout=600)
        sc = tinker.ServiceClient(base_url=engine.base_url, api_key="tml-local")
        tc = sc.create_lora_training_client(base_model=str(model_dir), rank=args.rank, seed=0).result()
        data = [types.Datum(model_input=types.ModelInput.from_ints(s[:-1]),
                            loss_fn_inputs={"target_tokens": s[1:], "weights": [1.0] * (len(s) - 1)}) for s in seqs]
        tc.forward_backward(data, "cross_entropy").result()  # warm-up, and a trained (non-zero) adapter
        tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
        sampler = sc.create_sampling_client(model_path=tc.save_weights_for_sampler("bench").result().path).result()
        prompt_ids = seqs[0][: args.prompt_tokens]
        prompt = types.ModelInput.from_ints(prompt_ids)
        tokens = 64

        def params(seed: int) -> types.SamplingParams:
            return types.SamplingParams(max_tokens=tokens, seed=seed, stop=[])

        sampler.sample(prompt, 8, params(0)).result()  # warm-up
        times: dict[str, list[float]] = {}

        def timed_once(label: str, fn: Any) -> None:
            t0 = time.perf_counter()
            fn()
            times.setdefault(label, []).append(time.perf_counter() - t0)

        for r in range(iters):
            timed_once("forward_backward", lambda: tc.forward_backward(data, "cross_entropy").result())
            timed_once("optim_step", lambda: tc.optim_step(types.AdamParams(learning_rate=1e-4)).result())
            timed_once("sample 8x64", lambda r=r: sampler.sample(prompt, 8, params(r)).result())
            timed_once("8 concurrent x 1x64", lambda r=r: [f.result() for f in [
                sampler.sample(prompt, 1, params(100 * r + i)) for i in range(8)]])
        if hf is not None:
            # after the engine's rounds, not between them: this process's OpenMP threads, still spinning after
            # a Hugging Face call, took cores from the engine (its sample took 11.8 s interleaved, 4.1 s alone)
            torch.set_num_threads(int(os.environ.get("RFT_ENGINE_THREADS") or default_threads(hf.weights)))
            hf.generate(hf.plain, prompt_ids, 8, 4, 0)  # warm-up
            hf.generate(hf.lora, prompt_ids, 8, 4, 0)
            hf.forward_backward(seqs)
            for r in range(iters):
                timed_once("HF generate", lambda r=r: hf.generate(hf.plain, prompt_ids, 8, tokens, r))
                timed_once("HF+LoRA generate", lambda r=r: hf.generate(hf.lora, prompt_ids, 8, tokens, r))
                timed_once("HF+LoRA forward_backward", lambda: hf.forward_backward(seqs))
        out = {k: statistics.median(v) for k, v in times.items()}
        train_tokens = sum(len(s) - 1 for s in seqs)
        out["fb tokens/s"] = train_tokens / out["forward_backward"]
        out["sample tokens/s"] = 8 * tokens / out["sample 8x64"]
        out["peak RSS MiB"] = peak_rss_mib(engine.pid)
        # the engine's thread tuner says when it changed its choice (one or more threads): a busy machine shows
        switches = [line.split("rft.engine: ", 1)[-1] for line in engine.log_tail(100_000).splitlines()
                    if "torch threads now" in line]
        print(f"  {model_dir.name}: thread choices of the engine: {'; '.join(switches) or 'none changed'}")
        if hf is not None:
            rate = matmul_rate(torch.get_num_threads())
            out["matmul GFLOP/s"] = rate
            out["sample bound"] = 2 * hf.weights * (len(prompt_ids) + 8 * tokens) / rate / 1e9
            out["fb bound"] = 4 * hf.weights * train_tokens / rate / 1e9
            out["weights"] = hf.weights
            out["train tokens"] = train_tokens
        sc.close("success")
    return out


def print_peers(name: str, res: dict[str, float], prompt_tokens: int) -> None:
    """The same-run comparison: this engine against Hugging Face and the FLOP bound, as ratios."""
    print(f"\n{name}: this engine (through the SDK) against Hugging Face in this process and the FLOP bound "
          f"(2 N per token for sampling, 4 N T for forward_backward with a frozen base; N = {res['weights'] / 1e6:.1f}M "
          f"matmul weights, {res['matmul GFLOP/s']:.0f} GFLOP/s float32 matmul measured here)")
    print(f"{'':<34}{'engine':>9}{'HF':>9}{'HF+LoRA':>9}{'bound':>9}   {'engine/HF':>10}{'engine/HF+LoRA':>15}"
          f"{'engine/bound':>13}")
    s, hf, hfl, b = res["sample 8x64"], res["HF generate"], res["HF+LoRA generate"], res["sample bound"]
    print(f"{f'sample 8 x 64, {prompt_tokens}-token prompt':<34}{s:>8.2f}s{hf:>8.2f}s{hfl:>8.2f}s{b:>8.2f}s   "
          f"{s / hf:>9.2f}x{s / hfl:>14.2f}x{s / b:>12.2f}x")
    f, fl, fbb = res["forward_backward"], res["HF+LoRA forward_backward"], res["fb bound"]
    label = f"forward_backward {res['train tokens']:.0f} tokens"
    print(f"{label:<34}{f:>8.2f}s{'':>9}{fl:>8.2f}s{fbb:>8.2f}s   {'':>10}{f / fl:>14.2f}x{f / fbb:>12.2f}x")
    print("targets: sample <= 3 s and <= 0.5x HF generate; forward_backward <= 1.3x the bound; "
          "peak RSS < 2048 MiB")


def main() -> int:
    """Run both benchmarks and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="datums per forward_backward")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--models", default="tiny,smollm2-135m",
                    help="models for the per-model table (smollm2-135m is skipped when its package is missing)")
    ap.add_argument("--real-iters", type=int, default=3, help="timed rounds per call in the per-model table")
    ap.add_argument("--skip-protocol", action="store_true", help="only the per-model table")
    ap.add_argument("--no-peers", action="store_true", help="skip the Hugging Face comparison")
    ap.add_argument("--turns", type=int, default=4,
                    help="question/answer exchanges per forward_backward datum on a real model (4: ~116 tokens)")
    ap.add_argument("--prompt-tokens", type=int, default=20, help="prompt length of the sampling rows")
    ap.add_argument("--smollm2-dir", default=None,
                    help="an already converted smollm2-135m directory (skips its conversion)")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from rft_runtime.engine.model_factory import ModelFactoryError, make_model

    print(f"{os.cpu_count()} CPUs, `uptime` at the start: {uptime()}, "
          f"RFT_ENGINE_THREADS={os.environ.get('RFT_ENGINE_THREADS', '(default)')}")
    with tempfile.TemporaryDirectory(prefix="rft-bench-engine-") as tmp:
        root = Path(tmp)
        model_dir = make_model(root / "model", preset="tiny", seed=0)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        seqs = examples(tok, args.batch)
        if not args.skip_protocol:
            print(f"tiny preset, {args.batch} datums x ~{statistics.mean(map(len, seqs)):.0f} tokens per "
                  f"forward_backward, rank {args.rank}, sample = 8 x 16 tokens, {args.iters} timed calls each")
            direct = bench_in_process(model_dir, root / "direct-state", seqs, args)
            sdk = bench_sdk(model_dir, root, seqs, args)
            print(f"\n{'call':<26}{'in-process':>12}{'SDK wall':>11}{'server':>9}{'protocol':>10}{'SDK/direct':>12}")
            for label in ("forward_backward", "optim_step", "sample", "save_weights_for_sampler"):
                d, w, s = direct[label], sdk["wall"][label], sdk["server"][label]
                print(f"{label:<26}{d:>10.1f}ms{w:>9.1f}ms{s:>7.1f}ms{w - s:>8.1f}ms{w / d:>11.2f}x")
            print(f"{'fb+optim pipelined':<26}{'':>12}{sdk['wall']['fb+optim pipelined']:>9.1f}ms")
            slow = [k for k, v in sdk["wall"].items() if v >= 50]
            print("\nall SDK calls under 50 ms" if not slow else f"\nover 50 ms through the SDK: {', '.join(slow)}")
        results: dict[str, dict[str, float]] = {}
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if name == "tiny":
                mdir, mseqs = model_dir, seqs
            else:
                try:
                    t0 = time.perf_counter()
                    if name == "smollm2-135m" and args.smollm2_dir:
                        mdir = Path(args.smollm2_dir).expanduser().resolve()
                    else:
                        mdir = make_model(root / name, preset=name)
                        print(f"\n{name}: converted in {time.perf_counter() - t0:.0f}s")
                except ModelFactoryError as exc:
                    print(f"\n{name}: skipped ({exc})")
                    continue
                mtok = AutoTokenizer.from_pretrained(str(mdir))
                mseqs = examples(mtok, args.batch, task="digit-sum", turns=args.turns)
            peers = name != "tiny" and not args.no_peers
            print(f"{name}: {args.batch} datums x ~{statistics.mean(map(len, mseqs)):.0f} tokens per "
                  f"forward_backward, {args.real_iters} timed rounds"
                  + (", then Hugging Face peers in as many" if peers else ""), flush=True)
            results[name] = bench_model(mdir, root / f"{name}-run", mseqs, args, args.real_iters, peers)
            if peers:
                print_peers(name, results[name], args.prompt_tokens)
    if results:
        names = list(results)
        print(f"\n{'through the SDK (medians)':<28}" + "".join(f"{n:>16}" for n in names))
        rows = [("forward_backward", "s"), ("fb tokens/s", ""), ("optim_step", "s"), ("sample 8x64", "s"),
                ("sample tokens/s", ""), ("8 concurrent x 1x64", "s"), ("peak RSS MiB", "")]
        for label, unit in rows:
            print(f"{label:<28}" + "".join(f"{results[n][label]:>15.3f}{unit or ' '}" for n in names))
        print(f"{'concurrent / one 8-sample':<28}"
              + "".join(f"{results[n]['8 concurrent x 1x64'] / results[n]['sample 8x64']:>15.2f}x" for n in names)
              + "   (target: at most 1.5x)")
    print(f"\n`uptime` at the end: {uptime()}")
    return 0


def uptime() -> str:
    """The load averages as `uptime` prints them."""
    load = os.getloadavg()
    return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


if __name__ == "__main__":
    sys.exit(main())
