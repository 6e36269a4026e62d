"""Which store an experience buffer's settings name: Trinity's storage types and default paths.

    sql    path is a SQLAlchemy URL; none: sqlite:///<job dir>/buffer/<name>.db (Trinity's default)
    queue  between two processes the queue needs a place both see: its path, a SQLAlchemy URL or a
           .jsonl file; none: <job dir>/buffer/<name>.jsonl, the file Trinity's queue also writes
    file   a .jsonl file; none: <job dir>/buffer/<name>.jsonl
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from rft_runtime.buffers.errors import StorageError
from rft_runtime.buffers.jsonl import JsonlStore
from rft_runtime.buffers.sql import SqlStore, is_database_url

WHERE = "buffer.trainer_input.experience_buffer"


class ExperienceStore(Protocol):
    """What the explorer writes to and the trainer reads from when they are two jobs."""

    def describe(self) -> str: ...
    def register_writer(self) -> Any: ...
    def finish_writer(self, writer_id: Any) -> None: ...
    def writers_done(self) -> bool: ...
    def write(self, records: list[dict[str, Any]]) -> None: ...
    def take(self, n: int, *, reuse: bool) -> list[dict[str, Any]] | None: ...
    def count(self, *, unread: bool = False) -> int: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def buffer_name(store: Any) -> str:
    """The buffer's name (Trinity's default: experience_buffer)."""
    return getattr(store, "name", "") or "experience_buffer"


def default_path(store: Any, job_dir: Path) -> str:
    """Where Trinity puts a buffer that names no path."""
    name = buffer_name(store)
    if store.storage_type == "sql":
        return f"sqlite:///{(job_dir / 'buffer' / f'{name}.db').absolute()}"
    return str(job_dir / "buffer" / f"{name}.jsonl")


def can_hold(path: str) -> bool:
    """Whether a path names a place experiences can be kept: a SQLAlchemy URL or a .jsonl (.json) file."""
    return is_database_url(path) or str(path).endswith((".jsonl", ".json"))


def open_store(store: Any, job_dir: Path, where: str = WHERE) -> ExperienceStore:
    """The store the experience buffer `store` (an ExperienceBufferConfig) names."""
    path = store.path or default_path(store, job_dir)
    if store.storage_type == "sql":
        if not is_database_url(path):
            raise StorageError(f"{where}.path: storage_type sql needs a SQLAlchemy URL (sqlite:///FILE, "
                               f"postgresql://USER@HOST/DB, ...), got {path!r}")
        return SqlStore(path, buffer_name(store), retries=int(getattr(store, "max_retry_times", 3) or 1),
                        retry_interval=float(getattr(store, "max_retry_interval", 1) or 0), where=where)
    if is_database_url(path):
        if store.storage_type == "file":
            raise StorageError(f"{where}.path: storage_type file needs a .jsonl path, got the URL {path!r}; "
                               "set storage_type: sql for a database")
        return SqlStore(path, buffer_name(store), retries=int(getattr(store, "max_retry_times", 3) or 1),
                        retry_interval=float(getattr(store, "max_retry_interval", 1) or 0), where=where,
                        fifo=True)
    return JsonlStore(Path(path).expanduser(), where=where)
