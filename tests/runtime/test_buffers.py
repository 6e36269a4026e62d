"""The experience buffers on their own: Trinity's replay priorities, cutting groups into train batches, and
the SQL (SQLite here; PostgreSQL in test_loop_modes.py) and JSON-lines stores two jobs share."""

from __future__ import annotations

import json

import pytest

from rft_runtime.buffers import Batcher, ReplayPool, StorageError, open_store, priority_fn
from rft_runtime.buffers.jsonl import JsonlStore
from rft_runtime.buffers.sql import SqlStore
from rft_runtime.config.models import ExperienceBufferConfig


def group(version: int, task: str, n: int = 2, uses: int = 0) -> list[dict]:
    return [{"task_id": task, "run_id": i, "model_version": version, "use_count": uses, "reward": 1.0}
            for i in range(n)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- replay


def test_linear_decay_takes_the_newest_weights_first_and_reuse_lowers_priority():
    clock = Clock()
    pool = ReplayPool(10, priority_fn("linear_decay", {"decay": 2.0}), reuse_cooldown_time=5.0, clock=clock)
    for version, task in [(0, "a"), (3, "b"), (1, "c")]:
        pool.put(group(version, task))
    assert [pool.take()[0]["task_id"] for _ in range(3)] == ["b", "c", "a"]
    assert pool.take() is None  # all three are cooling down
    clock.now = 5.0
    again = pool.take()
    # back after the cooldown, once used: priorities 3-2=1, 1-2=-1, 0-2=-2
    assert again[0]["task_id"] == "b" and again[0]["use_count"] == 2


def test_no_cooldown_time_means_no_reuse():
    pool = ReplayPool(10, priority_fn("linear_decay", None), reuse_cooldown_time=None)
    pool.put(group(0, "a"))
    assert pool.take() is not None and pool.take() is None and pool.next_ready_in() is None


def test_decay_limit_randomization_stops_reusing_at_the_use_count_limit():
    pool = ReplayPool(10, priority_fn("decay_limit_randomization", {"use_count_limit": 2}), reuse_cooldown_time=0)
    pool.put(group(0, "a"))
    uses = []
    while (g := pool.take()) is not None:
        uses.append(g[0]["use_count"])
    assert uses == [1, 2]  # put back while use_count < 2


def test_a_full_pool_drops_its_lowest_priority_and_turns_away_lower_ones():
    pool = ReplayPool(2, priority_fn("linear_decay", None), reuse_cooldown_time=None)
    assert pool.put(group(1, "a")) and pool.put(group(2, "b"))
    assert not pool.put(group(0, "old"))  # lower than everything held
    assert pool.put(group(3, "new"))  # evicts a (priority 1)
    assert [pool.take()[0]["task_id"] for _ in range(2)] == ["new", "b"] and pool.dropped == 2


def test_unknown_priority_function_or_argument_names_what_trinity_has():
    with pytest.raises(StorageError, match="linear_decay, decay_limit_randomization"):
        priority_fn("lifo", None)
    with pytest.raises(StorageError, match="takes decay, not sigma"):
        priority_fn("linear_decay", {"sigma": 1.0})


# ---------------------------------------------------------------- batches


def test_batches_are_exactly_n_and_a_split_group_waits_for_the_next_batch():
    b = Batcher()
    b.add(group(0, "a", 3))
    b.add(group(0, "b", 3))
    assert b.take(4) is not None and b.available == 2
    assert b.take(4) is None  # not enough: nothing taken
    b.add(group(0, "c", 3))
    batch = b.take(4)
    assert [r["task_id"] for r in batch] == ["b", "b", "c", "c"]
    assert [len(g) for g in b.held()] == [1]


# ---------------------------------------------------------------- stores


def test_sqlite_store_hands_out_each_row_once_newest_first_and_knows_when_writers_are_done(tmp_path):
    url = f"sqlite:///{tmp_path / 'buf.db'}"
    writer, reader = SqlStore(url, "exp"), SqlStore(url, "exp")  # as two jobs would open it
    assert not reader.writers_done()  # nobody registered yet: more may come
    wid = writer.register_writer()
    writer.write(group(0, "a") + group(1, "b"))
    assert reader.take(3, reuse=False) is not None
    assert reader.take(3, reuse=False) is None and reader.count(unread=True) == 1
    writer.write(group(2, "c"))
    got = reader.take(3, reuse=False)
    assert [r["task_id"] for r in got] == ["c", "c", "a"]  # Trinity's order: unread, newest first
    assert not reader.writers_done()
    writer.finish_writer(wid)
    assert reader.writers_done() and reader.count() == 6 and reader.count(unread=True) == 0


def test_sql_replay_reads_rows_again_least_read_first(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 'buf.db'}", "exp")
    store.write(group(0, "a", 1) + group(0, "b", 1))
    first = store.take(1, reuse=True)
    second = store.take(1, reuse=True)
    third = store.take(1, reuse=True)
    assert {first[0]["task_id"], second[0]["task_id"]} == {"a", "b"}
    assert [first[0]["use_count"], second[0]["use_count"], third[0]["use_count"]] == [1, 1, 2]


def test_jsonl_store_follows_the_file_and_resumes_at_its_offset(tmp_path):
    path = tmp_path / "exp.jsonl"
    writer, reader = JsonlStore(path), JsonlStore(path)
    wid = writer.register_writer()
    writer.write(group(0, "a", 3))
    with path.open("a") as fh:
        fh.write(json.dumps(group(0, "half")[0])[:10])  # a line still being written is not read
    assert [r["task_id"] for r in reader.take(2, reuse=False)] == ["a", "a"]
    saved = reader.state_dict()
    assert reader.take(2, reuse=False) is None
    resumed = JsonlStore(path)
    resumed.load_state_dict(saved)
    assert resumed.count(unread=True) == 1
    writer.finish_writer(wid)
    assert resumed.writers_done()


@pytest.mark.parametrize(("storage_type", "path", "kind", "where"), [
    ("sql", None, SqlStore, "buffer/experience_buffer.db"),
    ("queue", None, JsonlStore, "buffer/experience_buffer.jsonl"),
    ("file", None, JsonlStore, "buffer/experience_buffer.jsonl"),
    ("queue", "sqlite:///{tmp}/q.db", SqlStore, "q.db"),
])
def test_storage_types_open_trinitys_default_places(tmp_path, storage_type, path, kind, where):
    cfg = ExperienceBufferConfig(storage_type=storage_type, path=path and path.format(tmp=tmp_path))
    store = open_store(cfg, tmp_path)
    assert isinstance(store, kind) and where in store.describe()


@pytest.mark.parametrize(("storage_type", "path", "says"), [
    ("sql", "exp.jsonl", "SQLAlchemy URL"), ("file", "sqlite:///x.db", "storage_type: sql"),
    ("file", "exp.parquet", ".jsonl"),
])
def test_a_path_that_does_not_fit_the_storage_type_is_named(tmp_path, storage_type, path, says):
    with pytest.raises(StorageError, match="buffer.trainer_input.experience_buffer.path") as info:
        open_store(ExperienceBufferConfig(storage_type=storage_type, path=path), tmp_path)
    assert says in str(info.value)
