"""An OpenAI-compatible endpoint on loopback, backed by the job's current sampler.

    GET  /v1/models                          the policy and auxiliary models by name
    POST /v1/chat/completions                sample with the current weights (not recorded)
    GET  /rollouts/<id>/v1/models            the same, scoped to one rollout
    POST /rollouts/<id>/v1/chat/completions  sample and record into that rollout's model wrapper

`ModelWrapper.get_openai_client()` points the official `openai` client at its rollout's route, so an
agent that only speaks OpenAI (in this process or another one handed `base_url` and `api_key`) produces
experiences with the exact token ids and logprobs the sampler returned. Each choice carries `token_ids`
and the response `prompt_token_ids`, as vLLM's `return_token_ids` does, so clients can record them too.
Tool calls work as vLLM's auto tool choice does: `tools` go into the chat template, and the calls the model
writes come back as `tool_calls` (finish_reason "tool_calls"), read in the format the template teaches
(rft_runtime.workflows.tool_calls). Streaming, and a tool_choice that forces a call (it needs guided
decoding), are not offered: such a request gets a 400 saying so.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rft_runtime.workflows.base import WorkflowError
from rft_runtime.workflows.experience import as_floats, as_ints
from rft_runtime.workflows.tool_calls import parse as parse_tool_calls
from rft_runtime.workflows.tool_calls import style_of

log = logging.getLogger(__name__)

_SAMPLING_KEYS = ("n", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "seed", "stop")


class RequestError(Exception):
    """A request the endpoint answers with an HTTP error (status, OpenAI error type, message)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.code = code


def completion(wrapper: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Answer one chat.completions request with `wrapper` (which records it when its history is on)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content} messages")
    if body.get("stream"):
        raise RequestError(400, "streaming is not supported by this endpoint; call without stream=true")
    kwargs = {k: body[k] for k in _SAMPLING_KEYS if body.get(k) is not None}
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise RequestError(400, f"tool_choice {choice!r} forces a tool call, which needs guided decoding; this "
                                "endpoint offers 'auto' (the model decides) and 'none'")
    tools = body.get("tools") if choice != "none" else None
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("function") for t in tools):
            raise RequestError(400, "'tools' must be a list of {type: function, function: {name, parameters}}")
        kwargs["tools"] = tools
    if isinstance(body.get("chat_template_kwargs"), dict):
        # vLLM's extension (extra_body={"chat_template_kwargs": {"enable_thinking": False}}): to the template
        kwargs["chat_template_kwargs"] = body["chat_template_kwargs"]
    style = style_of(getattr(wrapper, "chat_template", None) or getattr(wrapper.tokenizer, "chat_template", None)
                     if tools else None)
    before = len(wrapper.calls)
    try:
        exps = wrapper.chat(messages, **kwargs)
    except WorkflowError as exc:
        raise RequestError(400, str(exc)) from exc
    call = wrapper.calls[before] if len(wrapper.calls) > before else None
    if call is not None and call.truncated:
        limit = wrapper.settings.max_prompt_tokens
        raise RequestError(400, f"the prompt is {call.prompt_tokens} tokens, over model.max_prompt_tokens "
                                f"({limit}) or the context; it was not sampled", code="context_length_exceeded")
    prompt_ids = as_ints(exps[0].tokens)[:exps[0].prompt_length] if exps else []
    tok = wrapper.tokenizer
    choices = []
    completion_tokens = 0
    for i, exp in enumerate(exps):
        ids = as_ints(exp.tokens)[exp.prompt_length:]
        lps = as_floats(exp.logprobs)
        completion_tokens += len(ids)
        reason = exp.info.get("stop_reason") or "stop"
        content = [{"token": tok.decode([t]), "logprob": lp, "bytes": list(tok.decode([t]).encode("utf-8")),
                    "top_logprobs": []} for t, lp in zip(ids, lps, strict=False)]
        message: dict[str, Any] = {"role": "assistant", "content": exp.response_text or ""}
        calls: list[dict[str, Any]] = []
        if tools:
            message["content"], calls = parse_tool_calls(exp.response_text or "", style)
            if calls:
                message["tool_calls"] = calls
        choices.append({
            "index": i,
            "message": message,
            "finish_reason": "length" if reason == "length" else "tool_calls" if calls else "stop",
            "logprobs": {"content": content},
            "token_ids": ids,
        })
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": wrapper.model_name,
        "choices": choices,
        "prompt_token_ids": prompt_ids,
        "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                  "total_tokens": len(prompt_ids) + completion_tokens},
    }


