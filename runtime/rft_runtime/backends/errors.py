"""The backend layer's one error type."""

from __future__ import annotations


class BackendError(RuntimeError):
    """The training backend cannot be reached or used; the message says what was tried and what to do."""
