"""Trinity-RFT's ModelWrapper surface on a tinker SamplingClient: what `self.model` is inside a workflow.

Every call that samples (chat, generate, and the OpenAI-compatible client) returns Experiences holding the
exact token ids the sampler produced and their logprobs, so what trains is what was sampled; with
`enable_history` the wrapper also keeps them for `extract_experience_from_history()`. Prompts over
`max_prompt_tokens` are not sampled: they come back as reward-0 "prompt_truncated" experiences (Trinity's
enable_prompt_truncation behaviour) and are counted, so the loop can say so.

Importing this module is cheap; the tinker SDK is imported on the first call that samples.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
from dataclasses import dataclass, replace
from typing import Any

from rft_runtime.workflows import images
from rft_runtime.workflows.base import WorkflowError
from rft_runtime.workflows.experience import EID, Experience, as_floats, as_ints, make_seq
from rft_runtime.workflows.tool_calls import for_template

log = logging.getLogger(__name__)

DUMMY_RESPONSE = "[This experience is masked out due to overlong prompt]"
# kwargs Trinity's workflows pass that mean nothing to a Tinker sampler (vLLM's LoRA handle, logprob
# counts: the sampler always returns the sampled token's logprob)
_IGNORED_KWARGS = {"logprobs", "lora_request", "return_token_ids", "with_chat_completion",
                   "include_stop_str_in_output", "skip_special_tokens", "top_logprobs"}
_warned: set[str] = set()


@dataclass(frozen=True)
class ModelSettings:
    """How a wrapper samples: defaults for every call, limits, and which Trinity features are on."""

    name: str
    max_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_prompt_tokens: int | None = None
    max_model_len: int | None = None
    enable_thinking: bool | None = None
    enable_history: bool = False
    enable_openai_api: bool = False
    greedy: bool = False
    timeout: float | None = None


@dataclass
class CallRecord:
    """What one sampling call did, for the loop's counters."""

    prompt_tokens: int
    samples: int
    truncated: bool