class OpenAIServer:
    """The loopback endpoint of one job: started on first use, routes added and removed per rollout."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self.api_key = "rft-" + secrets.token_hex(16)
        self.models: dict[str, Any] = {}  # name -> wrapper serving /v1 (the current sampler)
        self.default: str | None = None
        self._routes: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """http://host:port of the running server (started if it is not yet)."""
        self.start()
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Bind and serve in a daemon thread (idempotent)."""
        with self._lock:
            if self._httpd is not None:
                return
            server = self

            class Handler(_Handler):
                owner = server

            self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
            self._httpd.daemon_threads = True
            self.port = self._httpd.server_address[1]
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-endpoint", daemon=True)
            self._thread.start()
            log.info("serving an OpenAI-compatible endpoint for workflows at http://%s:%d/v1", self.host, self.port)

    def close(self) -> None:
        """Stop serving."""
        with self._lock:
            httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    # ------------------------------------------------------------ models and routes

    def set_models(self, wrappers: list[Any]) -> None:
        """The wrappers /v1 serves, by model name; the first is the default (the policy)."""
        with self._lock:
            self.models = {w.model_name: w for w in wrappers}
            self.default = wrappers[0].model_name if wrappers else None

    def address_for(self, wrapper: Any) -> str:
        """The base URL (without /v1) of the wrapper's own route, created on first use."""
        with self._lock:
            if wrapper.route is None:
                wrapper.route = uuid.uuid4().hex[:12]
            self._routes[wrapper.route] = wrapper
        return f"{self.base_url}/rollouts/{wrapper.route}"

    def release(self, wrapper: Any) -> None:
        """Forget the wrapper's route (its rollout is over)."""
        with self._lock:
            if wrapper.route is not None:
                self._routes.pop(wrapper.route, None)

    def lookup(self, route: str | None, model: str | None) -> Any:
        """The wrapper a request goes to: the route's, else the named model, else the default."""
        with self._lock:
            if route is not None:
                wrapper = self._routes.get(route)
                if wrapper is None:
                    raise RequestError(404, f"no rollout {route!r} is running (its workflow has finished)",
                                       kind="not_found_error")
                return wrapper
            if not self.models:
                raise RequestError(503, "no sampler is loaded yet", kind="server_error")
            if model and model in self.models:
                return self.models[model]
            return self.models[self.default]

    def model_list(self, route: str | None) -> dict[str, Any]:
        """The /v1/models answer."""
        names = [self.lookup(route, None).model_name] if route else list(self.models)
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "rft"}
                                           for n in names]}


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("openai endpoint: " + format, *args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: RequestError) -> None:
        self._send(exc.status, {"error": {"message": str(exc), "type": exc.kind, "code": exc.code,
                                          "param": None}})

    def _route(self) -> tuple[str | None, str]:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.startswith("/rollouts/"):
            _, _, rest = path.partition("/rollouts/")
            route, _, tail = rest.partition("/")
            return route, "/" + tail
        return None, path

    def _authorised(self) -> bool:
        if self.headers.get("Authorization", "") == f"Bearer {self.owner.api_key}":
            return True
        self._error(RequestError(401, "missing or wrong API key (Authorization: Bearer ...)",
                                 kind="authentication_error"))
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        route, path = self._route()
        if not self._authorised():
            return
        try:
            if path == "/v1/models":
                self._send(200, self.owner.model_list(route))
            else:
                raise RequestError(404, f"no such endpoint: GET {self.path}", kind="not_found_error")
        except RequestError as exc:
            self._error(exc)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        route, path = self._route()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self._authorised():
            return
        try:
            if path != "/v1/chat/completions":
                raise RequestError(404, f"no such endpoint: POST {self.path}", kind="not_found_error")
            try:
                body = json.loads(raw or b"{}")
            except ValueError as exc:
                raise RequestError(400, f"the body is not JSON: {exc}") from exc
            wrapper = self.owner.lookup(route, body.get("model"))
            if route is None:
                # the plain route belongs to no rollout: sample with the current weights, record nothing
                wrapper = wrapper.with_settings(enable_history=False)
            try:
                self._send(200, completion(wrapper, body))
            except RequestError:
                raise
            except Exception as exc:
                # a sampler failure: remembered on the wrapper so the loop reconnects instead of blaming the agent
                wrapper.sampling_error = exc
                raise RequestError(502, f"sampling failed: {type(exc).__name__}: {exc}", kind="server_error") from exc
        except RequestError as exc:
            self._error(exc)
