"""Training examples in Tinker's shape.

A sample of prompt + response becomes one Datum: the model reads tokens[:-1] and is scored on tokens[1:];
prompt positions carry zero weight / zero advantage, which Tinker's losses treat as masked. Token-mean
aggregation (Trinity's default) is done by scaling each token's weight or advantage by 1 / tokens in the
batch, so the server's summed loss is already the mean.

A prompt with images (a vision-language rollout, or an SFT / DPO / expert row with images) is given as its
chunks: text chunks with an ImageChunk where the chat template puts the image token. The prompt's ids
hold the image token once per position the image takes (its expected_tokens, from the model's processor),
so every loss array still has one entry per position of the model input; image positions carry zero
weight, as the rest of the prompt.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rft_runtime.loop.errors import RunError
from rft_runtime.workflows.images import unsized


def model_input(prompt_ids: list[int], response: list[int], prompt_chunks: list[Any] | None = None) -> Any:
    """The ModelInput of a prompt followed by response tokens: the prompt's chunks (its images) where it has
    them, else its ids. Used whole for compute_logprobs; a datum's input leaves the last token out."""
    # the SDK imports torch (~2 s), here and in the loop's other modules at their first call: a job that stops
    # at its checks (no API key, no model directory, a bad dataset) says so without loading either
    import tinker

    if not prompt_chunks:
        return tinker.ModelInput.from_ints([*prompt_ids, *response])
    if unsized(prompt_chunks):
        raise RunError("a prompt's image has no token count (the model's processor could not size it), so the "
                       "loss cannot be lined up with the prompt; the processor of model.model_path must load here")
    chunks = list(prompt_chunks)
    if response:
        last = chunks[-1]
        if last.type == "encoded_text":  # one text chunk, as the server would join them
            chunks[-1] = tinker.types.EncodedTextChunk(tokens=[*last.tokens, *response])
        else:
            chunks.append(tinker.types.EncodedTextChunk(tokens=list(response)))
    return tinker.ModelInput(chunks=chunks)


def loss_datum(plan: Any, prompt_ids: list[int], response: list[int], logprobs: list[float], advantage: Any,
               scale: float, mask: list[int], prompt_chunks: list[Any] | None = None) -> Any:
    """One rollout for the step's LossPlan. A built-in loss gets the per-token advantage (or, for
    cross_entropy, weight) times the loss_agg_mode scale and the mask; a client-side loss gets only the
    tokens and the mask (its inputs stay in the loss function on this machine). `prompt_chunks`: the prompt
    with its images (a vision-language rollout or training row), whose positions prompt_ids stand in for."""
    import tinker  # heavy: see model_input

    tokens = prompt_ids + response
    pad = [0.0] * (len(prompt_ids) - 1)
    keep = [float(m) for m in mask]
    inputs: dict[str, Any] = {"target_tokens": np.asarray(tokens[1:], dtype=np.int64)}
    if plan.builtin is None:
        inputs["weights"] = np.asarray(pad + keep, dtype=np.float32)
    elif plan.builtin[0] == "cross_entropy":
        inputs["weights"] = np.asarray(pad + [scale * k for k in keep], dtype=np.float32)
    else:
        # one advantage for the whole response, or (distillation) one per token
        per_token = [advantage] * len(keep) if isinstance(advantage, (int, float)) else list(advantage)
        f = plan.advantage_factor * scale
        inputs["logprobs"] = np.asarray(pad + list(logprobs), dtype=np.float32)
        inputs["advantages"] = np.asarray(pad + [a * f * k for a, k in zip(per_token, keep, strict=True)],
                                          dtype=np.float32)
    if prompt_chunks:
        return tinker.Datum(model_input=model_input(prompt_ids, response[:-1], prompt_chunks), loss_fn_inputs=inputs)
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)
