"""Helpers for the engine tests: SDK clients, a fixed small SFT dataset, datums."""

from __future__ import annotations

from typing import Any

import tinker
from tinker import types

API_KEY = "tml-local"
SENTENCES = ["1+2=?<answer>3</answer>", "4+4=?<answer>8</answer>", "2+5=?<answer>7</answer>",
             "hello world", "the cat sat on the mat", "0123456789"]


def service(base_url: str, api_key: str = API_KEY) -> tinker.ServiceClient:
    """A ServiceClient for the engine at base_url."""
    return tinker.ServiceClient(base_url=base_url, api_key=api_key)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of text, no special tokens added."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def sft_datum(tokens: list[int]) -> types.Datum:
    """Next-token cross-entropy over the whole sequence."""
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                       loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)})


def rl_datum(tokens: list[int], logprobs: list[float], advantages: list[float]) -> types.Datum:
    """A datum for importance_sampling / ppo / cispo."""
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                       loss_fn_inputs={"target_tokens": tokens[1:], "logprobs": logprobs, "advantages": advantages})


def sft_batch(tokenizer: Any) -> list[types.Datum]:
    """The fixed small SFT dataset."""
    return [sft_datum(encode(tokenizer, s)) for s in SENTENCES]


def train(client: Any, data: list[types.Datum], steps: int, lr: float = 5e-3) -> list[float]:
    """`steps` forward_backward + optim_step rounds; the loss of each step."""
    out = []
    for _ in range(steps):
        fb = client.forward_backward(data, "cross_entropy")
        opt = client.optim_step(types.AdamParams(learning_rate=lr))
        out.append(fb.result().metrics["loss:sum"])
        opt.result()
    return out


def logprobs(client: Any, data: list[types.Datum]) -> list[list[float]]:
    """Per-datum target logprobs from a forward pass (no gradient)."""
    res = client.forward(data, "cross_entropy").result()
    return [list(o["logprobs"].data) for o in res.loss_fn_outputs]


def flat(rows: list[list[float]]) -> list[float]:
    """One list of every value (pytest.approx compares flat sequences only)."""
    return [x for row in rows for x in row]
