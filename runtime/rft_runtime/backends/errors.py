"""The backend layer's one error type."""

from __future__ import annotations

import sys


class BackendError(RuntimeError):
    """The training backend cannot be reached or used; the message says what was tried and what to do."""


def refused(exc: BaseException) -> bool:
    """True for answers no retry can change: the request itself is wrong (400/422) or not allowed (401/403)."""
    # an SDK error exists only once the SDK was imported; importing it here would import torch for nothing
    tinker = sys.modules.get("tinker")
    return tinker is not None and isinstance(exc, (tinker.BadRequestError, tinker.UnprocessableEntityError, tinker.AuthenticationError,
                            tinker.PermissionDeniedError))


def refusal_error(what: str, exc: BaseException) -> BackendError:
    """The job-ending error for a refused request, with a hint where one helps."""
    hint = ""
    text = str(exc)
    if "context" in text or "max_tokens" in text:
        hint = (" Lower model.max_prompt_tokens / model.max_response_tokens so that prompt + response fit the "
                "model's context.")
    elif "401" in text or "403" in text or "key" in text.lower():
        hint = " Check the API key in TRINITY_API_KEY or TINKER_API_KEY."
    return BackendError(f"{what} was refused by the server: {type(exc).__name__}: {exc}.{hint}")
