"""The data layer's error type."""

from __future__ import annotations


class DataError(ValueError):
    """A taskset that cannot be read or used; the message names the file, the row and the key."""

    def __init__(self, message: str, *, path: str | None = None, row_index: int | None = None,
                 key: str | None = None):
        self.path = path
        self.row_index = row_index
        self.key = key
        super().__init__(message)
