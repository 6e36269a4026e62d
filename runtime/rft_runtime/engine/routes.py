"""The engine's endpoints: what each SDK call sends and what it must get back.

Validation happens here, before anything is queued, so a bad request gets a 4xx answer the SDK raises at
once (BadRequestError / NotFoundError) and never poisons the compute thread. 409 is never used for a
refused request: the SDK retries 408/409/429/5xx for minutes.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote

from rft_runtime.engine import losses, wire
from rft_runtime.engine.checkpoints import NAME_RE
from rft_runtime.engine.errors import EngineError
from rft_runtime.engine.lora import LoraSpec
from rft_runtime.engine.sampling import SampleJob, SamplingParamsError, parse_spec
from rft_runtime.engine.service import API, Future, HTTPError, SampleWork, Service

JSON = "application/json"
Answer = tuple[int, str, bytes, dict[str, str]]


def _ok(obj: Any, headers: dict[str, str] | None = None) -> Answer:
    return 200, JSON, json.dumps(obj).encode(), headers or {}


def _json(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise HTTPError(400, f"request body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise HTTPError(400, "request body must be a JSON object")
    return obj


def _engine_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an Engine method from an HTTP thread (read-only work), mapping its errors to HTTP ones."""
    try:
        return fn(*args, **kwargs)
    except EngineError as exc:
        raise HTTPError(exc.status if exc.status != 409 else 400, str(exc)) from exc


def _on_worker(svc: Service, label: str, fn: Any) -> Any:
    """Run fn on the compute thread (it touches adapters) and wait for it, mapping errors to HTTP ones."""
    box: dict[str, Any] = {}

    def run() -> dict[str, Any]:
        try:
            box["ok"] = fn()
        except Exception as exc:  # handed back to the HTTP thread below
            box["err"] = exc
        return {}

    fut = Future("inline", label)
    svc.work.put((fut, run, "json"))
    if not fut.done.wait(300):
        raise HTTPError(503, f"{label} timed out waiting for the compute thread")
    err = box.get("err")
    if isinstance(err, EngineError):
        raise HTTPError(err.status if err.status != 409 else 400, str(err))
    if isinstance(err, ValueError):
        raise HTTPError(400, str(err))
    if err is not None:
        raise err
    return box.get("ok")


def _need_model(svc: Service, model_id: Any) -> Any:
    if not isinstance(model_id, str) or not model_id:
        raise HTTPError(400, "model_id is required")
    return _engine_call(svc.engine.training.get, model_id)


def _session_of(model_id: str) -> str:
    return model_id.split(":train:", 1)[0]


def _check_tokens(svc: Service, tokens: list[int], what: str) -> None:
    vocab = svc.engine.vocab_size
    if not tokens:
        raise HTTPError(400, f"{what} is empty")
    bad = [t for t in tokens if not 0 <= t < vocab]
    if bad:
        raise HTTPError(400, f"{what} holds token ids outside the vocabulary (0..{vocab - 1}): {bad[:5]}")
    if len(tokens) > svc.engine.max_context:
        raise HTTPError(400, f"{what} has {len(tokens)} tokens; the model's context is {svc.engine.max_context}")


# ---------------------------------------------------------------------------------------------- session


def client_config(svc: Service, body: bytes) -> Answer:
    """Feature flags: per-request futures (no session poller), plain JSON/proto bodies, server-run losses off."""
    return _ok({"pjwt_auth_enabled": False, "sample_use_retrieve_futures": False,
                "custom_loss_server_side": False, "proto_compress_fwdbwd": False,
                "sample_join_sampling_session": False})


def create_session(svc: Service, body: bytes) -> Answer:
    """A new session id; sessions only scope model and sampler ids here."""
    req = _json(body)
    sid = f"sess-{uuid.uuid4().hex[:16]}"
    svc.sessions[sid] = {"created": time.time(), "last_seen": time.time(), "sdk": req.get("sdk_version"),
                         "user_metadata": req.get("user_metadata") or {}}
    return _ok({"type": "create_session", "session_id": sid})


def heartbeat(svc: Service, body: bytes) -> Answer:
    """Keep a session alive (sessions never expire in the local engine; unknown ones are still accepted)."""
    sid = _json(body).get("session_id")
    if sid in svc.sessions:
        svc.sessions[sid]["last_seen"] = time.time()
    return _ok({"type": "session_heartbeat"})


