"""Keeping the Tinker API key (and anything like it) out of printed and stored configs."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# The seed names TRINITY_API_KEY; the tinker SDK reads TINKER_API_KEY. Both are accepted, the seed's first.
API_KEY_VARS = ("TRINITY_API_KEY", "TINKER_API_KEY")
REDACTED = "***"
# A key names a secret when its last word is one: `api_key`, `wandb_api_key`, `hf_token`, `password`; never
# because a word merely contains one (`max_prompt_tokens`, `api_key_env` holds a variable's name).
_SECRET_KEY = re.compile(
    r"(^|[_-])(api[_-]?key|apikey|token|access[_-]?token|auth[_-]?token|secret|client[_-]?secret|password|"
    r"passwd|credentials?|private[_-]?key)$",
    re.IGNORECASE,
)
# Values that are placeholders, not secrets (vLLM's OpenAI server takes api_key "EMPTY")
_PLACEHOLDERS = {"", "EMPTY", "none", "null"}
# The shapes of common API keys, wherever they appear in a string
_SECRET_VALUE = re.compile(
    r"\b(sk-[A-Za-z0-9_-]{16,}|tml-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,})"
)


def tinker_api_key() -> str | None:
    """The Tinker API key from TRINITY_API_KEY or TINKER_API_KEY (None when neither is set)."""
    for var in API_KEY_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


def _secret_values() -> list[str]:
    return [v for v in (os.environ.get(var, "").strip() for var in API_KEY_VARS) if len(v) >= 4]


def _redact_url(text: str) -> str:
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if parts.scheme and parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        netloc = f"{parts.username or ''}:{REDACTED}@{host}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return text


def redact_text(text: str) -> str:
    """Replace any API key value from the environment, and URL passwords, in a string."""
    for secret in _secret_values():
        text = text.replace(secret, REDACTED)
    text = _SECRET_VALUE.sub(REDACTED, text)
    return _redact_url(text)


def redact(obj: Any) -> Any:
    """A copy of plain data with secret-named keys, API-key-shaped values and URL passwords replaced by ***."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if (isinstance(key, str) and _SECRET_KEY.search(key) and value not in (None, {}, [])
                    and not (isinstance(value, str) and value in _PLACEHOLDERS)):
                out[key] = REDACTED
            else:
                out[key] = redact(value)
        return out
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
