"""The buffers' one error type."""

from __future__ import annotations


class StorageError(RuntimeError):
    """An experience buffer cannot be opened, written or read; the message names the setting and the fix."""
