"""Trinity 0.6 explorer features on the real local engine, through `rft run`: prompt truncation off, several
tasksets mixed per step, a taskset read from a SQL database (SQLite and PostgreSQL), over-rollout and the
dynamic rollout timeout. Each test reads what a user sees: metrics.jsonl, the job's output."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import sqlalchemy as sa
from test_run_support import clean_env, job_dict, job_dir, metrics, run_cli, write_config

from rft_runtime.buffers.sql_tasks import SqlTaskTable
from rft_runtime.data.errors import DataError
from rft_runtime.data.tasksets import SqlTaskStream, load_rows, trinity_table_name


@pytest.mark.slow
def test_prompt_truncation_off_samples_prompts_over_max_prompt_tokens(tmp_path, tiny_model_dir, local_engine):
    # the math workflow's system prompt alone is far over 16 tokens: with truncation on (Trinity's default) no
    # prompt is sampled and the job stops before step 1; off, every prompt that fits the context is sampled
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=2, name="cut")
    cfg["model"].update(max_prompt_tokens=16, max_model_len=900)
    on = run_cli(write_config(tmp_path / "on.yaml", cfg))
    assert on.returncode != 0 and "model.max_prompt_tokens (16)" in on.stderr, on.stderr[-2000:]
    cfg["name"] = "uncut"
    cfg["model"]["enable_prompt_truncation"] = False
    off = run_cli(write_config(tmp_path / "off.yaml", cfg))
    assert off.returncode == 0, off.stderr[-3000:]
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["truncated_prompts"] == 0 and r["rollouts"] == 8 for r in records)
    # every sampled prompt is longer than the limit that no longer applies: 8 rollouts of 2 prompts a step
    assert all(r["prompt_tokens"] > 8 * 16 for r in records)


# a user module: a reward that reads the row (so a step's mean reward says which rows it ran), and an async
# workflow that first waits the row's `delay` seconds (a slow environment)
USER_MODULE = '''
import asyncio

from rft_runtime.workflows.single_turn import AsyncSimpleWorkflow


def by_row(row):
    return {"accuracy": float(row["tag"])}


class Delayed(AsyncSimpleWorkflow):
    async def run_async(self):
        await asyncio.sleep(float(self.raw_task.get("delay", 0)))
        return await super().run_async()
'''


def _user_env(tmp_path: Path) -> dict:
    (tmp_path / "userwf.py").write_text(USER_MODULE)
    return clean_env(PYTHONPATH=os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p))


def _rows(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _tagged_job(tmp_path: Path, model_dir: Path, base_url: str, name: str, **overrides) -> dict:
    cfg = job_dict(tmp_path, model_dir, base_url, name=name, **overrides)
    ei = cfg["buffer"]["explorer_input"]
    ei["default_workflow_type"] = "simple_workflow"
    ei["default_reward_fn_type"] = "userwf:by_row"
    return cfg


def trinity_mix(sizes: list[int], batch_size: int, steps: int) -> list[Counter]:
    """How many tasks of each taskset Trinity 0.6's TasksetScheduler puts in each step, written from its
    source: one id per row, shuffled per epoch by numpy's generator seeded with the epoch, read batch_size at
    a time across epochs."""
    base = [i for i, n in enumerate(sizes) for _ in range(n)]

    def build(epoch: int) -> list[int]:
        ids = list(base)
        np.random.default_rng(epoch).shuffle(ids)
        return ids

    out, epoch = [], 0
    orders = build(epoch)
    for step in range(steps):
        start = step * batch_size % len(base)
        end = start + batch_size
        if end <= len(base):
            ids = orders[start:end]
            if end == len(base):
                epoch += 1
                orders = build(epoch)
        else:
            ids = orders[start:]
            epoch += 1
            orders = build(epoch)
            ids += orders[:end - len(base)]
        out.append(Counter(ids))
    return out


@pytest.mark.slow
def test_several_tasksets_are_mixed_per_step_as_trinity_mixes_them(tmp_path, tiny_model_dir, local_engine):
    # taskset 0 (6 rows) scores 1 and taskset 1 (2 rows, another prompt column and workflow args) scores 0, so
    # each step's mean reward is its share of taskset 0; 8 rows / batch 2 x 2 epochs = 8 steps
    first = _rows(tmp_path / "a.jsonl", [{"question": f"What is {i} plus 1?", "tag": 1} for i in range(6)])
    second = _rows(tmp_path / "b.jsonl", [{"q": f"Name the number {i}.", "tag": 0} for i in range(2)])
    cfg = _tagged_job(tmp_path, tiny_model_dir, local_engine.base_url, "mixed", steps=None, batch=2)
    cfg["buffer"].pop("total_steps")
    cfg["buffer"]["total_epochs"] = 2
    ei = cfg["buffer"]["explorer_input"]
    ei.pop("taskset")
    ei["tasksets"] = [
        {"name": "adds", "path": first, "format": {"prompt_key": "question"},
         "data_selector": {"selector_type": "sequential"}},
        {"name": "names", "path": second, "format": {"prompt_key": "q"}, "rollout_args": {"temperature": 0.5},
         "data_selector": {"selector_type": "sequential"}},
    ]
    done = run_cli(write_config(tmp_path / "mixed.yaml", cfg), env=_user_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    records = metrics(cfg)
    assert [r["step"] for r in records] == list(range(1, 9))
    expected = [c[0] / 2 for c in trinity_mix([6, 2], 2, 8)]
    assert [r["critic/rewards/mean"] for r in records] == pytest.approx(expected)
    assert 0 < sum(expected) < 8  # both tasksets trained, in the proportion of their rows
    assert all(r["failed_rollouts"] == 0 and r["rollouts"] == 8 for r in records)


def _trinity_task_table(url: str, name: str, rows: list[dict]) -> None:
    """The table Trinity's SQL task storage writes (id, raw_task JSON), made and filled with plain SQLAlchemy."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    table = sa.Table(name, sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                     sa.Column("raw_task", sa.JSON, nullable=False))
    with engine.begin() as conn:
        table.metadata.create_all(conn)
        conn.execute(table.insert(), [{"raw_task": r} for r in rows])
    engine.dispose()


