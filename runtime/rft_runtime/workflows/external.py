"""A model behind an OpenAI-compatible endpoint, with the model wrapper's surface (Trinity's "external" engine).

It stands in for the policy in mode bench (model.external_model) or for a judge
(explorer.auxiliary_models[i] with engine_type external). Its address and key come from the environment
variables that external_model_config names, as in Trinity; an address with or without the trailing /v1
works. Workflows reach it as Trinity's do: `get_openai_client()` (with `model_path` set to the model
name), and also through `chat()` / `chat_async()`, which Trinity's external wrapper lacks: each reply
becomes an Experience with the endpoint's token ids when it returns them (vLLM's return_token_ids, this
runtime's loopback endpoint), else the tokenizer's encoding of the text. Nothing it samples is trained.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from typing import Any

from rft_runtime.workflows.base import WorkflowError
from rft_runtime.workflows.experience import Experience
from rft_runtime.workflows.model import CallRecord, ModelSettings, _plain_messages


def endpoint(ext: Any, where: str) -> tuple[str, str]:
    """(base URL ending in /v1, API key) of an external_model config, read from its environment variables."""
    address = os.environ.get(ext.base_url_env or "", "").rstrip("/")
    if not address:
        raise WorkflowError(f"{where}.base_url_env: set the environment variable {ext.base_url_env} to the "
                            "OpenAI-compatible endpoint's address")
    if not address.endswith("/v1"):
        address += "/v1"
    return address, os.environ.get(ext.api_key_env or "", "") or "EMPTY"


class ExternalModel:
    """The model wrapper surface on an OpenAI-compatible endpoint."""

    def __init__(self, ext: Any, settings: ModelSettings, *, where: str, tokenizer: Any = None):
        self.base_url, self._api_key = endpoint(ext, where)
        self.settings = settings
        self.tokenizer = tokenizer
        self.where = where
        self.history: list[Experience] = []
        self.calls: list[CallRecord] = []
        self.openai_client: Any = None
        self.openai_async_client: Any = None
        self.sampling_error: BaseException | None = None

    # ------------------------------------------------------------ Trinity's properties

    @property
    def model_name(self) -> str:
        """The model name sent to the endpoint."""
        return self.settings.name

    @property
    def model_path(self) -> str:
        """The model name (Trinity's client.model_path)."""
        return self.settings.name

    @property
    def model_version(self) -> int:
        """0: an endpoint's weights are not this job's to version."""
        return 0

    @property
    async def model_version_async(self) -> int:
        """model_version, for async workflows."""
        return 0

    @property
    def enable_history(self) -> bool:
        """Never: what an external model says is not trained."""
        return False

    @property
    def api_address(self) -> str:
        """The endpoint's address without /v1."""
        return self.base_url[:-len("/v1")]

    @property
    def api_key(self) -> str:
        """The endpoint's API key."""
        return self._api_key

    @property
    def generate_kwargs(self) -> dict[str, Any]:
        """Default sampling arguments, as an OpenAI client call takes them."""
        return {"temperature": self.settings.temperature, "top_p": self.settings.top_p,
                "max_tokens": self.settings.max_tokens}

    # ------------------------------------------------------------ clients

    def get_openai_client(self) -> Any:
        """An `openai.OpenAI` client of the endpoint; `client.model_path` names the model."""
        if self.openai_client is None:
            import openai  # ~0.6 s to import: only a workflow that asks for a client needs it

            self.openai_client = openai.OpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=1,
                                               timeout=self.settings.timeout)
        self.openai_client.model_path = self.model_name
        return self.openai_client

    def get_openai_async_client(self) -> Any:
        """get_openai_client, as `openai.AsyncOpenAI`."""
        if self.openai_async_client is None:
            import openai  # see get_openai_client

            self.openai_async_client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key,
                                                          max_retries=1, timeout=self.settings.timeout)
        self.openai_async_client.model_path = self.model_name
        return self.openai_async_client

    # ------------------------------------------------------------ chat

    def _request(self, messages: list[dict], kwargs: dict[str, Any]) -> dict[str, Any]:
        s = self.settings

        def given(key: str, default: Any) -> Any:
            return default if kwargs.get(key) is None else kwargs[key]

        body: dict[str, Any] = {"model": self.model_name, "messages": _plain_messages(messages),
                                "temperature": 0.0 if s.greedy else given("temperature", s.temperature),
                                "top_p": given("top_p", s.top_p),
                                "max_tokens": kwargs.get("max_tokens") or kwargs.get("max_completion_tokens")
                                or s.max_tokens}
        body.update({k: kwargs[k] for k in ("n", "seed", "stop", "tools") if kwargs.get(k) is not None})
        extra: dict[str, Any] = {}
        if s.enable_thinking is not None:
            # vLLM's way of handing the chat template its arguments, as Trinity's wrapper sends it
            extra["chat_template_kwargs"] = {"enable_thinking": s.enable_thinking}
        return {"body": body, "extra": extra}

    def _experiences(self, messages: list[dict], response: Any) -> list[Experience]:
        data = response.model_dump()
        prompt_ids = list(data.get("prompt_token_ids") or [])
        out = []
        for choice in data.get("choices") or []:
            text = (choice.get("message") or {}).get("content") or ""
            ids = list(choice.get("token_ids") or [])
            if not prompt_ids and self.tokenizer is not None:
                prompt_ids = list(self.tokenizer.apply_chat_template(_plain_messages(messages), tokenize=True,
                                                                     add_generation_prompt=True))
            if not ids and self.tokenizer is not None:
                ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            prompt = prompt_ids or [0]
            ids = ids or [0]
            out.append(Experience(tokens=prompt + ids, logprobs=[0.0] * len(ids), prompt_length=len(prompt),
                                  response_text=text, messages=messages,
                                  info={"stop_reason": choice.get("finish_reason") or "", "model_version": 0}))
        self.calls.append(CallRecord(len(prompt_ids), len(out), False))
        return out

    def chat(self, messages: list[dict], **kwargs: Any) -> list[Experience]:
        """Ask the endpoint for `n` replies (kwarg, default 1); one Experience per reply."""
        req = self._request(messages, kwargs)
        try:
            response = self.get_openai_client().chat.completions.create(**req["body"], extra_body=req["extra"] or None)
        except Exception as exc:  # the openai client raises many types; all mean the endpoint did not answer
            raise WorkflowError(f"{self.where}: the endpoint at {self.base_url} did not answer: "
                                f"{type(exc).__name__}: {exc}") from exc
        return self._experiences(messages, response)

    async def chat_async(self, messages: list[dict], **kwargs: Any) -> list[Experience]:
        """chat, for async workflows."""
        req = self._request(messages, kwargs)
        try:
            response = await self.get_openai_async_client().chat.completions.create(
                **req["body"], extra_body=req["extra"] or None)
        except Exception as exc:
            raise WorkflowError(f"{self.where}: the endpoint at {self.base_url} did not answer: "
                                f"{type(exc).__name__}: {exc}") from exc
        return self._experiences(messages, response)

    def _unsupported(self, what: str) -> WorkflowError:
        return WorkflowError(f"{self.where} is an OpenAI-compatible endpoint: it answers chat messages (chat, "
                             f"the OpenAI client) but offers no {what}")

    def generate(self, prompts: list[str], **kwargs: Any) -> list[Experience]:
        """Not offered: the endpoint takes chat messages."""
        raise self._unsupported("raw-text generate()")

    async def generate_async(self, prompts: list[str], **kwargs: Any) -> list[Experience]:
        """Not offered: the endpoint takes chat messages."""
        raise self._unsupported("raw-text generate()")

    def logprobs(self, tokens: list[int], temperature: float | None = None) -> Any:
        """Not offered: an endpoint scores no given tokens."""
        raise self._unsupported("logprobs of given tokens")

    async def logprobs_async(self, tokens: list[int], temperature: float | None = None) -> Any:
        """Not offered: an endpoint scores no given tokens."""
        raise self._unsupported("logprobs of given tokens")

    def extract_experience_from_history(self, clear_history: bool = True) -> list[Experience]:
        """Not offered: an external model records no history."""
        raise self._unsupported("history")

    # ------------------------------------------------------------ the runner's per-rollout copies

    def clone_with_isolated_history(self, *, seed: int | None = None) -> ExternalModel:
        """A copy with its own call records and clients."""
        new = copy.copy(self)
        new.calls = []
        new.history = []
        new.openai_client = None
        new.openai_async_client = None
        new.sampling_error = None
        return new

    def with_settings(self, **changes: Any) -> ExternalModel:
        """A copy with some settings changed (greedy decoding for evaluation)."""
        new = self.clone_with_isolated_history()
        new.settings = replace(self.settings, **changes)
        return new

    def close(self) -> None:
        """Close this copy's clients."""
        if self.openai_client is not None:
            self.openai_client.close()