def text_content(content: Any) -> str:
    """An OpenAI message content (a string, or a list of parts) as the text a chat template takes."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def _plain_messages(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise WorkflowError(f"a chat message must be a dict with a 'role'; got {m!r:.200}")
        msg = dict(m)
        msg["content"] = text_content(m.get("content"))
        out.append(msg)
    return for_template(out)


class ModelWrapper:
    """The policy (or an auxiliary model) as a Trinity workflow sees it, backed by a tinker SamplingClient.

    One wrapper per rollout: the loop hands each workflow run a clone (clone_with_isolated_history), so
    histories, seeds and the loopback OpenAI route are never shared between concurrent rollouts.
    """

    def __init__(self, sampler: Any, tokenizer: Any, settings: ModelSettings, *, chat_template: str | None = None,
                 model_path: str | None = None, model_version: int = -1, seed: int | None = None,
                 server: Any = None):
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.settings = settings
        self.chat_template = chat_template
        self._model_path = model_path or settings.name
        self._model_version = model_version
        self._seeds = itertools.count(seed) if seed is not None else None
        self.server = server
        self.history: list[Experience] = []
        self.calls: list[CallRecord] = []
        self.openai_client: Any = None
        self.openai_async_client: Any = None
        self.route: str | None = None
        # set when the loopback endpoint's sampling failed, so the loop treats it as the server's failure
        self.sampling_error: BaseException | None = None

    # ------------------------------------------------------------ Trinity's properties

    @property
    def enable_history(self) -> bool:
        """Whether sampled experiences are also kept for extract_experience_from_history()."""
        return self.settings.enable_history

    @property
    def model_version(self) -> int:
        """The train step whose weights this sampler serves (0: the base model)."""
        return self._model_version

    @property
    async def model_version_async(self) -> int:
        """model_version, for async workflows."""
        return self._model_version

    @property
    def model_path(self) -> str:
        """The tinker:// path of the sampler weights, or the base model's name."""
        return self._model_path

    @property
    def model_name(self) -> str:
        """The name the OpenAI-compatible endpoint answers to."""
        return self.settings.name

    @property
    def generate_kwargs(self) -> dict[str, Any]:
        """Default sampling arguments, as an OpenAI client call takes them."""
        return {"temperature": self.settings.temperature, "top_p": self.settings.top_p,
                "max_tokens": self.settings.max_tokens}

    @property
    def api_address(self) -> str | None:
        """Base URL (without /v1) of this rollout's loopback OpenAI-compatible route, once it is served."""
        if self.server is None or not self.settings.enable_openai_api:
            return None
        return self.server.address_for(self)

    @property
    def api_key(self) -> str:
        """The key the loopback endpoint expects."""
        return self.server.api_key if self.server is not None else "EMPTY"

    # ------------------------------------------------------------ prompts

    def _template_kwargs(self, tools: list[dict] | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"chat_template": self.chat_template, "tokenize": False}
        if tools:
            kwargs["tools"] = tools
        if self.settings.enable_thinking is not None:
            kwargs["enable_thinking"] = self.settings.enable_thinking
        return kwargs

    def render(self, messages: list[dict], tools: list[dict] | None = None,
               template_kwargs: dict[str, Any] | None = None) -> str:
        """The prompt text: a final assistant message is continued, otherwise the assistant's turn starts.
        `template_kwargs` (a request's chat_template_kwargs, as vLLM takes them) go to the template too."""
        messages = _plain_messages(messages)
        kwargs = {**self._template_kwargs(tools), **(template_kwargs or {})}
        try:
            if messages and messages[-1]["role"] == "assistant":
                return self.tokenizer.apply_chat_template(messages, continue_final_message=True, **kwargs)
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, **kwargs)
        except Exception as exc:  # jinja raises many types; all mean the template cannot take these messages
            raise WorkflowError(f"the chat template could not render the messages: {type(exc).__name__}: "
                                f"{exc}") from exc

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a rendered chat prompt (the template writes any BOS itself)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    async def get_message_token_len(self, messages: list[dict]) -> int:
        """Tokens of the messages as a prompt (with the assistant's turn header), as chat() would send them."""
        return len(self.encode_text(self.render(messages)))

    def decode(self, tokens: list[int]) -> str:
        """Text of sampled tokens, special tokens left out."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # ------------------------------------------------------------ sampling

    def _params(self, kwargs: dict[str, Any], prompt_len: int) -> tuple[Any, int]:
        # the SDK imports torch (~2 s): the validator reads this module (config.support -> workflows.auxiliary),
        # so it is imported by the calls that sample, as are openai's clients (~0.6 s)
        import tinker

        s = self.settings
        extra = sorted(k for k in kwargs if k not in {"n", "temperature", "top_p", "top_k", "max_tokens",
                                                      "max_completion_tokens", "seed", "stop"}
                       and k not in _IGNORED_KWARGS)
        for key in extra:
            if key not in _warned:
                _warned.add(key)
                log.warning("a workflow passed %r to the model; the Tinker sampler has no such setting and "
                            "ignores it", key)
        n = int(kwargs.get("n") or 1)
        max_tokens = kwargs.get("max_tokens") or kwargs.get("max_completion_tokens") or s.max_tokens
        if s.max_model_len is not None:
            max_tokens = min(int(max_tokens), s.max_model_len - prompt_len)
        temperature = kwargs.get("temperature")
        top_p = kwargs.get("top_p")
        top_k = kwargs.get("top_k")
        seed = kwargs.get("seed")
        if seed is None and self._seeds is not None:
            seed = next(self._seeds)
        params = dict(
            max_tokens=int(max_tokens),
            temperature=s.temperature if temperature is None else float(temperature),
            top_p=s.top_p if top_p is None else float(top_p),
            top_k=s.top_k if top_k is None else int(top_k),
            seed=seed,
        )
        if kwargs.get("stop") is not None:
            params["stop"] = kwargs["stop"]
        if s.greedy:
            params.update(temperature=0.0, top_k=-1, top_p=1.0)
        return tinker.SamplingParams(**params), n

    def _too_long(self, prompt_ids: list[int]) -> bool:
        s = self.settings
        if s.max_prompt_tokens is not None and len(prompt_ids) > s.max_prompt_tokens:
            return True
        return s.max_model_len is not None and len(prompt_ids) >= s.max_model_len

    def _dummies(self, prompt_ids: list[int], n: int) -> list[Experience]:
        """Trinity's placeholder for a prompt that was not sampled: masked out, reward 0."""
        limit = min(len(prompt_ids) - 1, self.settings.max_prompt_tokens or len(prompt_ids) - 1)
        limit = max(limit, 1)
        tokens = prompt_ids[:limit + 1]
        return [Experience(tokens=tokens, logprobs=[0.0], prompt_length=limit,
                           prompt_text=self.tokenizer.decode(tokens[:-1]), response_text=DUMMY_RESPONSE,
                           truncate_status="prompt_truncated", reward=0.0,
                           info={"prompt_tokens": len(prompt_ids)})
                for _ in range(n)]

    def _experiences(self, prompt_ids: list[int], response: Any, messages: list[dict] | None,
                     tools: list[dict] | None, chunks: list[Any] | None = None) -> list[Experience]:
        prompt_text = self.tokenizer.decode(prompt_ids)
        unsized_why = None
        if chunks:
            if images.unsized(chunks):
                # sampling needs no count, training does: the runner fails the experience with this reason
                unsized_why = images.processor_problem(self.processor_model) or "its processor gave no count"
        out = []
        for seq in response.sequences:
            tokens = list(seq.tokens)
            logprobs = [0.0 if x is None else float(x) for x in (seq.logprobs or [0.0] * len(tokens))]
            exp = Experience(
                tokens=prompt_ids + tokens, logprobs=logprobs, prompt_length=len(prompt_ids),
                prompt_text=prompt_text, response_text=self.decode(tokens),
                # an empty reply has nothing to train: an empty mask says so without failing
                action_mask=None if tokens else [], messages=messages, tools=tools,
                info={"stop_reason": str(getattr(seq, "stop_reason", "") or "")},
            )
            exp.info["model_version"] = self._model_version
            if chunks:
                # the prompt with its images, for the trainer's datum (prompt_ids hold the image tokens' places)
                exp.info["prompt_chunks"] = chunks
                if unsized_why is not None:
                    exp.info["image_count_problem"] = unsized_why
            out.append(exp)
        return out

    def _record(self, exps: list[Experience]) -> list[Experience]:
        if self.settings.enable_history:
            self.history.extend(exps)
        return exps

    @staticmethod
    def _model_input(prompt_ids: list[int], chunks: list[Any] | None) -> Any:
        import tinker  # heavy: see _params

        return tinker.ModelInput(chunks=chunks) if chunks else tinker.ModelInput.from_ints(prompt_ids)

    def sample_ids(self, prompt_ids: list[int], messages: list[dict] | None = None, tools: list[dict] | None = None,
                   chunks: list[Any] | None = None, **kwargs: Any) -> list[Experience]:
        """Sample from token ids (the core of chat and generate); `chunks`: the same prompt with its images."""
        params, n = self._params(kwargs, len(prompt_ids))
        if self._too_long(prompt_ids):
            self.calls.append(CallRecord(len(prompt_ids), n, True))
            return self._dummies(prompt_ids, n)
        self.calls.append(CallRecord(len(prompt_ids), n, False))
        fut = self.sampler.sample(prompt=self._model_input(prompt_ids, chunks), num_samples=n, sampling_params=params)
        return self._experiences(prompt_ids, fut.result(timeout=self.settings.timeout), messages, tools, chunks)

    async def sample_ids_async(self, prompt_ids: list[int], messages: list[dict] | None = None,
                               tools: list[dict] | None = None, chunks: list[Any] | None = None,
                               **kwargs: Any) -> list[Experience]:
        """sample_ids, awaiting the sampler instead of blocking a thread."""
        params, n = self._params(kwargs, len(prompt_ids))
        if self._too_long(prompt_ids):
            self.calls.append(CallRecord(len(prompt_ids), n, True))
            return self._dummies(prompt_ids, n)
        self.calls.append(CallRecord(len(prompt_ids), n, False))
        response = await self.sampler.sample(prompt=self._model_input(prompt_ids, chunks), num_samples=n,
                                             sampling_params=params)
        return self._experiences(prompt_ids, response, messages, tools, chunks)

    def chat_prompt(self, messages: list[dict], tools: list[dict] | None = None,
                    template_kwargs: dict[str, Any] | None = None) -> tuple[list[int], list[Any] | None]:
        """(token ids, image chunks or None) of a conversation as a prompt; images in message content become
        image chunks (rft_runtime.workflows.images), which a vision-language base model samples from.
        `template_kwargs` (a request's chat_template_kwargs) go to the template, as in render()."""
        if not images.has_images(messages):
            return self.encode_text(self.render(messages, tools, template_kwargs)), None
        kwargs = {**self._template_kwargs(tools), **(template_kwargs or {})}
        return images.chat_prompt(self.tokenizer, messages, kwargs, self.processor_model)

    @property
    def processor_model(self) -> str:
        """The model whose processor sizes images: the base model, also once the sampler serves trained
        weights (a tinker:// path names no processor)."""
        return self.settings.name if "://" in self._model_path else self._model_path

    def chat(self, messages: list[dict], **kwargs: Any) -> list[Experience]:
        """Sample `n` replies (kwarg, default 1) to a conversation; one Experience per reply."""
        tools = kwargs.pop("tools", None)
        ids, chunks = self.chat_prompt(messages, tools, kwargs.pop("chat_template_kwargs", None))
        return self._record(self.sample_ids(ids, messages=messages, tools=tools, chunks=chunks, **kwargs))

    async def chat_async(self, messages: list[dict], **kwargs: Any) -> list[Experience]:
        """chat, for async workflows."""
        tools = kwargs.pop("tools", None)
        ids, chunks = self.chat_prompt(messages, tools, kwargs.pop("chat_template_kwargs", None))
        return self._record(await self.sample_ids_async(ids, messages=messages, tools=tools, chunks=chunks,
                                                        **kwargs))

    def _prompt_ids(self, prompt: str) -> list[int]:
        # raw prompts are tokenized as Trinity does (the tokenizer's own special-token rule)
        return list(self.tokenizer.encode(prompt))

    def generate(self, prompts: list[str], **kwargs: Any) -> list[Experience]:
        """Continue raw text prompts (no chat template); n replies each, in prompt order."""
        if isinstance(prompts, str):
            prompts = [prompts]
        out: list[Experience] = []
        for prompt in prompts:
            out.extend(self.sample_ids(self._prompt_ids(prompt), **kwargs))
        return self._record(out)

    async def generate_async(self, prompts: list[str], **kwargs: Any) -> list[Experience]:
        """generate, for async workflows (the prompts are sampled concurrently)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        results = await asyncio.gather(*[self.sample_ids_async(self._prompt_ids(p), **kwargs) for p in prompts])
        return self._record([e for r in results for e in r])

    # ------------------------------------------------------------ scoring existing text

    def logprobs(self, tokens: list[int], temperature: float | None = None) -> Any:
        """Logprob of every token after the first under the current weights (len(tokens) - 1 values).

        The Tinker sampler scores at temperature 1; `temperature` is accepted for Trinity's signature.
        """
        import tinker  # heavy: see _params

        values = self.sampler.compute_logprobs(tinker.ModelInput.from_ints(as_ints(tokens))).result(
            timeout=self.settings.timeout)
        return make_seq([0.0 if v is None else v for v in values[1:]], "float")

    async def logprobs_async(self, tokens: list[int], temperature: float | None = None) -> Any:
        """logprobs, for async workflows."""
        import tinker  # heavy: see _params

        values = await self.sampler.compute_logprobs(tinker.ModelInput.from_ints(as_ints(tokens)))
        return make_seq([0.0 if v is None else v for v in values[1:]], "float")

    def assistant_mask(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
        """Token ids of a whole conversation and a 0/1 mask of the assistant's tokens in it.

        Each assistant turn's tokens are those between the conversation rendered up to it with the
        assistant header added and rendered through it (Trinity's default method). It relies on earlier
        turns rendering to the same tokens as the conversation grows; a template that rewrites history
        (Qwen3's drops earlier <think> blocks) only masks the turns after the last user message.
        """
        messages = _plain_messages(messages)
        kwargs = self._template_kwargs(tools)
        try:
            full = self.encode_text(self.tokenizer.apply_chat_template(messages, add_generation_prompt=False,
                                                                       **kwargs))
            start = 0
            template = self.chat_template or getattr(self.tokenizer, "chat_template", None) or ""
            if "<think>" in template:
                users = [i for i, m in enumerate(messages) if m["role"] == "user"]
                start = users[-1] if users else 0
            mask = [0] * len(full)
            turns = [i for i in range(start, len(messages)) if messages[i]["role"] == "assistant"]
            for i in turns:
                before = self.encode_text(self.tokenizer.apply_chat_template(
                    messages[:i], add_generation_prompt=True, **kwargs)) if i else []
                through = self.encode_text(self.tokenizer.apply_chat_template(
                    messages[:i + 1], add_generation_prompt=False, **kwargs))
                if full[:len(through)] != through or through[:len(before)] != before:
                    raise WorkflowError(
                        f"the chat template renders assistant turn {i} differently once later turns follow, "
                        "so its tokens cannot be located in the conversation; use a template that keeps earlier "
                        "turns unchanged (model.custom_chat_template), or build the Experience yourself")
                for k in range(len(before), len(through)):
                    mask[k] = 1
        except WorkflowError:
            raise
        except Exception as exc:
            raise WorkflowError(f"the chat template could not render the conversation: {type(exc).__name__}: "
                                f"{exc}") from exc
        if not turns:
            raise WorkflowError("convert_messages_to_experience needs at least one assistant message to train on")
        return full, mask

    def _converted(self, messages: list[dict], tools: list[dict] | None) -> tuple[Experience | None, list[int],
                                                                                  list[int], int, str | None]:
        tokens, mask = self.assistant_mask(messages, tools)
        prompt_length = mask.index(1)
        s = self.settings
        if s.max_prompt_tokens is not None and prompt_length > s.max_prompt_tokens:
            self.calls.append(CallRecord(prompt_length, 1, True))
            limit = s.max_prompt_tokens
            dummy = Experience(tokens=tokens[:limit + 1], logprobs=[0.0], prompt_length=limit, action_mask=[False],
                               messages=messages, truncate_status="prompt_truncated",
                               info={"prompt_tokens": prompt_length})
            return dummy, tokens, mask, prompt_length, None
        status = None
        if s.max_model_len is not None and len(tokens) > s.max_model_len - 1:
            status = "response_truncated"
            tokens, mask = tokens[:s.max_model_len - 1], mask[:s.max_model_len - 1]
        return None, tokens, mask, prompt_length, status

    def convert_messages_to_experience(self, messages: list[dict], tools: list[dict] | None = None,
                                       temperature: float | None = None) -> Experience:
        """A whole conversation as one Experience: action_mask 1 on the assistant's tokens, logprobs under
        the current weights; truncated at max_model_len (truncate_status "response_truncated")."""
        dummy, tokens, mask, prompt_length, status = self._converted(messages, tools)
        if dummy is not None:
            return dummy
        logprobs = as_floats(self.logprobs(tokens, temperature))
        return Experience(tokens=tokens, logprobs=logprobs[prompt_length - 1:], prompt_length=prompt_length,
                          action_mask=mask[prompt_length:], messages=messages, tools=tools, truncate_status=status)

    async def convert_messages_to_experience_async(self, messages: list[dict], tools: list[dict] | None = None,
                                                   temperature: float | None = None) -> Experience:
        """convert_messages_to_experience, for async workflows."""
        dummy, tokens, mask, prompt_length, status = self._converted(messages, tools)
        if dummy is not None:
            return dummy
        logprobs = as_floats(await self.logprobs_async(tokens, temperature))
        return Experience(tokens=tokens, logprobs=logprobs[prompt_length - 1:], prompt_length=prompt_length,
                          action_mask=mask[prompt_length:], messages=messages, tools=tools, truncate_status=status)

    # ------------------------------------------------------------ history and OpenAI clients

    def extract_experience_from_history(self, clear_history: bool = True) -> list[Experience]:
        """The experiences sampled so far (chat, generate and the OpenAI clients), oldest first."""
        if not self.settings.enable_history:
            raise WorkflowError("history recording is off: set explorer.rollout_model.enable_history: true to "
                                "use extract_experience_from_history()")
        exps = list(self.history)
        if clear_history:
            self.history.clear()
        return exps

    def _openai_base_url(self) -> str:
        if not self.settings.enable_openai_api:
            raise WorkflowError(f"the OpenAI-compatible API is off for model {self.settings.name!r}: set "
                                "explorer.rollout_model.enable_openai_api: true to use get_openai_client()")
        if self.server is None:
            raise WorkflowError("no OpenAI-compatible endpoint is available to this model wrapper")
        return f"{self.server.address_for(self)}/v1"

    def get_openai_client(self) -> Any:
        """An `openai.OpenAI` client of this rollout's loopback route; its completions are recorded (with
        enable_history) with the exact token ids and logprobs sampled. `client.model_path` names the model."""
        if self.openai_client is None:
            import openai  # heavy: see _params

            self.openai_client = openai.OpenAI(base_url=self._openai_base_url(), api_key=self.api_key,
                                               max_retries=0)
        self.openai_client.model_path = self.settings.name
        return self.openai_client

    def get_openai_async_client(self) -> Any:
        """get_openai_client, as `openai.AsyncOpenAI`."""
        if self.openai_async_client is None:
            import openai  # heavy: see _params

            self.openai_async_client = openai.AsyncOpenAI(base_url=self._openai_base_url(), api_key=self.api_key,
                                                          max_retries=0)
        self.openai_async_client.model_path = self.settings.name
        return self.openai_async_client

    def clone_with_isolated_history(self, *, seed: int | None = None) -> ModelWrapper:
        """A wrapper on the same sampler with its own empty history, OpenAI clients and route."""
        new = copy.copy(self)
        new.history = []
        new.calls = []
        new.openai_client = None
        new.openai_async_client = None
        new.route = None
        new.sampling_error = None
        if seed is not None:
            new._seeds = itertools.count(seed)
        return new

    def with_settings(self, **changes: Any) -> ModelWrapper:
        """A clone with some settings changed (e.g. greedy decoding for evaluation)."""
        new = self.clone_with_isolated_history()
        new.settings = replace(self.settings, **changes)
        return new

    def close(self) -> None:
        """Release this rollout's loopback route and clients."""
        if self.server is not None:
            self.server.release(self)
        for client in (self.openai_client,):
            if client is not None:
                client.close()


__all__ = ["EID", "Experience", "ModelSettings", "ModelWrapper"]
