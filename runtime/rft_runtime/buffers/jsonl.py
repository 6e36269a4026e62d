"""An experience buffer in a JSON-lines file (Trinity's `storage_type: file`, or a queue without a URL path).

The explorer appends one experience per line; a reader in another process follows the file as it grows,
keeping its own byte offset (saved with the trainer's checkpoint), in the order the lines were written.
Writers announce themselves and their end in `<path>.writers` (one JSON line each), so the reader knows
when no more lines are coming. Trinity itself only writes such files; reading them back to train on is
this runtime's addition, so that `file` works for mode explore -> mode train as well.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from rft_runtime.buffers.errors import StorageError


class JsonlStore:
    """A JSON-lines file of experiences and its writers' side file."""

    def __init__(self, path: str | os.PathLike[str], *, where: str = "buffer.trainer_input.experience_buffer"):
        self.path = Path(path)
        self.where = where
        if self.path.suffix not in (".jsonl", ".json"):
            raise StorageError(f"{where}.path: an experience file must end in .jsonl (or .json), as Trinity "
                               f"requires; got {str(self.path)!r}")
        self.writers_path = self.path.with_name(self.path.name + ".writers")
        self._offset = 0
        # (experience, byte offset of its line) read but not yet handed out
        self._pending: deque[tuple[dict[str, Any], int]] = deque()

    def describe(self) -> str:
        """Where the lines are, for logs and messages."""
        return f"file {self.path}"

    # ------------------------------------------------------------ writers

    def _append(self, path: Path, lines: list[str]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                # one write per batch: a reader never sees half of a line it would parse
                fh.write("".join(lines))
                fh.flush()
        except OSError as exc:
            raise StorageError(f"{self.where}.path: cannot write {path}: {exc}") from None

    def register_writer(self) -> str:
        """Announce a writer; returns its id."""
        writer = uuid.uuid4().hex[:12]
        self._append(self.writers_path, [json.dumps({"writer": writer, "event": "start", "time": time.time(),
                                                     "who": f"{socket.gethostname()}:{os.getpid()}"}) + "\n"])
        return writer

    def finish_writer(self, writer_id: str) -> None:
        """The writer will write no more."""
        self._append(self.writers_path, [json.dumps({"writer": writer_id, "event": "finish",
                                                     "time": time.time()}) + "\n"])

    def writers_done(self) -> bool:
        """True when a writer has registered and every registered writer has finished."""
        if not self.writers_path.exists():
            return False
        started, finished = set(), set()
        for line in self.writers_path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written
            (started if event.get("event") == "start" else finished).add(event.get("writer"))
        return bool(started) and started <= finished

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append experiences."""
        if records:
            self._append(self.path, [json.dumps(r) + "\n" for r in records])

    # ------------------------------------------------------------ readers

    def _read_new(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # only whole lines: the writer may be mid-line
        for raw in data[:end].splitlines(keepends=True):
            if raw.strip():
                try:
                    self._pending.append((json.loads(raw), self._offset))
                except ValueError as exc:
                    raise StorageError(f"{self.where}.path: {self.path} has a line that is not JSON at byte "
                                       f"{self._offset}: {exc}") from None
            self._offset += len(raw)

    def take(self, n: int, *, reuse: bool) -> list[dict[str, Any]] | None:
        """The next n experiences in file order, or None when fewer have been written (reuse: see replay)."""
        self._read_new()
        if len(self._pending) < n:
            return None
        return [self._pending.popleft()[0] for _ in range(n)]

    def count(self, *, unread: bool = False) -> int:
        """Experiences read from the file but not handed out (unread=True), or all lines."""
        if unread:
            self._read_new()
            return len(self._pending)
        if not self.path.exists():
            return 0
        with self.path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())

    def state_dict(self) -> dict[str, Any]:
        """Where the reader is: the byte offset of the first line not handed out."""
        return {"offset": self._pending[0][1] if self._pending else self._offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue reading at the saved offset."""
        self._offset = int(state.get("offset", 0))
        self._pending.clear()

    def close(self) -> None:
        """Nothing held open between calls."""