def _sql_taskset_job(tmp_path: Path, model_dir: Path, base_url: str, url: str) -> dict:
    # rows tagged 1..9 in id order; batch 2 reads ids 1-2, 3-4, 5-6, 7-8 and stops (9 is less than a batch),
    # one pass whatever total_epochs says, as Trinity's SQL task storage reads
    _trinity_task_table(url, "arith", [{"question": f"What is {i} plus 1?", "tag": i / 10} for i in range(1, 10)])
    cfg = _tagged_job(tmp_path, model_dir, base_url, "sqltasks", steps=None, batch=2)
    cfg["buffer"].pop("total_steps")
    cfg["buffer"]["total_epochs"] = 3
    cfg["buffer"]["explorer_input"]["taskset"] = {"name": "arith", "storage_type": "sql", "path": url,
                                                  "format": {"prompt_key": "question"}}
    # an unnamed eval taskset is Trinity's table eval_taskset_0, read whole at each evaluation
    _trinity_task_table(url, "eval_taskset_0", [{"question": f"What is {i} times 2?", "tag": 1} for i in range(3)])
    cfg["buffer"]["explorer_input"]["eval_tasksets"] = [{"storage_type": "sql", "path": url,
                                                         "format": {"prompt_key": "question"}}]
    return cfg


