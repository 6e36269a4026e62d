"""Mode both on the real local engine: buffer.train_batch_size apart from the explorer's batch, the replay
buffer, and every synchronizer.sync_style (the Exchange's waits themselves are checked without an engine at
the end)."""

from __future__ import annotations

import json
import threading

import pytest
from test_run_support import job_dict, job_dir, metrics

from rft_runtime.buffers.sql import SqlStore
from rft_runtime.config import load_config_dict
from rft_runtime.loop.exchange import SYNC_REQUESTED, Exchange, Explored
from rft_runtime.loop.explorer import ExploredBatch, Rollout
from rft_runtime.loop.job import run_job


def _run(cfg_dict):
    return run_job(load_config_dict(cfg_dict), metrics_port=None, progress=False)


def _published(cfg) -> list[int]:
    return sorted(int(p.name.split("_")[-1]) for p in job_dir(cfg).glob("global_step_*"))


@pytest.mark.slow
def test_train_batch_size_takes_that_many_experiences_while_the_explorer_keeps_its_batch(
        tmp_path, tiny_model_dir, local_engine):
    # 3 explore steps of 2 tasks x 4 rollouts = 24 experiences, 6 per train step: 4 train steps
    record = f"sqlite:///{tmp_path / 'record.db'}"
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=3, name="tbs",
                   buffer__train_batch_size=6, save_interval=2,
                   buffer__trainer_input__experience_buffer={"name": "exp", "storage_type": "queue", "path": record})
    result = _run(cfg)
    records = metrics(cfg)
    assert result.steps == 4 and [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["rollouts"] for r in records] == [6, 6, 6, 6]
    assert all(r["total_steps"] == 4 for r in records)
    # train steps 1-2 come from explore step 1 and 2's experiences, and so on
    assert [r["explore_step"] for r in records] == [1, 2, 3, 3]
    book = json.loads((job_dir(cfg) / "checkpoint.json").read_text())
    assert [e["stage_step"] for e in book["history"]] == [2, 4]
    # a checkpoint keeps what was explored and not yet trained: after step 2, the rest of explore step 2
    kept = job_dir(cfg) / book["history"][0]["stream_state"]["rft_leftover"]
    assert sum(len(json.loads(line)) for line in kept.read_text().splitlines()) == 16 - 12
    # a queue that names a path keeps a record of every experience there, as Trinity's does
    assert SqlStore(record, "exp").count() == 24


@pytest.mark.slow
def test_replay_buffer_trains_on_experiences_again(tmp_path, tiny_model_dir, local_engine):
    # 2 explore steps make 16 experiences; 4 train steps of 8 take 32: every one is reused
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=2, name="replay",
                   buffer__train_batch_size=8, trainer__total_steps=4,
                   buffer__trainer_input__experience_buffer={
                       "name": "exp", "storage_type": "queue",
                       "replay_buffer": {"enable": True, "reuse_cooldown_time": 0, "priority_fn": "linear_decay",
                                         "priority_fn_args": {"decay": 0.5}}})
    _run(cfg)
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(r["rollouts"] == 8 for r in records)
    assert records[0]["sample/use_count/max"] == 1  # the first batch is new
    assert max(r["sample/use_count/max"] for r in records) >= 2
    assert sum(r["rollouts"] for r in records) == 32


@pytest.mark.slow
def test_replay_without_total_steps_trains_until_the_explorer_is_done_and_the_pool_empty(
        tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=2, name="replay-open",
                   buffer__train_batch_size=8,
                   buffer__trainer_input__experience_buffer={
                       "storage_type": "queue", "replay_buffer": {"enable": True, "reuse_cooldown_time": None}})
    result = _run(cfg)
    records = metrics(cfg)
    # no reuse without a cooldown time: the 16 experiences are 2 steps, then the job ends by itself
    assert result.steps == 2 and [r["rollouts"] for r in records] == [8, 8]
    assert all(r["sample/use_count/max"] == 1 for r in records) and records[-1]["total_steps"] is None


