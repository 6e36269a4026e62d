"""Turning chat messages into the token ids the sampler and trainer see."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rft_runtime.config.models import JobConfig, ModelConfig
from rft_runtime.loop.errors import RunError
from rft_runtime.workflows import images
from rft_runtime.workflows.base import WorkflowError


class PromptEncoder:
    """Applies the job's chat template (custom_chat_template, chat_template_path, or the tokenizer's) with
    the arguments Trinity passes it: add_generation_prompt, enable_thinking when it is set, and an SFT row's
    tools."""

    def __init__(self, tokenizer: Any, model_cfg: ModelConfig, *, chat_template: str | None = None,
                 enable_thinking: bool | None = None,
                 chat_template_from: str = "explorer.rollout_model.chat_template"):
        self.tokenizer = tokenizer
        template = chat_template or model_cfg.custom_chat_template
        if not template and model_cfg.chat_template_path:
            template = Path(model_cfg.chat_template_path).expanduser().read_text()
        # passed per call rather than set on the tokenizer, which stages with other templates share
        self.template = template or None
        self.source = (chat_template_from if chat_template
                       else "model.custom_chat_template" if model_cfg.custom_chat_template
                       else "model.chat_template_path" if template else "the tokenizer's chat template")
        self.enable_thinking = model_cfg.enable_thinking if enable_thinking is None else enable_thinking
        # with enable_prompt_truncation false no prompt is cut at max_prompt_tokens (only the context bounds it)
        self.max_prompt_tokens = (model_cfg.max_prompt_tokens
                                  if getattr(model_cfg, "enable_prompt_truncation", True) is not False else None)
        # whose processor sizes a training row's images: the base model, as for the explorer's rollouts
        self.processor_model = model_cfg.model_path or model_cfg.tinker_base_model or ""
        # a template that cannot render should stop the job now, not after the first batch was drawn
        self.prompt_ids([{"role": "system", "content": "check"}, {"role": "user", "content": "check"}])
        eos = tokenizer.eos_token_id
        self.eos_id: int | None = eos[0] if isinstance(eos, list) else eos

    @classmethod
    def for_stage(cls, tokenizer: Any, cfg: JobConfig) -> PromptEncoder:
        """The encoder of a stage, with Trinity's precedence: rollouts take explorer.rollout_model's template
        and enable_thinking over the model's; an SFT or DPO dataset takes its format.chat_template over the
        model's, an SFT dataset its format.enable_thinking, and a DPO dataset none (Trinity's DPO formatter
        does not pass it)."""
        if cfg.mode == "train":
            return cls.for_dataset(tokenizer, cfg, cfg.buffer.trainer_input.experience_buffer,
                                   "buffer.trainer_input.experience_buffer")
        rm = cfg.explorer.rollout_model
        return cls(tokenizer, cfg.model, chat_template=rm.chat_template, enable_thinking=rm.enable_thinking)

    @classmethod
    def for_dataset(cls, tokenizer: Any, cfg: JobConfig, store: Any, where: str) -> PromptEncoder:
        """The encoder of a training dataset's rows (SFT, DPO, mix's expert data), as Trinity's formatters
        render them: the dataset's format.chat_template, else the model's; its format.enable_thinking, else
        the model's (none for DPO)."""
        fmt = store.format
        template = getattr(fmt, "chat_template", None)
        if cfg.algorithm.algorithm_type == "dpo":
            return cls(tokenizer, cfg.model.model_copy(update={"enable_thinking": None}), chat_template=template,
                       chat_template_from=f"{where}.format.chat_template")
        return cls(tokenizer, cfg.model, chat_template=template, enable_thinking=fmt.enable_thinking,
                   chat_template_from=f"{where}.format.chat_template")

    def template_kwargs(self, tools: list[Any] | None = None) -> dict[str, Any]:
        """The arguments every prompt is rendered with besides the messages (and an SFT row's tools)."""
        kwargs: dict[str, Any] = {"chat_template": self.template}
        if self.enable_thinking is not None:
            kwargs["enable_thinking"] = self.enable_thinking
        if tools:
            kwargs["tools"] = tools
        return kwargs

    def _render(self, messages: list[dict[str, Any]], tools: list[Any] | None, **more: Any) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, **self.template_kwargs(tools), **more)
        except Exception as exc:  # jinja errors come in many types; all mean the same to the user
            raise RunError(f"{self.source} could not render the prompt: {type(exc).__name__}: {exc}") from exc

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> list[int]:
        """Token ids of the messages followed by the assistant's turn header."""
        text = self._render(messages, tools, add_generation_prompt=True)
        # the template writes BOS itself when the model wants one; encoding must not add a second
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def reply_ids(self, messages: list[dict[str, Any]], reply: dict[str, Any],
                  tools: list[Any] | None = None) -> list[int]:
        """Token ids of a training row's target reply (an assistant message) after `messages`.

        A reply that is text trains on its text and EOS (response_ids). A reply with more than text (tool
        calls, a reasoning_content) has no text form of its own: it trains on what the chat template writes
        for it after the prompt, markup and end of turn included, as Trinity's SFT formatter does."""
        extra = sorted(k for k, v in reply.items() if k not in ("role", "content") and v not in (None, "", [], {}))
        if not extra:
            return self.response_ids(images.text_of(reply.get("content")))
        shown = images.template_messages if images.has_images(messages) else list
        prompt = self._render(shown(messages), tools, add_generation_prompt=True)
        full = self._render(shown([*messages, reply]), tools, add_generation_prompt=False)
        if not full.startswith(prompt):
            raise RunError(f"{self.source} renders a conversation so that it does not begin with its prompt, so "
                           f"the tokens of its last reply (which has {', '.join(extra)}) cannot be told apart")
        return list(self.tokenizer.encode(full[len(prompt):], add_special_tokens=False))

    def every_turn(self, messages: list[dict[str, Any]], tools: list[Any] | None = None,
                   ) -> tuple[list[int], list[int], list[int]]:
        """(prompt ids, response ids, mask) of a conversation trained on each of its assistant turns
        (format.enable_concatenated_multi_turn), as Trinity's default action mask makes them: every assistant
        turn's tokens as the chat template renders them are trained, the turns between them are not; with a
        template that thinks (`<think>`), only the turns after the last user message. The text is encoded
        turn by turn, so the mask lines up with the turns whatever the tokenizer merges."""
        if images.has_images(messages):
            raise RunError("format.enable_concatenated_multi_turn takes text conversations: a row with image parts "
                           "cannot be trained on every turn here; unset it for image rows")
        template = self.template or getattr(self.tokenizer, "chat_template", None) or ""
        start = 0
        if "<think>" in template:
            start = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=0)
        turns = [i for i in range(start, len(messages)) if messages[i].get("role") == "assistant"]
        if not turns or turns[0] == 0:
            raise RunError("format.enable_concatenated_multi_turn: a conversation must have an assistant turn after "
                           f"a first message of another role; roles: {[m.get('role') for m in messages]}")
        full = self._render(messages, tools, add_generation_prompt=False)
        ids: list[int] = []
        mask: list[int] = []
        pos = 0
        for i in turns:
            begin = self._render(messages[:i], tools, add_generation_prompt=True)
            end = self._render(messages[:i + 1], tools, add_generation_prompt=False)
            if not (end.startswith(begin) and full.startswith(end) and len(begin) >= pos):
                raise RunError(f"{self.source} renders a conversation so that a turn does not begin with what "
                               "came before it, so its assistant turns cannot be told apart "
                               "(format.enable_concatenated_multi_turn)")
            for text, trained in ((full[pos:len(begin)], 0), (full[len(begin):len(end)], 1)):
                piece = list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []
                ids += piece
                mask += [trained] * len(piece)
            pos = len(end)
        first = mask.index(1)
        return ids[:first], ids[first:], mask[first:]

    def prompt_input(self, messages: list[dict[str, Any]], where: str,
                     tools: list[Any] | None = None) -> tuple[list[int], list[Any] | None]:
        """(token ids, tinker chunks or None) of a training row's messages (and tools) followed by the
        assistant's turn header. Image parts become image chunks where the chat template puts the image token,
        each sized by the model's processor (rft_runtime.workflows.images, as a rollout's prompt), so the loss
        lines up; `where` names the dataset in errors."""
        if not images.has_images(messages):
            return self.prompt_ids(messages, tools), None
        try:
            ids, chunks = images.chat_prompt(self.tokenizer, messages, self.template_kwargs(tools),
                                             self.processor_model)
        except WorkflowError as exc:
            raise RunError(f"{where}: a row's images: {exc}") from exc
        if images.unsized(chunks):
            why = images.processor_problem(self.processor_model) or "its processor gave no count"
            raise RunError(f"{where}: a row's image has no token count, so its loss cannot be lined up with the "
                           f"prompt: {why}. The processor of model.model_path must load here (a local directory "
                           "holding the model's processor files, or the Hugging Face cache)")
        return ids, chunks

    def too_long(self, ids: list[int]) -> bool:
        """True when the prompt exceeds model.max_prompt_tokens (the reference scores these 0, unsampled)."""
        return self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens

    def response_ids(self, text: str) -> list[int]:
        """Token ids of a target response, ending with EOS so the model learns to stop."""
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode(self, tokens: list[int]) -> str:
        """Text of sampled tokens without special tokens."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