def _check_read_in_id_order(tmp_path: Path, cfg: dict) -> None:
    done = run_cli(write_config(tmp_path / "sql.yaml", cfg), env=_user_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["critic/rewards/mean"] for r in records] == pytest.approx([0.15, 0.35, 0.55, 0.75])
    evals = [json.loads(line) for line in (job_dir(cfg) / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 4] and all(e["tasks"] == 3 and e["reward_mean"] == 1 for e in evals)


@pytest.mark.slow
def test_a_taskset_in_a_sqlite_table_is_read_in_id_order(tmp_path, tiny_model_dir, local_engine):
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    _check_read_in_id_order(tmp_path, _sql_taskset_job(tmp_path, tiny_model_dir, local_engine.base_url, url))


@pytest.mark.slow
def test_a_taskset_in_a_postgresql_table_is_read_in_id_order(tmp_path, tiny_model_dir, local_engine, postgres):
    _check_read_in_id_order(tmp_path, _sql_taskset_job(tmp_path, tiny_model_dir, local_engine.base_url,
                                                       postgres.url()))


def test_a_sql_tasksets_position_resumes_after_the_last_id_read(tmp_path):
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    _trinity_task_table(url, "t", [{"prompt": str(i)} for i in range(5)])
    stream = SqlTaskStream(SqlTaskTable(url, "t"), batch_size=2)
    assert stream.total_steps == 2 and [t.row["prompt"] for t in next(stream)] == ["0", "1"]
    saved = stream.state_dict()
    _trinity_task_table(url, "t", [{"prompt": str(i)} for i in range(5, 8)])  # rows added meanwhile
    resumed = SqlTaskStream(SqlTaskTable(url, "t"), batch_size=2)
    resumed.load_state_dict(saved)
    assert resumed.total_steps == 4  # ids 3..8 are three more batches
    assert [[t.row["prompt"] for t in batch] for batch in resumed] == [["2", "3"], ["4", "5"], ["6", "7"]]
    stream.close()
    resumed.close()


def test_a_missing_table_or_a_file_path_is_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    with pytest.raises(DataError, match="no table 'nope'.*raw_task"):
        load_rows(SimpleNamespace(path=url, storage_type="sql", name="nope", format=None))
    with pytest.raises(DataError, match=r"tasksets\[1\].path: storage_type sql .* SQLAlchemy URL"):
        load_rows(SimpleNamespace(path="t.jsonl", storage_type="sql", name="", format=None),
                  where="buffer.explorer_input.tasksets[1]")
    # an unnamed taskset is Trinity's table name for its place
    assert trinity_table_name(SimpleNamespace(name=""), "buffer.explorer_input.eval_tasksets[2]") == "eval_taskset_2"
    assert trinity_table_name(SimpleNamespace(name=""), "buffer.explorer_input.taskset") == "taskset_0"


def _delayed_job(tmp_path: Path, model_dir: Path, base_url: str, name: str, delays: list[float], **overrides) -> dict:
    """Rows in file order whose workflow first waits the row's delay (batch 2, two rows a step)."""
    rows = [{"question": f"What is {i} plus 1?", "tag": 1, "delay": d} for i, d in enumerate(delays)]
    cfg = _tagged_job(tmp_path, model_dir, base_url, name, steps=len(delays) // 2, batch=2, **overrides)
    ei = cfg["buffer"]["explorer_input"]
    ei["default_workflow_type"] = "userwf:Delayed"
    ei["taskset"] = {"name": "delayed", "path": _rows(tmp_path / f"{name}.jsonl", rows),
                     "format": {"prompt_key": "question"}, "data_selector": {"selector_type": "sequential"}}
    return cfg


@pytest.mark.slow
def test_over_rollout_steps_go_on_without_their_late_tasks(tmp_path, tiny_model_dir, local_engine):
    # the second task of each step takes 10 minutes: with ratio 0.5 a step waits for 1 of its 2 tasks, then 1 s
    # more, and trains on the one that is in (Trinity drops the late one; it does not come back)
    cfg = _delayed_job(tmp_path, tiny_model_dir, local_engine.base_url, "over", [0, 600, 0, 600],
                       synchronizer__sync_style="explorer_driven",
                       explorer__over_rollout={"ratio": 0.5, "wait_after_min": 1})
    started = time.monotonic()
    done = run_cli(write_config(tmp_path / "over.yaml", cfg), env=_user_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < 150
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["rollouts"] == 4 and r["failed_rollouts"] == 0 for r in records)  # one task x 4 rollouts
    assert all(r["rollout/finished_task_count"] == 1 and r["rollout/late_task_count"] == 1 for r in records)
    # without over_rollout the same job would wait for the slow task: it is refused with sync_style fixed
    cfg["synchronizer"]["sync_style"] = "fixed"
    refused = run_cli(write_config(tmp_path / "fixed.yaml", cfg), env=_user_env(tmp_path))
    assert refused.returncode == 2 and "explorer.over_rollout.ratio" in refused.stderr


@pytest.mark.slow
def test_dynamic_timeout_fails_a_run_far_slower_than_the_mean(tmp_path, tiny_model_dir, local_engine):
    # steps 1-2 run fast; in step 3 one task waits 60 s. max_timeout (120 s) would wait for it; the dynamic
    # timeout, 5 x the mean run time after the first whole step, fails it (no retry), and the step trains on
    # the other task
    cfg = _delayed_job(tmp_path, tiny_model_dir, local_engine.base_url, "dyn", [0, 0, 0, 0, 0, 60],
                       explorer__max_timeout=120, explorer__max_retry_times=0,
                       explorer__dynamic_timeout={"enable": True, "warmup_min_steps": 1, "ratio": 5})
    started = time.monotonic()
    done = run_cli(write_config(tmp_path / "dyn.yaml", cfg), env=_user_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < 100
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2, 3]
    timeouts = [r["rollout/timeout"] for r in records]
    assert timeouts[0] == 120 and timeouts[1] < 60 and timeouts[2] < 60, timeouts
    assert [r["failed_rollouts"] for r in records] == [0, 0, 4]
    assert records[2]["rollouts"] == 4