def finish_session(svc: Service, session_id: str) -> Answer:
    """ServiceClient.close(): free the session's adapters once the work queued before it is done."""
    svc.sessions.pop(session_id, None)
    svc.submit("finish_session", lambda: {"freed": svc.engine.drop_session(session_id)})
    return _ok({})


def capabilities(svc: Service) -> Answer:
    """The one model this engine serves, under each name it answers to."""
    e = svc.engine
    names = [e.model_name] + ([e.model_dir.name] if e.model_dir.name != e.model_name else [])
    return _ok({"supported_models": [{"model_name": n, "max_context_length": e.max_context, "trainable": True,
                                      "sampleable": True} for n in names]})


# ---------------------------------------------------------------------------------------------- training


def create_model(svc: Service, body: bytes) -> Answer:
    """create_lora_training_client: check everything now, build the adapter on the compute thread."""
    req = _json(body)
    sid, seq = req.get("session_id"), req.get("model_seq_id")
    if not isinstance(sid, str) or not isinstance(seq, int):
        raise HTTPError(400, "session_id and model_seq_id are required")
    base = _engine_call(svc.engine.resolve_base_model, req.get("base_model"))
    lc = req.get("lora_config")
    if not lc:
        raise HTTPError(400, "only LoRA training is supported: pass lora_config (create_lora_training_client)")
    opt = (req.get("optimizer_config") or {}).get("type", "adamw")
    if opt != "adamw":
        raise HTTPError(400, f"optimizer {opt!r} is not supported by the local engine (only adamw)")
    seed = lc.get("seed")
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    try:
        lora = LoraSpec(rank=int(lc["rank"]), seed=int(seed), train_mlp=bool(lc.get("train_mlp", True)),
                        train_attn=bool(lc.get("train_attn", True)),
                        train_unembed=bool(lc.get("train_unembed", True)))
    except (KeyError, TypeError, ValueError) as exc:
        raise HTTPError(400, f"bad lora_config {lc!r}: {exc}") from exc
    _engine_call(svc.engine.check_lora, lora)
    model_id = f"{sid}:train:{seq}"
    if model_id in svc.engine.training.runs:
        raise HTTPError(400, f"model {model_id!r} already exists")
    meta = req.get("user_metadata")

    def work() -> dict[str, Any]:
        svc.engine.create_run(model_id, base, lora, meta)
        return {"type": "create_model", "model_id": model_id}

    return _ok(svc.submit("create_model", work, model_id=model_id))


def get_info(svc: Service, body: bytes) -> Answer:
    """Model name, tokenizer id (the absolute model dir) and LoRA rank of a training run."""
    req = _json(body)
    _need_model(svc, req.get("model_id"))
    return _ok(_engine_call(svc.engine.info, req["model_id"]))


def forward_backward(svc: Service, body: bytes) -> Answer:
    """forward / forward_backward (protobuf request, protobuf result)."""
    try:
        req = wire.decode_forward_backward(body)
    except wire.WireError as exc:
        raise HTTPError(400, str(exc)) from exc
    _need_model(svc, req["model_id"])
    loss_fn, cfg = req["loss_fn"], req["loss_cfg"]
    try:
        losses.check_loss(loss_fn, cfg)
        if not req["data"]:
            raise losses.LossInputError("no data: pass at least one Datum")
        for i, d in enumerate(req["data"]):
            losses.check_inputs(loss_fn, len(d["tokens"]), d["inputs"], i)
    except losses.LossInputError as exc:
        raise HTTPError(400, str(exc)) from exc
    for i, d in enumerate(req["data"]):
        _check_tokens(svc, d["tokens"], f"datum {i} model_input")
        _check_tokens(svc, d["inputs"]["target_tokens"].long().tolist(), f"datum {i} target_tokens")
    label = "forward" if req["forward_only"] else "forward_backward"

    def work() -> bytes:
        out = svc.engine.training.forward_backward(req["model_id"], req["data"], loss_fn, cfg, req["forward_only"])
        return wire.encode_forward_backward(out)

    return _ok(svc.submit(label, work, kind="proto", model_id=req["model_id"]))


