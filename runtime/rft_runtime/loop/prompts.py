"""Turning chat messages into the token ids the sampler and trainer see."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rft_runtime.config.models import ModelConfig
from rft_runtime.loop.errors import RunError


class PromptEncoder:
    """Applies the job's chat template (custom_chat_template, chat_template_path, or the tokenizer's)."""

    def __init__(self, tokenizer: Any, model_cfg: ModelConfig):
        self.tokenizer = tokenizer
        template = model_cfg.custom_chat_template
        if not template and model_cfg.chat_template_path:
            template = Path(model_cfg.chat_template_path).expanduser().read_text()
        # passed per call rather than set on the tokenizer, which stages with other templates share
        self.template = template or None
        self.source = ("model.custom_chat_template" if model_cfg.custom_chat_template
                       else "model.chat_template_path" if template else "the tokenizer's chat template")
        self.max_prompt_tokens = model_cfg.max_prompt_tokens
        # a template that cannot render should stop the job now, not after the first batch was drawn
        self.prompt_ids([{"role": "system", "content": "check"}, {"role": "user", "content": "check"}])
        eos = tokenizer.eos_token_id
        self.eos_id: int | None = eos[0] if isinstance(eos, list) else eos

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the messages followed by the assistant's turn header."""
        try:
            text = self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as exc:  # jinja errors come in many types; all mean the same to the user
            raise RunError(f"{self.source} could not render the prompt: {type(exc).__name__}: {exc}") from exc
        # the template writes BOS itself when the model wants one; encoding must not add a second
        return list(self.tokenizer.encode(text, add_special_tokens=False))

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
