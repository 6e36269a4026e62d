"""An experience buffer in a SQL database (Trinity's `storage_type: sql`, or a queue whose path is a URL).

Any SQLAlchemy URL works: `sqlite:///buffer.db` with Python's own sqlite3, `postgresql://` with psycopg
(v3; both come with `pip install 'rft-platform[runtime]'`), others with the driver their URL names. One
job writes (mode explore, or a mode-both job's queue that names a path, as a record), another reads (mode
train) at the same time from another process, as Trinity's SQL storage does:

- every experience is a row; the trainer takes a batch of unread rows, newest first (Trinity orders by
  `consumed, id desc`; a queue whose path is a URL hands them out in order), and counts each read in
  `consumed`. With the replay buffer on, rows may be read
  again, the least read first; once every writer has finished, only unread rows are handed out.
- writers register in a second table and mark themselves finished, so a reader knows when no more rows are
  coming (Trinity learns this from its Ray actor's reference count).

Tables: `rft_<name>` (the rows; `record` holds the experience as JSON) and `rft_<name>_writers`. They are
this runtime's own, beside any table Trinity wrote under `<name>`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from rft_runtime.buffers.errors import StorageError

log = logging.getLogger(__name__)


def is_database_url(path: str | None) -> bool:
    """True for a SQLAlchemy URL (`dialect[+driver]://...`), False for a file path."""
    if not path or "://" not in path:
        return False
    scheme = path.split("://", 1)[0]
    return bool(scheme) and all(part.isidentifier() for part in scheme.split("+"))


def _redact(url: str) -> str:
    try:
        # SQLAlchemy takes ~0.25 s to import, and the validator reads this package: only a database buffer needs it
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL SQLAlchemy cannot parse is shown as the user wrote it, minus any password
        head, _, tail = url.partition("@")
        return f"{head.split(':')[0]}:***@{tail}" if tail else url


def _driver_url(url: str) -> str:
    """postgresql:// names psycopg2 by default; with only psycopg (v3) installed, use that."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg2") is None:
            return f"postgresql+psycopg://{rest}"
        return f"postgresql://{rest}"
    return url


