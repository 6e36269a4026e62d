"""Encoding and decoding of the SDK's wire messages (its own protobuf module, used as a library)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from tinker.proto import tinker_public_pb2 as pb

_NP = {1: np.float32, 2: np.int64, 3: np.int32}


class WireError(ValueError):
    """A request body that does not decode into what the endpoint needs."""


def failed(message: str, category: str) -> bytes:
    """A RequestFailedResponse body: the SDK raises RequestFailedError with this message."""
    return json.dumps({"error": message, "category": category}).encode()


def _tensor(msg: Any, name: str) -> torch.Tensor:
    dtype = _NP.get(msg.dtype)
    if dtype is None:
        raise WireError(f"loss_fn_inputs[{name!r}]: unsupported dtype {pb.DType.Name(msg.dtype)}")
    shape = list(msg.shape)
    if msg.HasField("sparse_csr"):
        csr = msg.sparse_csr
        values = np.frombuffer(csr.values, dtype=dtype)
        crow = np.frombuffer(csr.crow_indices, dtype=np.int64)
        col = np.frombuffer(csr.col_indices, dtype=np.int64)
        if len(shape) != 2:
            raise WireError(f"loss_fn_inputs[{name!r}]: a sparse tensor needs a 2-d shape")
        dense = np.zeros(shape, dtype=dtype)
        for r in range(shape[0]):
            dense[r, col[crow[r]:crow[r + 1]]] = values[crow[r]:crow[r + 1]]
        arr = dense
    else:
        arr = np.frombuffer(msg.dense, dtype=dtype)
        if shape and int(np.prod(shape)) != arr.size:
            raise WireError(f"loss_fn_inputs[{name!r}]: {arr.size} values do not fill shape {shape}")
    return torch.from_numpy(arr.reshape(-1).copy())


def decode_forward_backward(body: bytes) -> dict[str, Any]:
    """A ForwardBackwardRequest proto -> model_id, loss_fn, loss_cfg, forward_only, data [{tokens, inputs}]."""
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except Exception as exc:
        raise WireError(f"forward_backward body is not a ForwardBackwardRequest: {exc}") from exc
    cfg: dict[str, Any] = {k: float(v) for k, v in msg.loss_fn_config.items()}
    for k, v in msg.loss_fn_config_v2.items():
        cfg[k] = v.text if v.WhichOneof("value") == "text" else float(v.number)
    data = []
    for i, d in enumerate(msg.data):
        tokens: list[int] = []
        for chunk in d.model_input:
            if chunk.WhichOneof("chunk") != "encoded_text":
                raise WireError(f"datum {i}: only token (encoded_text) chunks are supported by this engine, which "
                                "serves text models (images need a vision-language base model on the Tinker service)")
            tokens.extend(np.frombuffer(chunk.encoded_text.tokens, dtype=np.int32).tolist())
        inputs = {name: _tensor(t, name) for name, t in d.loss_fn_inputs.items()}
        data.append({"tokens": tokens, "inputs": inputs})
    return {"model_id": msg.model_id, "seq_id": msg.seq_id, "loss_fn": msg.loss_fn, "loss_cfg": cfg,
            "forward_only": bool(msg.forward_only), "data": data}


def _batched(arrays: list[np.ndarray], dtype: int) -> Any:
    bt = pb.BatchedTensor()
    bt.dtype = dtype
    offsets = [0]
    for a in arrays:
        offsets.append(offsets[-1] + a.nbytes)
    bt.data = b"".join(a.tobytes() for a in arrays)
    bt.offsets = np.asarray(offsets, dtype=np.int64).tobytes()
    return bt


def encode_forward_backward(result: dict[str, Any]) -> bytes:
    """Engine.forward_backward output -> ForwardBackwardOutput proto bytes (one ArrayRecord for all datums)."""
    out = pb.ForwardBackwardOutput()
    out.loss_fn_output_type = "ArrayRecord"
    rec = out.loss_fn_outputs.add()
    rec.type_tag = "ArrayRecord"
    rec.num_datums = len(result["logprobs"])
    for field in ("logprobs", "elementwise_loss"):
        arrays = [t.numpy().astype(np.float32) for t in result[field]]
        rec.fields[field].CopyFrom(_batched(arrays, pb.DTYPE_FLOAT32))
    for k, v in result["metrics"].items():
        out.metrics[k] = float(v)
    return out.SerializeToString()


def encode_sample(seqs: list[Any], prompt_logprobs: list[float] | None) -> bytes:
    """Sampled sequences -> SampleResponse proto bytes."""
    out = pb.SampleResponse()
    for s in seqs:
        m = out.sequences.add()
        m.stop_reason = pb.STOP_REASON_STOP if s.stop_reason == "stop" else pb.STOP_REASON_LENGTH
        m.tokens = np.asarray(s.tokens, dtype=np.int32).tobytes()
        m.logprobs = np.asarray(s.logprobs, dtype=np.float32).tobytes()
    if prompt_logprobs is not None:
        out.prompt_logprobs = np.asarray(prompt_logprobs, dtype=np.float32).tobytes()
    return out.SerializeToString()