def optim_step(svc: Service, body: bytes) -> Answer:
    """optim_step with AdamParams (every field honoured)."""
    req = _json(body)
    _need_model(svc, req.get("model_id"))
    if "adam_params" not in req:
        raise HTTPError(400, "only AdamParams are supported by the local engine")
    adam = req["adam_params"] or {}
    try:
        lr, b1, b2 = float(adam.get("learning_rate", 1e-4)), float(adam.get("beta1", 0.9)), float(adam.get("beta2", 0.95))
        eps, wd = float(adam.get("eps", 1e-12)), float(adam.get("weight_decay", 0.0))
        clip = float(adam.get("grad_clip_norm", 0.0))
    except (TypeError, ValueError) as exc:
        raise HTTPError(400, f"bad adam_params: {exc}") from exc
    if lr < 0 or not 0 <= b1 < 1 or not 0 <= b2 < 1 or eps < 0 or wd < 0 or clip < 0:
        raise HTTPError(400, f"adam_params out of range: {adam}")
    model_id = req["model_id"]
    return _ok(svc.submit("optim_step", lambda: svc.engine.training.optim_step(model_id, adam), model_id=model_id))


def _check_name(svc: Service, model_id: str, kind: str, name: Any, overwrite: bool) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise HTTPError(400, f"checkpoint name {name!r} must be 1-128 letters, digits, '.', '_' or '-' "
                             "(starting with a letter or digit)")
    key = f"{model_id}/{kind}/{name}"
    exists = svc.engine.checkpoints.path_of(model_id, kind, name).exists() or key in svc.pending_names
    if exists and not overwrite:
        raise HTTPError(400, f"a checkpoint named {name!r} already exists for this training run "
                             f"(tinker://{key}); choose a new name")
    return key


def save_weights(svc: Service, body: bytes) -> Answer:
    """save_state: adapter + optimizer under <state-dir>/<model_id>/weights/<name>."""
    req = _json(body)
    model_id = req.get("model_id")
    _need_model(svc, model_id)
    name = req.get("path") or f"state-{int(time.time() * 1000)}"
    return _submit_save(svc, req, model_id, name, "weights", bool(req.get("overwrite")),
                        request_type="save_state", result_type="save_weights")


def _submit_save(svc: Service, req: dict[str, Any], model_id: str, name: str, kind: str, overwrite: bool, *,
                 request_type: str, result_type: str) -> Answer:
    """Reserve the checkpoint name now (so a second save of it fails at once), write it on the compute thread."""
    key = _check_name(svc, model_id, kind, name, overwrite)
    svc.pending_names.add(key)

    def work() -> dict[str, Any]:
        try:
            path = svc.engine.save(model_id, name, kind, overwrite, req.get("user_metadata"))
        finally:
            svc.pending_names.discard(key)
        return {"type": result_type, "path": path}

    return _ok(svc.submit(request_type, work, model_id=model_id))


def save_weights_for_sampler(svc: Service, body: bytes) -> Answer:
    """save_weights_for_sampler(name), or an in-memory snapshot for save_weights_and_get_sampling_client."""
    req = _json(body)
    model_id = req.get("model_id")
    _need_model(svc, model_id)
    name = req.get("path")
    if name is None:
        seq = req.get("sampling_session_seq_id")
        if not isinstance(seq, int):
            raise HTTPError(400, "pass a name (path) or sampling_session_seq_id")
        sampler_id = f"{_session_of(model_id)}:sample:{seq}"

        def snap() -> dict[str, Any]:
            svc.engine.snapshot_sampler(model_id, sampler_id)
            return {"type": "save_weights_for_sampler", "sampling_session_id": sampler_id}

        return _ok(svc.submit("save_weights_for_sampler", snap, model_id=model_id))
    return _submit_save(svc, req, model_id, name, "sampler_weights", False,
                        request_type="save_weights_for_sampler", result_type="save_weights_for_sampler")


def load_weights(svc: Service, body: bytes) -> Answer:
    """create_training_client_from_state[_with_optimizer] (session_id + model_seq_id) or load into a model."""
    req = _json(body)
    path = req.get("path")
    optimizer = bool(req.get("optimizer"))
    _, kind = _engine_call(svc.engine.checkpoints.find, path)
    if optimizer and kind != "weights":
        raise HTTPError(400, f"{path} holds sampler weights only; optimizer state comes from a save_state path")
    if req.get("base_model") is not None:
        _engine_call(svc.engine.resolve_base_model, req["base_model"])
    if req.get("session_id") is not None:
        sid, seq = req.get("session_id"), req.get("model_seq_id")
        if not isinstance(seq, int):
            raise HTTPError(400, "model_seq_id is required with session_id")
        model_id, new = f"{sid}:train:{seq}", True
        if model_id in svc.engine.training.runs:
            raise HTTPError(400, f"model {model_id!r} already exists")
    else:
        model_id, new = req.get("model_id"), False
        _need_model(svc, model_id)

    def work() -> dict[str, Any]:
        return svc.engine.load(path, optimizer, model_id, req.get("base_model"), new, req.get("user_metadata"))

    return _ok(svc.submit("load_weights", work, model_id=model_id))