def open_engine(url: str, where: str) -> tuple[Any, Any]:
    """(the sqlalchemy module, an engine) for a database URL; a StorageError naming `where`.path says what is
    missing (SQLAlchemy, the driver) or wrong with the URL. SQLite files get their folder, WAL and a lock wait."""
    try:
        import sqlalchemy as sa  # heavy, and in the runtime extra only: see _redact
    except ImportError:
        raise StorageError(
            f"{where}.path is a database URL ({_redact(url)}), which needs SQLAlchemy: "
            "pip install 'rft-platform[runtime]' (SQLAlchemy, and psycopg for PostgreSQL)") from None
    shown = _redact(url)
    if url.startswith("sqlite:///"):
        target = url[len("sqlite:///"):]
        if target and target != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(target)) or ".", exist_ok=True)
    try:
        engine = sa.create_engine(_driver_url(url), pool_pre_ping=True,
                                  **({"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}))
    except ImportError as exc:
        raise StorageError(f"{where}.path {shown}: the database driver is not installed ({exc}); for "
                           "PostgreSQL: pip install 'rft-platform[runtime]' (psycopg)") from None
    except Exception as exc:
        raise StorageError(f"{where}.path {shown} is not a usable database URL: {exc}") from None
    if engine.dialect.name == "sqlite":
        # a writer and a reader in two processes: readers never wait for the writer (WAL), and a
        # locked database is waited for instead of failing at once
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return sa, engine


def retrying(sa: Any, engine: Any, shown: str, retries: int, interval: float, what: str,
             action: Callable[[Any], Any]) -> Any:
    """`action(connection)` in one transaction, tried `retries` times while the database is unavailable
    (max_retry_times, max_retry_interval); a StorageError saying what failed where otherwise."""
    for attempt in range(1, retries + 1):
        try:
            with engine.begin() as conn:
                return action(conn)
        except sa.exc.OperationalError as exc:
            if attempt == retries:
                raise StorageError(f"{what} in {shown} failed {attempt} times (max_retry_times "
                                   f"{retries}): {exc.orig or exc}") from None
            log.warning("%s in %s failed (%s); retrying in %.1fs", what, shown, exc.orig or exc, interval)
            time.sleep(interval)
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"{what} in {shown} failed: {exc}") from None
    raise AssertionError("unreachable")


class SqlStore:
    """The rows and writers tables of one buffer name in one database."""

    def __init__(self, url: str, name: str, *, retries: int = 3, retry_interval: float = 1.0,
                 where: str = "buffer.trainer_input.experience_buffer", fifo: bool = False):
        sa, self.engine = open_engine(url, where)
        self.sa = sa
        self.url = url
        self.shown = _redact(url)
        self.where = where
        # a queue hands rows out in the order they came (Trinity's queue keeps its database as a record
        # only); sql storage, newest first
        self.fifo = fifo
        self.retries = max(1, int(retries))
        self.retry_interval = float(retry_interval)
        meta = sa.MetaData()
        self.rows = sa.Table(
            f"rft_{name}", meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("task_id", sa.String(128)),
            sa.Column("run_id", sa.Integer),
            sa.Column("model_version", sa.Integer, index=True),
            sa.Column("reward", sa.Float),
            sa.Column("consumed", sa.Integer, nullable=False, default=0, index=True),
            sa.Column("record", sa.Text, nullable=False),
        )
        self.writers = sa.Table(
            f"rft_{name}_writers", meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("who", sa.String(256)),
            sa.Column("started_at", sa.Float, nullable=False),
            sa.Column("finished_at", sa.Float),
        )
        self._retry("creating the buffer tables", lambda conn: meta.create_all(conn, checkfirst=True))

    def describe(self) -> str:
        """Where the rows are, for logs and messages."""
        return f"table {self.rows.name} in {self.shown}"

    # ------------------------------------------------------------ plumbing

    def _retry(self, what: str, action: Callable[[Any], Any]) -> Any:
        return retrying(self.sa, self.engine, self.shown, self.retries, self.retry_interval, what, action)

    # ------------------------------------------------------------ writers

    def register_writer(self) -> int:
        """Announce a writer; returns its id (finish_writer marks it done)."""
        who = f"{socket.gethostname()}:{os.getpid()}"
        return int(self._retry("registering the explorer", lambda conn: conn.execute(
            self.writers.insert().values(who=who, started_at=time.time())).inserted_primary_key[0]))

    def finish_writer(self, writer_id: int) -> None:
        """The writer will write no more."""
        self._retry("marking the explorer finished", lambda conn: conn.execute(
            self.writers.update().where(self.writers.c.id == writer_id).values(finished_at=time.time())))

    def writers_done(self) -> bool:
        """True when a writer has registered and every registered writer has finished."""
        sa = self.sa
        still_open = sa.case((self.writers.c.finished_at.is_(None), 1), else_=0)
        total, open_ = self._retry("reading the writers table", lambda conn: conn.execute(sa.select(
            sa.func.count(), sa.func.coalesce(sa.func.sum(still_open), 0))).one())
        return total > 0 and open_ == 0

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append experiences (one transaction)."""
        if not records:
            return
        now = time.time()
        values = [{"created_at": now, "task_id": str(r.get("task_id", ""))[:128], "run_id": _int(r.get("run_id")),
                   "model_version": _int(r.get("model_version")), "reward": _float(r.get("reward")),
                   "consumed": 0, "record": json.dumps(r)} for r in records]
        self._retry(f"writing {len(records)} experiences", lambda conn: conn.execute(self.rows.insert(), values))

    # ------------------------------------------------------------ readers

    def take(self, n: int, *, reuse: bool) -> list[dict[str, Any]] | None:
        """n experiences (unread first; newest first, or oldest with fifo), each counted as read; None when
        fewer are there."""
        sa = self.sa
        rows = self.rows

        def action(conn: Any) -> list[dict[str, Any]] | None:
            query = sa.select(rows.c.id, rows.c.consumed, rows.c.record)
            if not reuse:
                query = query.where(rows.c.consumed == 0)
            query = query.order_by(rows.c.consumed.asc(), rows.c.id.asc() if self.fifo else rows.c.id.desc()).limit(n)
            if conn.dialect.name != "sqlite":
                query = query.with_for_update()
            found = conn.execute(query).all()
            if len(found) < n:
                return None
            conn.execute(rows.update().where(rows.c.id.in_([r.id for r in found]))
                         .values(consumed=rows.c.consumed + 1))
            out = []
            for row in found:
                record = json.loads(row.record)
                record["use_count"] = int(row.consumed) + 1  # times read, this time included (as the replay pool)
                out.append(record)
            return out

        return self._retry(f"reading {n} experiences", action)

    def count(self, *, unread: bool = False) -> int:
        """Rows in the buffer (only the unread ones with unread=True)."""
        sa = self.sa
        query = sa.select(sa.func.count()).select_from(self.rows)
        if unread:
            query = query.where(self.rows.c.consumed == 0)
        return int(self._retry("counting experiences", lambda conn: conn.execute(query).scalar()))

    def state_dict(self) -> dict[str, Any]:
        """Nothing to remember: what was read is marked in the table itself."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """See state_dict."""

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
