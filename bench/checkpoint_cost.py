"""What a resumable checkpoint costs next to a train step, on the local engine through the tinker SDK.

    python bench/checkpoint_cost.py [--iters 7] [--batch 16] [--rank 16]

Starts `rft engine serve` on the tiny preset, then times (medians) one train step (forward_backward of a
batch of 40-token sequences + optim_step), save_state (weights and optimizer: what a resume needs) and
save_weights_for_sampler (what every sync_interval already pays). Prints milliseconds and each save as a
fraction of a step: the figure behind trainer.save_interval's advice in the README.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TINKER_TELEMETRY", "0")


def main() -> None:
    """Run the measurement and print the medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()

    import tinker
    from tinker import types

    from rft_runtime.engine.launcher import LocalEngine
    from rft_runtime.engine.model_factory import make_model

    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp) / "tiny", preset="tiny", seed=0)
        engine = LocalEngine(model, state_dir=Path(tmp) / "state", port=0).start(timeout=180)
        try:
            svc = tinker.ServiceClient(base_url=engine.base_url, api_key="tml-local")
            tc = svc.create_lora_training_client(base_model=str(model), rank=args.rank).result()
            toks = list(range(5, 45))
            datum = types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                                loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * (len(toks) - 1)})

            def step() -> None:
                tc.forward_backward([datum] * args.batch, "cross_entropy").result()
                tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()

            def median(fn) -> float:
                times = []
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                return statistics.median(times)

            step()  # warm-up
            t_step = median(step)
            t_state = median(lambda: tc.save_state(f"bench-state-{time.time_ns()}").result())
            t_sampler = median(lambda: tc.save_weights_for_sampler(f"bench-sampler-{time.time_ns()}").result())
            svc.close("success").result(timeout=30)
        finally:
            engine.stop()
    print(f"median of {args.iters}, tiny preset, LoRA rank {args.rank}, batch {args.batch} x 40 tokens")
    print(f"train step (forward_backward + optim_step)  {t_step * 1000:8.1f} ms")
    print(f"save_state (weights + optimizer)            {t_state * 1000:8.1f} ms   {t_state / t_step:5.2f} x a step")
    print(f"save_weights_for_sampler                    {t_sampler * 1000:8.1f} ms   {t_sampler / t_step:5.2f} x a step")


if __name__ == "__main__":
    main()