# ---------------------------------------------------------------------------------------------- sampling


def create_sampling_session(svc: Service, body: bytes) -> Answer:
    """A sampler on saved weights (tinker:// path) or on the base model."""
    req = _json(body)
    sid, seq = req.get("session_id"), req.get("sampling_session_seq_id")
    model_path, base = req.get("model_path"), req.get("base_model")
    if not model_path and not base:
        raise HTTPError(400, "pass model_path or base_model")
    if model_path:
        _engine_call(svc.engine.checkpoints.find, model_path)
    else:
        _engine_call(svc.engine.resolve_base_model, base)
    sampler_id = f"{sid}:sample:{seq}" if sid is not None and seq is not None else f"sampler-{uuid.uuid4().hex[:12]}"
    _on_worker(svc, "create_sampling_session", lambda: svc.engine.create_sampler(sampler_id, model_path, base))
    return _ok({"type": "create_sampling_session", "sampling_session_id": sampler_id})


def get_sampler(svc: Service, sampler_id: str) -> Answer:
    """The sampler's base model (as a name AutoTokenizer can load) and model path."""
    s = _engine_call(svc.engine.samplers.get, sampler_id)
    return _ok({"sampler_id": s.sampler_id, "base_model": svc.engine.tokenizer_name(), "model_path": s.model_path})


def asample(svc: Service, body: bytes) -> Answer:
    """sample / compute_logprobs: validated now, generated on the compute thread, answered as protobuf."""
    req = _json(body)
    e = svc.engine
    sampler_id = req.get("sampling_session_id")
    if sampler_id is None:
        # a one-off request that names its weights itself
        sampler_id = f"oneoff-{uuid.uuid4().hex[:12]}"
        if req.get("model_path"):
            _engine_call(e.checkpoints.find, req["model_path"])
        else:
            _engine_call(e.resolve_base_model, req.get("base_model"))
        _on_worker(svc, "create_sampler", lambda: e.create_sampler(sampler_id, req.get("model_path"),
                                                                   req.get("base_model")))
    else:
        _engine_call(e.samplers.get, sampler_id)
    n = req.get("num_samples", 1)
    if not isinstance(n, int) or not 1 <= n <= 128:
        raise HTTPError(400, f"num_samples must be an integer in 1..128, got {n!r}")
    tokens: list[int] = []
    for chunk in (req.get("prompt") or {}).get("chunks") or []:
        if chunk.get("type", "encoded_text") != "encoded_text":
            raise HTTPError(400, f"only token (encoded_text) prompt chunks are supported, got {chunk.get('type')!r}: "
                                 "this engine serves text models; images need a vision-language base model on "
                                 "the Tinker service")
        tokens.extend(int(t) for t in chunk.get("tokens") or [])
    _check_tokens(svc, tokens, "prompt")
    for unsupported in ("topk_prompt_logprobs", "topk_sample_logprobs", "prompt_alt_tokens_k"):
        if req.get(unsupported):
            raise HTTPError(400, f"{unsupported} is not supported by the local engine")
    if req.get("target_prompt_logprobs") is not None:
        raise HTTPError(400, "target_prompt_logprobs is not supported by the local engine")
    try:
        spec = parse_spec(req.get("sampling_params") or {}, e.eos_ids, e.max_context)
    except SamplingParamsError as exc:
        raise HTTPError(400, str(exc)) from exc
    if (req.get("sampling_params") or {}).get("max_tokens") is None:
        # no limit given: generate up to the end of the context rather than refuse
        spec.max_tokens = max(1, min(spec.max_tokens, e.max_context - len(tokens)))
    if len(tokens) + spec.max_tokens > e.max_context:
        raise HTTPError(400, f"prompt ({len(tokens)} tokens) + max_tokens ({spec.max_tokens}) exceeds the "
                             f"model's context of {e.max_context}")
    want_prompt = bool(req.get("prompt_logprobs"))
    last_n = req.get("prompt_logprobs_last_n")

    def encode(job: SampleJob) -> bytes:
        seqs, plp = job.result
        if plp is not None and last_n:
            plp = [float("nan")] * (len(plp) - int(last_n)) + plp[-int(last_n):]
        return wire.encode_sample(seqs, plp)

    job = SampleJob(sampler_id, tokens, n, spec, want_prompt)
    out = svc.submit("sample", SampleWork(job, encode), kind="proto")
    out["sample_sequence_ids"] = [f"{out['request_id']}:{i}" for i in range(n)]
    return _ok(out)


