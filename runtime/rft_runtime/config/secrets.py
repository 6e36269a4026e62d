"""Keeping the Tinker API key (and anything like it) out of printed and stored configs."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# The seed names TRINITY_API_KEY; the tinker SDK reads TINKER_API_KEY. Both are accepted, the seed's first.
API_KEY_VARS = ("TRINITY_API_KEY", "TINKER_API_KEY")
REDACTED = "***"
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)


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
    return _redact_url(text)


def redact(obj: Any) -> Any:
    """A copy of plain data with secret-named keys, key values and URL passwords replaced by ***."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if isinstance(key, str) and _SECRET_KEY.search(key) and value not in (None, "", {}, []):
                out[key] = REDACTED
            else:
                out[key] = redact(value)
        return out
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
