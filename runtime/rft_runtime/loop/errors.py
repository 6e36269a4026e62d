"""The loop's one error type."""

from __future__ import annotations


class RunError(RuntimeError):
    """The job cannot go on (a side stalled past sync_timeout, no data, ...); the message says why."""
