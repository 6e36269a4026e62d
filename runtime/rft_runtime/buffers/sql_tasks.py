"""A taskset in a SQL database: Trinity's SQL task storage (a taskset's `storage_type: sql`).

Trinity keeps a taskset named NAME in the table NAME of the database its `path` (a SQLAlchemy URL) names: an
autoincrement `id` and `raw_task`, the task's row as JSON. Its explorer reads the rows in `id` order, a batch at
a time, and stops when fewer than a batch are left; an eval taskset is read whole. This module reads that same
table, so tasks a Trinity job (or any program) wrote there train here, on SQLite, PostgreSQL or any database
SQLAlchemy reaches. `write` appends rows in the same layout (Trinity's SQLTaskStorage.write).
"""

from __future__ import annotations

import json
from typing import Any

from rft_runtime.buffers.errors import StorageError
from rft_runtime.buffers.sql import _redact, open_engine, retrying


class SqlTaskTable:
    """The table `name` (id, raw_task) of the database at `url`."""

    def __init__(self, url: str, name: str, *, where: str = "buffer.explorer_input.taskset", retries: int = 3,
                 retry_interval: float = 1.0):
        if not name:
            raise StorageError(f"{where}.name: a SQL taskset is the table of that name; set it")
        self.sa, self.engine = open_engine(url, where)
        sa = self.sa
        self.shown = _redact(url)
        self.where = where
        self.retries = max(1, int(retries))
        self.retry_interval = float(retry_interval)
        self.table = sa.Table(name, sa.MetaData(),
                              sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                              sa.Column("raw_task", sa.JSON, nullable=False))

    def describe(self) -> str:
        """Where the tasks are, for logs and messages."""
        return f"table {self.table.name} in {self.shown}"

    def _run(self, what: str, action: Any) -> Any:
        return retrying(self.sa, self.engine, self.shown, self.retries, self.retry_interval, what, action)

    def exists(self) -> bool:
        """Whether the table is there."""
        return bool(self._run("looking for the taskset table",
                              lambda conn: self.sa.inspect(conn).has_table(self.table.name)))

    def _check(self) -> None:
        if not self.exists():
            raise StorageError(
                f"{self.where}: there is no table {self.table.name!r} in {self.shown}. A SQL taskset is the table "
                f"named by {self.where}.name, with Trinity's columns id (integer, autoincrement) and raw_task (each "
                "task's row as JSON); write the tasks there first, or point name and path at the table that holds "
                "them")

    def count(self, after: int = 0) -> int:
        """Rows whose id is above `after`."""
        self._check()
        sa, t = self.sa, self.table
        query = sa.select(sa.func.count()).select_from(t).where(t.c.id > after)
        return int(self._run("counting tasks", lambda conn: conn.execute(query).scalar()))

    def read(self, after: int = 0, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        """(id, row) of the rows whose id is above `after`, in id order (at most `limit`)."""
        self._check()
        sa, t = self.sa, self.table
        query = sa.select(t.c.id, t.c.raw_task).where(t.c.id > after).order_by(t.c.id.asc())
        if limit is not None:
            query = query.limit(limit)
        found = self._run("reading tasks", lambda conn: conn.execute(query).all())
        out = []
        for row_id, raw in found:
            # a column created as text (not JSON) by other code comes back as the JSON string
            value = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
            if not isinstance(value, dict):
                raise StorageError(f"{self.describe()}: the task with id {row_id} is {type(value).__name__}, not a "
                                   "row of named columns (raw_task holds one JSON object per task)")
            out.append((int(row_id), value))
        return out

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append tasks (the table is created if it is not there), as Trinity's SQL task storage writes them."""
        self._run("creating the taskset table", lambda conn: self.table.metadata.create_all(conn, checkfirst=True))
        if rows:
            self._run(f"writing {len(rows)} tasks",
                      lambda conn: conn.execute(self.table.insert(), [{"raw_task": dict(r)} for r in rows]))

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()