# ---------------------------------------------------------------------------------------------- futures


def retrieve_future(svc: Service, body: bytes) -> Answer:
    """Long-poll one future: its result, or try_again after LONG_POLL_S."""
    req = _json(body)
    rid = req.get("request_id")
    if not isinstance(rid, str):
        raise HTTPError(400, "request_id is required")
    fut = svc.retrieve(rid)
    if fut is None:
        return _ok({"type": "try_again", "request_id": rid, "queue_state": "active"})
    return 200, fut.content_type, fut.body, {"X-Rft-Server-Ms": f"{1000 * fut.server_s:.3f}"}


# ---------------------------------------------------------------------------------------------- checkpoints

_CKPT = re.compile(r"^training_runs/(?P<run>[^/]+)/checkpoints(?:/(?P<id>.+))?$")
_CKPT_ID = re.compile(r"^(?P<kind>weights|sampler_weights)/(?P<name>[^/]+)$")


def checkpoints(svc: Service, method: str, rest: str) -> Answer | None:
    """GET training_runs/RUN/checkpoints, DELETE training_runs/RUN/checkpoints/KIND/NAME."""
    m = _CKPT.match(rest)
    if not m:
        return None
    run, checkpoint_id = m.group("run"), m.group("id")
    if method == "GET" and not checkpoint_id:
        return _ok({"checkpoints": _engine_call(svc.engine.checkpoints.entries, run), "cursor": None})
    if method == "DELETE" and checkpoint_id:
        cid = _CKPT_ID.match(checkpoint_id)
        if not cid or not NAME_RE.match(cid.group("name")):
            # the endpoint exists; the name does not (ids are KIND/NAME, as list_checkpoints gives them)
            raise HTTPError(404, f"no such checkpoint {checkpoint_id} for training run {run} (checkpoint ids are "
                                 "weights/NAME or sampler_weights/NAME, as list_checkpoints gives them)")
        path = f"tinker://{run}/{checkpoint_id}"
        _engine_call(svc.engine.checkpoints.find, path, missing=f"no such checkpoint {checkpoint_id} for training "
                                                               f"run {run}")
        _on_worker(svc, "delete_checkpoint", lambda: svc.engine.delete_checkpoint(path))
        return _ok({})
    if checkpoint_id:
        return None  # e.g. .../external_weights_urls: not an endpoint of this engine
    raise HTTPError(405, f"{method} is not supported on {rest}")


def stats(svc: Service) -> Answer:
    """Compute-thread seconds of the recent calls per operation (bench/engine.py splits protocol time out)."""
    out: dict[str, Any] = {label: list(xs) for label, xs in svc.stats.items()}
    out["try_again_answers"] = svc.try_agains
    return _ok(out)


def dispatch(svc: Service, method: str, path: str, body: bytes, headers: Any) -> Answer:
    """Route one request; raises HTTPError for anything refused."""
    path = unquote(path)
    if path in ("/healthz", "/health", API + "healthz"):
        return _ok({"status": "ok"})
    if not path.startswith(API):
        raise HTTPError(404, f"no such endpoint: {method} {path}")
    rest = path[len(API):].strip("/")
    if method == "GET":
        if rest == "get_server_capabilities":
            return capabilities(svc)
        if rest.startswith("samplers/"):
            return get_sampler(svc, rest[len("samplers/"):])
        if rest == "engine_stats":
            return stats(svc)
    if method == "POST":
        simple = {
            "client/config": client_config, "create_session": create_session, "session_heartbeat": heartbeat,
            "create_model": create_model, "get_info": get_info, "forward_backward": forward_backward,
            "optim_step": optim_step, "save_weights": save_weights,
            "save_weights_for_sampler": save_weights_for_sampler, "load_weights": load_weights,
            "create_sampling_session": create_sampling_session, "asample": asample,
            "retrieve_future": retrieve_future,
        }
        if rest in simple:
            return simple[rest](svc, body)
        if rest in ("telemetry",):
            return _ok({"status": "accepted"})
        if rest == "cancel_future":
            return _ok({})
        if rest.startswith("sessions/") and rest.endswith("/finish"):
            return finish_session(svc, rest[len("sessions/"):-len("/finish")])
    answer = checkpoints(svc, method, rest)
    if answer is not None:
        return answer
    raise HTTPError(404, f"no such endpoint: {method} {path} (this engine speaks the tinker SDK 0.38 protocol)")
