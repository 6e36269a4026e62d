"""The engine's one error type: a request it refuses, with the HTTP status the server answers."""

from __future__ import annotations


class EngineError(Exception):
    """A request the engine refuses; `status` is the HTTP status the server answers with."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