@pytest.mark.slow
@pytest.mark.parametrize(("style", "published"), [
    ("fixed", [1, 2, 3, 4]), ("trainer_driven", [1, 2, 3, 4]),
    # the explorer asks only after its steps 2 and 4 (explorer_sync_interval 2); step 4 is the last one
    ("explorer_driven", None), ("fully_async", [1, 2, 3, 4]),
])
def test_every_sync_style_trains_with_the_weights_it_promises(tmp_path, tiny_model_dir, local_engine, style,
                                                              published):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=4, name=f"sync-{style}",
                   synchronizer__sync_style=style, synchronizer__explorer_sync_interval=2)
    _run(cfg)
    records = metrics(cfg)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    versions = [r["step"] - 1 - r["weight_version_lag"] for r in records]
    assert versions == sorted(versions)  # weights never go back
    if style in ("fixed", "trainer_driven"):
        # the explorer waits at explore steps 3 (after 2) for the weights of train step 2
        assert versions == [0, 0, 2, 2] and _published(cfg) == published
    elif style == "explorer_driven":
        # steps 1-2 sample the base weights; the request after step 2 gets what the trainer had then
        assert versions[:2] == [0, 0] and versions[2] == versions[3] >= 1
        # the trainer saved sampler weights only when asked, and at the end
        assert _published(cfg) == sorted({versions[2], 4})
    else:
        assert _published(cfg) == published


# ---------------------------------------------------------------- the Exchange's waits, without an engine


def _cfg(style: str, **sync):
    from rft_runtime.config.models import JobConfig

    cfg = JobConfig()
    for key, value in {"sync_style": style, "sync_timeout": 30, **sync}.items():
        setattr(cfg.synchronizer, key, value)
    return cfg


def _explored(step: int, version: int) -> Explored:
    r = Rollout(task_index=0, prompt_ids=[1], tokens=[2], logprobs=[0.0], text="")
    batch = ExploredBatch(explore_step=step, groups=[[r]], weight_version=version, stream_state={"step": step})
    return Explored(batch, [r])


def _in_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def test_fixed_explorer_waits_for_the_weights_its_step_needs():
    ex = Exchange(_cfg("fixed"), start_version=0, start_path=None, batcher=None, batch_experiences=1, capacity=10)
    assert ex.weights_for(1, 1) == (0, None)
    ex.put(_explored(1, 0))
    t, out = _in_thread(lambda: ex.weights_for(2, 1))
    t.join(0.3)
    assert t.is_alive()  # a batch is there for the trainer: the explorer waits for its weights
    assert ex.take(1, lambda: "") is not None
    ex.publish(1, "tinker://w1")
    t.join(10)
    assert out == [(1, "tinker://w1")]


def test_fixed_explorer_goes_on_when_the_trainer_itself_waits_for_experiences():
    ex = Exchange(_cfg("fixed", sync_interval=1), start_version=0, start_path=None, batcher=None,
                  batch_experiences=1, capacity=10)
    trainer, got = _in_thread(lambda: ex.take(1, lambda: ""))
    # the trainer waits for step 1's batch, so the weights of train step 1 cannot come: no deadlock
    assert ex.weights_for(3, 1) == (0, None)
    ex.finish()
    trainer.join(10)
    assert got == [None]


def test_explorer_driven_asks_and_the_trainer_answers_with_what_it_has():
    ex = Exchange(_cfg("explorer_driven", explorer_sync_interval=2), start_version=0, start_path=None,
                  batcher=None, batch_experiences=1, capacity=10)
    assert ex.weights_for(2, 1) == (0, None)  # no sync point yet: never waits
    t, out = _in_thread(lambda: ex.weights_for(3, 1))  # after step 2: asks
    assert ex.take(1, lambda: "") is SYNC_REQUESTED
    ex.nothing_new()
    t.join(10)
    assert out == [(0, None)] and not ex.requested
    assert not ex.publishes_at(2)  # the trainer publishes only when asked


def test_fully_async_never_waits():
    ex = Exchange(_cfg("fully_async"), start_version=0, start_path=None, batcher=None, batch_experiences=1,
                  capacity=10)
    assert ex.weights_for(7, 1) == (0, None)
    ex.publish(3, "tinker://w3")
    assert ex.weights_for(8, 1) == (3, "tinker://w3")


@pytest.mark.slow
def test_a_resumed_train_batch_size_job_trains_each_experience_once(tmp_path, tiny_model_dir, local_engine):
    cfg = job_dict(tmp_path, tiny_model_dir, local_engine.base_url, steps=3, name="tbs-resume",
                   buffer__train_batch_size=6, save_interval=2)
    _run(cfg)
    # what a kill right after the step-2 checkpoint leaves: that checkpoint the latest, steps 3-4 to redo
    path = job_dir(cfg) / "checkpoint.json"
    book = json.loads(path.read_text())
    book["latest"], book["history"], book["finished_stages"] = book["history"][0], book["history"][:1], {}
    path.write_text(json.dumps(book))
    result = _run(cfg)
    records = metrics(cfg)
    # the explored-but-untrained experiences came back from the checkpoint: steps 3-4 have their 12
    assert result.steps == 4 and [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["rollouts"] for r in records] == [6, 6, 6, 6]
