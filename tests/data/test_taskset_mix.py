"""Several tasksets mixed per step (rft_runtime.data.taskset_mix) as Trinity 0.6's TasksetScheduler mixes
them; the counts per step are checked against the scheduler's algorithm in tests/runtime, through `rft run`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rft_runtime.data.errors import DataError
from rft_runtime.data.taskset_mix import TasksetMix

SEQUENTIAL = SimpleNamespace(selector_type="sequential", seed=0, feature_keys=[], kwargs={})


def _mix(**kw):
    a = [{"name": f"a{i}"} for i in range(5)]
    b = [{"name": f"b{i}"} for i in range(3)]
    return TasksetMix([(a, SEQUENTIAL), (b, SEQUENTIAL)], batch_size=3, **kw)


def _names(batch):
    return [t.row["name"] for t in batch]


def test_each_taskset_gives_its_rows_in_its_selectors_order_and_as_many_per_epoch_as_it_has():
    mix = _mix(total_epochs=3)
    assert mix.total_steps == 8  # 3 epochs x 8 rows // 3
    batches = list(mix)
    taken = [t for b in batches for t in b]
    assert [t.row["name"] for t in taken if t.taskset == 0] == [f"a{i % 5}" for i in range(15)]
    assert [t.row["name"] for t in taken if t.taskset == 1] == [f"b{i % 3}" for i in range(9)]
    # a task is tagged with its taskset and its row's index there; a step's tasks come grouped by taskset
    assert all(t.row["name"] == ("a" if t.taskset == 0 else "b") + str(t.index) for t in taken)
    for batch in batches:
        order = [t.taskset for t in batch]
        assert order == sorted(order, key=order.index)


def test_a_resumed_mix_hands_out_the_batches_the_first_run_would_have():
    first = _mix(total_epochs=3)
    whole = [_names(b) for b in first]
    again = _mix(total_epochs=3)
    for _ in range(3):
        next(again)
    saved = again.state_dict()
    resumed = _mix(total_epochs=3)
    resumed.load_state_dict(saved)
    assert resumed.step == 3 and [_names(b) for b in resumed] == whole[3:]


def test_total_steps_wins_and_the_mix_goes_on_into_more_epochs():
    assert len(list(_mix(total_epochs=1, total_steps=7))) == 7


def test_feedback_reaches_the_tasksets_own_selector():
    rows = [{"p": i, "weak": 0.2, "strong": 0.8} for i in range(4)]
    learn = SimpleNamespace(selector_type="difficulty_based", seed=0, feature_keys=["weak", "strong"],
                            kwargs={"target_reward": 0.5, "tau": 0})
    mix = TasksetMix([(rows, SEQUENTIAL), (rows, learn)], batch_size=2)
    before = mix.selectors[1].estimator.predict(None, False).tolist()
    mix.feedback([0], [1.0], taskset=1)
    assert mix.selectors[1].estimator.predict(None, False).tolist() != before


def test_a_random_selector_needs_a_batch_of_distinct_rows():
    rnd = SimpleNamespace(selector_type="random", seed=0, feature_keys=[], kwargs={})
    with pytest.raises(DataError, match="random selector"):
        TasksetMix([([{}] * 2, rnd), ([{}] * 8, None)], batch_size=4, names=["tasksets[0]", "tasksets[1]"])
