"""Tasksets: rows read through the `datasets` library, and the seeded, resumable stream of task batches.

    rows = load_rows(cfg.buffer.explorer_input.taskset)          # list[dict], prompt key checked
    stream = TaskStream(rows, batch_size=8, total_epochs=1, total_steps=None, seed=42)
    for tasks in stream: ...                                      # list[Task] per explorer step
    saved = stream.state_dict(); stream.load_state_dict(saved)    # resume at the same batch

The taskset config is duck-typed: anything with .path, .split, .subset_name and .format.prompt_key /
.response_key works (the pydantic StorageConfig, or a SimpleNamespace in a script).
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rft_runtime.buffers.errors import StorageError
from rft_runtime.buffers.sql import is_database_url
from rft_runtime.buffers.sql_tasks import SqlTaskTable
from rft_runtime.data.errors import DataError

log = logging.getLogger(__name__)

# File suffix -> the `datasets` packaged builder that reads it.
BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".arrow": "arrow",
}
# Compressed files keep the builder of the suffix before the compression's.
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
# Files a hub-style dataset folder carries next to its data; never read as rows.
_NOT_DATA = {"dataset_info.json", "state.json", "dataset_dict.json"}


def builder_for(path: str | os.PathLike[str]) -> str | None:
    """The `datasets` builder for a data file, picked by its extension (None: not a data file)."""
    name = Path(path).name.lower()
    for comp in COMPRESSIONS:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    return BUILDERS.get(Path(name).suffix)


def _is_tsv(path: Path) -> bool:
    return path.name.lower().endswith(tuple(".tsv" + c for c in ("", *COMPRESSIONS)))


def _fmt_attr(cfg: Any, name: str, default: Any = None) -> Any:
    fmt = getattr(cfg, "format", None)
    return getattr(fmt, name, default) if fmt is not None else default


def _prompt_column(cfg: Any) -> tuple[str, str]:
    """The column every row must have, and the config field that names it."""
    if _fmt_attr(cfg, "prompt_type", "plaintext") == "messages":
        return _fmt_attr(cfg, "messages_key", "message"), "format.messages_key"
    return _fmt_attr(cfg, "prompt_key", "prompt") or "prompt", "format.prompt_key"


def load_rows(taskset_cfg: Any, *, cache_dir: str | os.PathLike[str] | None = None,
              require_response: bool = False, where: str = "buffer.explorer_input.taskset") -> list[dict[str, Any]]:
    """Every row of the taskset's split as a plain dict; a row without the prompt column is a DataError.

    Local files and folders are read with the network off and a throw-away cache (or `cache_dir`);
    anything else is a hub name, loaded with `load_dataset(path, name=subset_name, split=split)`.
    A taskset with storage_type sql is its table's rows in id order (`where`: its place in the config, which
    also gives an unnamed one Trinity's table name).
    """
    path = getattr(taskset_cfg, "path", None)
    if not path:
        raise DataError(f"the taskset has no path: set {where}.path to a file, folder or hub dataset name (a "
                        "SQLAlchemy URL with storage_type sql)", path=None)
    if getattr(taskset_cfg, "storage_type", "file") == "sql":
        table = sql_table(taskset_cfg, where)
        try:
            rows = [row for _, row in table.read()]
        except StorageError as exc:
            raise DataError(str(exc), path=table.describe()) from None
        finally:
            table.close()
        if not rows:
            raise DataError(f"{where}: {table.describe()} holds no tasks", path=table.describe())
        check_rows(rows, taskset_cfg, source=f"{where} ({table.describe()})", require_response=require_response)
        return rows
    split = getattr(taskset_cfg, "split", None) or "train"
    subset = getattr(taskset_cfg, "subset_name", None)
    local = Path(os.path.expanduser(str(path)))
    if local.exists():
        rows = _load_local(local.resolve(), split, subset, cache_dir)
    elif builder_for(local) is not None or str(path).startswith((".", "/", "~")):
        raise DataError(f"taskset file not found: {path} (looked at {local.absolute()})", path=str(path))
    else:
        rows = _load_hub(str(path), split, subset, cache_dir)
    if not rows:
        raise DataError(f"the taskset {path} (split {split!r}) has no rows", path=str(path))
    check_rows(rows, taskset_cfg, source=str(path), require_response=require_response)
    return rows


def training_tasksets(cfg: Any) -> list[tuple[str, Any]]:
    """(place in the config, taskset) of each taskset a stage explores: buffer.explorer_input.tasksets, else
    its taskset (Trinity makes a lone taskset tasksets[0])."""
    ei = cfg.buffer.explorer_input
    if ei.tasksets:
        return [(f"buffer.explorer_input.tasksets[{i}]", ts) for i, ts in enumerate(ei.tasksets)]
    return [("buffer.explorer_input.taskset", ei.taskset)]


def trinity_table_name(taskset_cfg: Any, where: str) -> str:
    """The table a SQL taskset is: its name, else the name Trinity gives an unnamed one (taskset_<i>,
    eval_taskset_<i>; a lone `taskset` is Trinity's tasksets[0])."""
    name = getattr(taskset_cfg, "name", "") or ""
    if name:
        return name
    match = re.search(r"(eval_)?tasksets\[(\d+)\]$", where)
    if match:
        return f"{match.group(1) or ''}taskset_{match.group(2)}"
    return "taskset_0"


def sql_table(taskset_cfg: Any, where: str) -> SqlTaskTable:
    """The table of a taskset with storage_type sql (a DataError for a path that is no database URL)."""
    path = str(taskset_cfg.path)
    if not is_database_url(path):
        raise DataError(f"{where}.path: storage_type sql reads the tasks from a database: give a SQLAlchemy URL "
                        f"(sqlite:///FILE, postgresql://USER@HOST/DB, ...), got {path!r}", path=path)
    try:
        return SqlTaskTable(path, trinity_table_name(taskset_cfg, where), where=where)
    except StorageError as exc:
        raise DataError(str(exc), path=path) from None


def check_rows(rows: list[dict[str, Any]], taskset_cfg: Any, *, source: str = "the taskset",
               require_response: bool = False) -> None:
    """Raise a DataError naming the first row that lacks the prompt (or, if required, response) column."""
    key, field = _prompt_column(taskset_cfg)
    keys = [(key, field)]
    if require_response and field != "format.messages_key":
        # a conversation holds its own reply; plaintext rows need the response column
        keys.append((_fmt_attr(taskset_cfg, "response_key", "response") or "response", "format.response_key"))
    for index, row in enumerate(rows):
        for k, f in keys:
            if row.get(k) is None:
                columns = ", ".join(sorted(c for c, v in row.items() if v is not None)) or "none"
                raise DataError(
                    f"{source}: row {index} (0-based) has no {k!r} value ({f}); its columns: {columns}. "
                    f"Fix the row, or set {f} to the column that holds it",
                    path=source, row_index=index, key=k,
                )


@contextmanager
def _offline() -> Iterator[None]:
    """Keep `datasets` and the hub client off the network while reading local files.

    Both libraries read HF_*_OFFLINE into module constants at import time, so the environment variable
    alone only helps if set before the first import; the constants are switched too, and restored after.
    """
    # datasets takes ~1 s to import: `import rft_runtime.data`, the validator and the operator go without it
    import datasets.config as dconfig
    import huggingface_hub.constants as hconstants

    env_names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    saved_env = {n: os.environ.get(n) for n in env_names}
    saved = (dconfig.HF_DATASETS_OFFLINE, dconfig.HF_HUB_OFFLINE, hconstants.HF_HUB_OFFLINE)
    for n in env_names:
        os.environ[n] = "1"
    dconfig.HF_DATASETS_OFFLINE = dconfig.HF_HUB_OFFLINE = hconstants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconfig.HF_DATASETS_OFFLINE, dconfig.HF_HUB_OFFLINE, hconstants.HF_HUB_OFFLINE = saved
        for n, v in saved_env.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


@contextmanager
def _quiet_progress() -> Iterator[None]:
    # "Generating train split" bars from every load would bury the job's own progress bar.
    from datasets.utils import logging as dlogging  # heavy: see _offline

    was = dlogging.is_progress_bar_enabled()
    dlogging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            dlogging.enable_progress_bar()


@contextmanager
def _cache(cache_dir: str | os.PathLike[str] | None) -> Iterator[str]:
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        yield str(cache_dir)
        return
    # Rows are materialised as Python objects, so the Arrow cache is not needed once they are read.
    with tempfile.TemporaryDirectory(prefix="rft-datasets-") as tmp:
        yield tmp


def _data_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if any(part.startswith((".", "_")) for part in rel) or not p.is_file() or p.name in _NOT_DATA:
            continue
        if builder_for(p) is not None:
            files.append(p)
    return files


def _load_local(path: Path, split: str, subset: str | None, cache_dir: Any) -> list[dict[str, Any]]:
    import datasets  # heavy: see _offline

    with _offline(), _quiet_progress(), _cache(cache_dir) as cache:
        try:
            if path.is_file():
                builder = builder_for(path)
                if builder is None:
                    raise DataError(
                        f"cannot read {path}: unknown file type; use one of "
                        f"{', '.join(sorted(BUILDERS))} (optionally compressed)", path=str(path))
                if path.stat().st_size == 0:
                    raise DataError(f"the taskset file {path} is empty", path=str(path))
                kwargs: dict[str, Any] = {"delimiter": "\t"} if _is_tsv(path) else {}
                # A single file is the split the config names, whatever it is called.
                ds = datasets.load_dataset(builder, data_files={split: [str(path)]}, split=split,
                                           cache_dir=cache, **kwargs)
            elif (path / "state.json").exists() or (path / "dataset_dict.json").exists():
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    if split not in ds:
                        raise DataError(f"{path} has no split {split!r}; it has: {', '.join(ds)}",
                                        path=str(path))
                    ds = ds[split]
            else:
                files = _data_files(path)
                if not files:
                    raise DataError(f"the folder {path} holds no data files "
                                    f"({', '.join(sorted(BUILDERS))})", path=str(path))
                kinds = sorted({str(builder_for(f)) for f in files})
                if len(kinds) > 1:
                    raise DataError(
                        f"the folder {path} mixes file types ({', '.join(kinds)}); keep one type per "
                        "folder so no file is silently skipped", path=str(path))
                tsv = {_is_tsv(f) for f in files}
                if len(tsv) > 1:
                    raise DataError(f"the folder {path} mixes .csv and .tsv files; keep one delimiter per "
                                    "folder", path=str(path))
                kwargs = {"delimiter": "\t"} if tsv == {True} else {}
                # datasets reads split names from file names (train.jsonl, test-0001.parquet, ...);
                # a folder without them is all "train".
                ds = datasets.load_dataset(str(path), name=subset, split=split, cache_dir=cache, **kwargs)
            return ds.to_list()
        except DataError:
            raise
        except Exception as exc:  # parsers raise anything from ArrowInvalid to StopIteration on bad files
            raise DataError(f"cannot read the taskset at {path} (split {split!r}): {_reason(exc)}",
                            path=str(path)) from exc


def _load_hub(name: str, split: str, subset: str | None, cache_dir: Any) -> list[dict[str, Any]]:
    import datasets  # heavy: see _offline

    with _quiet_progress():
        try:
            ds = datasets.load_dataset(name, name=subset, split=split,
                                       cache_dir=str(cache_dir) if cache_dir else None)
        except Exception as exc:  # the hub client raises many types; all mean "not loadable"
            raise DataError(
                f"{name!r} is not a local file or folder (looked at {Path(name).absolute()}), and loading "
                f"it from the Hugging Face hub (subset {subset!r}, split {split!r}) failed: {_reason(exc)}. "
                "Without network access, point the taskset path at a local copy",
                path=name,
            ) from exc
    return ds.to_list()


def _reason(exc: BaseException) -> str:
    # DatasetGenerationError hides the parser's message in its cause.
    cause = exc.__cause__ or exc.__context__
    text = str(exc).strip() or type(exc).__name__
    if cause is not None and str(cause).strip() and str(cause) not in text:
        text = f"{text} ({type(cause).__name__}: {str(cause).strip()})"
    return text.splitlines()[0] if len(text) > 500 else text


# ---------------------------------------------------------------- the stream


@dataclass(frozen=True)
class Task:
    """One task handed to the explorer: its row index in the taskset (a SQL taskset's: the row's id), the row,
    the epoch, and which of buffer.explorer_input.tasksets it comes from (0 with one taskset)."""

    index: int
    row: dict[str, Any]
    epoch: int
    taskset: int = 0


class TaskStream:
    """Batches of tasks in a seeded order, reshuffled every epoch, resumable from `state_dict()`.

    steps_per_epoch = len(rows) // batch_size with drop_last (the remainder of every epoch is left out,
    a different remainder each epoch since the order is reshuffled), else ceil(len(rows) / batch_size).
    total_steps: as Trinity-RFT, a given total_steps wins over total_epochs (the stream goes on into later
    epochs if it must); without it, steps_per_epoch * total_epochs.
    Iterating continues from the current position, so `load_state_dict` then `iter` resumes.
    """

    def __init__(self, rows: list[dict[str, Any]], batch_size: int, total_epochs: int | None = 1,
                 total_steps: int | None = None, seed: int | None = 0, drop_last: bool = True,
                 shuffle: bool = True):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if total_epochs is not None and total_epochs < 1:
            raise DataError(f"total_epochs must be >= 1, got {total_epochs}")
        if total_steps is not None and total_steps < 0:
            raise DataError(f"total_steps must be >= 0, got {total_steps}")
        self.rows = rows
        self.batch_size = int(batch_size)
        self.seed = int(seed or 0)
        self.drop_last = drop_last
        self.shuffle = shuffle
        n = len(rows)
        self.steps_per_epoch = n // self.batch_size if drop_last else -(-n // self.batch_size)
        if not self.steps_per_epoch:
            self.total_steps = 0
        elif total_steps:
            self.total_steps = int(total_steps)
        else:
            self.total_steps = self.steps_per_epoch * int(total_epochs or 1)
        self._step = 0
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.total_steps

    @property
    def step(self) -> int:
        """Batches handed out so far (the next batch is step + 1, 1-based)."""
        return self._step

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from (0-based)."""
        return self._step // self.steps_per_epoch if self.steps_per_epoch else 0

    def order(self, epoch: int) -> list[int]:
        """Row indices in the order epoch `epoch` visits them (the same for the same seed, every run)."""
        if epoch not in self._orders:
            order = list(range(len(self.rows)))
            if self.shuffle:
                # A string seed is hashed with SHA-512, so the order does not depend on PYTHONHASHSEED.
                random.Random(f"rft-taskset:{self.seed}:{epoch}").shuffle(order)
            self._orders = {epoch: order}  # one epoch at a time: long runs do not pile up orders
        return self._orders[epoch]

    def __iter__(self) -> TaskStream:
        return self

    def __next__(self) -> list[Task]:
        if self._step >= self.total_steps:
            raise StopIteration
        epoch, pos = divmod(self._step, self.steps_per_epoch)
        indices = self.order(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size]
        self._step += 1
        return [Task(i, self.rows[i], epoch) for i in indices]

    def state_dict(self) -> dict[str, Any]:
        """The position (batches handed out) plus what the order depends on; JSON-serialisable."""
        return {"step": self._step, "seed": self.seed, "num_rows": len(self.rows),
                "batch_size": self.batch_size, "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches `state` had handed out (the next batch is the one that followed)."""
        step = int(state.get("step", 0))
        if step < 0:
            raise DataError(f"a taskset position cannot be negative, got step {step}")
        changed = [f"{k} {state[k]!r} -> {v!r}" for k, v in
                   (("seed", self.seed), ("num_rows", len(self.rows)), ("batch_size", self.batch_size),
                    ("shuffle", self.shuffle), ("drop_last", self.drop_last))
                   if k in state and state[k] != v]
        if changed:
            # Still resumes at the same step count, but the tasks seen may differ from the first run.
            log.warning("the taskset changed since the checkpoint (%s): resuming at batch %d of the new "
                        "order, so some tasks may repeat or be skipped", "; ".join(changed), step + 1)
        self._step = min(step, self.total_steps)


class SqlTaskStream:
    """A SQL taskset's batches, as Trinity's SQL task storage hands them out: the table's rows in id order,
    batch_size at a time, one pass (no epochs, no shuffling); it ends when fewer than a batch of new rows are
    left or at total_steps. Each step reads the next rows from the database, so the position is the last id
    read, and a resumed job goes on after it (Trinity 0.6 restarts its SQL taskset from the first row)."""

    def __init__(self, table: SqlTaskTable, batch_size: int, total_steps: int | None = None, where: str = ""):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.table = table
        self.where = where
        self.batch_size = int(batch_size)
        self.cap = int(total_steps) if total_steps else None
        self._step = 0
        self._last_id = 0
        self.total_steps = self._plan()

    def _plan(self) -> int:
        try:
            steps = self._step + self.table.count(after=self._last_id) // self.batch_size
        except StorageError as exc:
            raise DataError(str(exc), path=self.table.describe()) from None
        return min(steps, self.cap) if self.cap else steps

    def __len__(self) -> int:
        return self.total_steps

    @property
    def step(self) -> int:
        """Batches handed out so far."""
        return self._step

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The next rows (a few batches' worth), for the checks made before the first step."""
        try:
            return [row for _, row in self.table.read(after=self._last_id, limit=4 * self.batch_size)]
        except StorageError as exc:
            raise DataError(str(exc), path=self.table.describe()) from None

    def __iter__(self) -> SqlTaskStream:
        return self

    def __next__(self) -> list[Task]:
        if self._step >= self.total_steps:
            raise StopIteration
        try:
            found = self.table.read(after=self._last_id, limit=self.batch_size)
        except StorageError as exc:
            raise DataError(str(exc), path=self.table.describe()) from None
        if len(found) < self.batch_size:
            log.warning("%s: %d new task(s) left, fewer than a batch of %d: the taskset ends at step %d", self.where,
                        len(found), self.batch_size, self._step)
            raise StopIteration
        self._step += 1
        self._last_id = found[-1][0]
        return [Task(row_id, row, 0) for row_id, row in found]

    def state_dict(self) -> dict[str, Any]:
        """The position: batches handed out and the last id read."""
        return {"step": self._step, "last_id": self._last_id, "batch_size": self.batch_size,
                "table": self.table.describe()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the last row `state` had read."""
        if state.get("table") not in (None, self.table.describe()):
            log.warning("the SQL taskset moved since the checkpoint (%s -> %s): resuming after id %s of the new one",
                        state.get("table"), self.table.describe(), state.get("last_id", 0))
        self._step = int(state.get("step", 0))
        self._last_id = int(state.get("last_id", 0))
        self.total_steps = self._plan()

    def close(self) -> None:
        """Release the database connections."""
        self.table.close()
