"""Backends: how the runtime reaches the machine that trains (the Tinker API, local engine or service)."""

from rft_runtime.backends.errors import BackendError

__all__ = ["BackendError"]
