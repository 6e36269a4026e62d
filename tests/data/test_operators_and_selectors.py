"""Trinity-RFT 0.6's experience operators and data selectors, on rollouts and rows made here (no engine)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rft_runtime.config.models import DataSelectorConfig
from rft_runtime.data.errors import DataError
from rft_runtime.data.operators import SELECTOR_METRIC, build_operator, operator_problem
from rft_runtime.data.pipeline import ExperiencePipeline
from rft_runtime.data.selectors import SelectorStream
from rft_runtime.loop.explorer import Rollout


def _groups(*rewards_per_task, **extra):
    """One group per task; task i's rollouts carry the given rewards (and metrics/info from extra)."""
    return [[Rollout(task_index=t, prompt_ids=[1, 2], tokens=[3, 4, 5], logprobs=[-1.0] * 3, text="x", reward=r,
                     **extra) for r in rewards]
            for t, rewards in enumerate(rewards_per_task)]


def _rewards(groups):
    return [[r.reward for r in g] for g in groups]


def test_reward_filter_drops_rollouts_under_the_threshold_and_empty_groups():
    kept, metrics = build_operator("reward_filter", {"threshold": 0.5}).process(_groups([0.0, 1.0], [0.2, 0.1]))
    assert _rewards(kept) == [[1.0]] and metrics == {"filtered_count": 3.0}


def test_reward_std_filter_keeps_only_groups_whose_rewards_differ():
    kept, metrics = build_operator("reward_std_filter", {}).process(_groups([1.0, 1.0], [0.0, 1.0], [0.5]))
    assert _rewards(kept) == [[0.0, 1.0]]
    assert metrics["operator_filtered_count"] == 3.0
    assert metrics["origin_group_advantages/reward_std/max"] == pytest.approx(0.5)


def test_dapo_dynamic_sampling_keeps_mixed_groups_judged_by_the_accuracy_metric():
    groups = _groups([1.0, 1.0], [1.0, 1.0], [0.0, 0.0])
    groups[0][0].metrics = {"accuracy": 0.0}  # a shaped reward of 1 on a wrong answer: judged by accuracy
    kept, metrics = build_operator("dapo_dynamic_sampling", {}).process(groups)
    assert [g[0].task_index for g in kept] == [0]
    assert metrics == {"filtered_count": 4.0, "dropped_all_correct": 2.0, "dropped_all_wrong": 2.0}


def test_mask_response_truncated_keeps_the_rollout_but_nothing_of_it_trains():
    groups = _groups([1.0, 0.0])
    groups[0][1].info["truncate_status"] = "response_truncated"
    kept, metrics = build_operator("mask_response_truncated", {}).process(groups)
    assert len(kept[0]) == 2 and kept[0][1].loss_mask == [0, 0, 0] and kept[0][0].loss_mask == [1, 1, 1]
    assert metrics == {"masked_truncated_count": 1.0}


def test_invalid_reward_filter_drops_nan_and_failed_rewards():
    groups = _groups([1.0, math.nan, 0.0])
    groups[0][2].failed = True
    kept, metrics = build_operator("invalid_reward_filter", {}).process(groups)
    assert _rewards(kept) == [[1.0]] and metrics == {"filtered_count": 2.0}


def test_reward_shaping_mapper_applies_each_rule_to_rollouts_that_have_the_stat():
    groups = _groups([1.0, 1.0])
    groups[0][0].info["quality"] = 0.5
    op = build_operator("reward_shaping_mapper", {"reward_shaping_configs": [
        {"stats_key": "quality", "op_type": "ADD", "weight": 2.0},
        {"stats_key": "quality", "op_type": "MUL", "weight": 3.0}]})
    kept, metrics = op.process(groups)
    # (1 + 2 x 0.5) x (3 x 0.5) for the rollout with the stat; the other keeps its reward
    assert _rewards(kept) == [[pytest.approx(3.0), 1.0]]
    assert metrics == {"reward_diff/mean": pytest.approx(1.0), "reward_diff/min": 0.0,
                       "reward_diff/max": pytest.approx(2.0)}


def test_pass_rate_calculator_hands_the_selector_each_tasks_mean_reward():
    groups = _groups([1.0, 0.0], [1.0, 1.0])
    kept, metrics = build_operator("pass_rate_calculator", {}).process(groups)
    assert kept is groups
    assert metrics[SELECTOR_METRIC] == {0: {"indices": [0, 1], "values": [0.5, 1.0]}}
    assert metrics["selection/valid_ratio"] == 0.5 and metrics["selection/<1_ratio"] == 0.5


@pytest.mark.parametrize(("name", "args", "said"), [
    ("reward_filtr", {}, "unknown experience operator 'reward_filtr'"),
    ("reward_filter", {"treshold": 1}, "reward_filter does not take these args"),
    ("reward_shaping_mapper", {"reward_shaping_configs": [{"op_type": "POW"}]}, "op_type 'POW'"),
    ("data_juicer", {"np": 2}, "needs operators"),
])
def test_a_wrong_operator_is_named_before_it_runs(name, args, said):
    problem = operator_problem(name, args)
    if problem is None:  # bad values (not names) are caught when the operator is built
        with pytest.raises(DataError, match=said):
            build_operator(name, args)
    else:
        assert said in problem


def test_the_pipeline_runs_operators_in_order_and_feeds_the_selector(tmp_path):
    class Stream:
        seen: list = []

        def feedback(self, indices, values, taskset=0):
            self.seen.append((indices, values, taskset))

    stream = Stream()
    ops = [("0_reward_std_filter", build_operator("reward_std_filter", {})),
           ("1_pass_rate_calculator", build_operator("pass_rate_calculator", {}))]
    from rft_runtime.data.pipeline import _InputStore

    pipe = ExperiencePipeline(ops, _InputStore(str(tmp_path / "in.jsonl")), stream)
    kept, metrics = pipe.process(_groups([1.0, 1.0], [0.0, 1.0]), step=3)
    assert _rewards(kept) == [[0.0, 1.0]]
    # the calculator saw only what the filter kept: task 1
    assert stream.seen == [([1], [0.5], 0)]
    assert metrics["experience_pipeline/experience_count"] == 2.0
    assert metrics["experience_pipeline/operator_filtered_count"] == 2.0
    assert "experience_pipeline/time/operator/1_pass_rate_calculator" in metrics
    assert len((tmp_path / "in.jsonl").read_text().splitlines()) == 4  # the input, before filtering


# ---------------------------------------------------------------- selectors


def _rows(n, **cols):
    return [{"q": i, **{k: v[i] for k, v in cols.items()}} for i in range(n)]


def _stream(rows, batch, epochs=1, steps=None, **sel):
    return SelectorStream(rows, batch, DataSelectorConfig(**sel), total_epochs=epochs, total_steps=steps)


def _picked(stream):
    return [[t.index for t in batch] for batch in stream]


def test_sequential_reads_file_order_across_epoch_boundaries_as_trinity():
    # 5 rows, batches of 2, 2 epochs: Trinity reads 10 rows as one stream, so 5 steps straddle the epochs
    assert _picked(_stream(_rows(5), 2, epochs=2, selector_type="sequential")) == [
        [0, 1], [2, 3], [4, 0], [1, 2], [3, 4]]


def test_shuffle_is_numpys_permutation_seeded_by_seed_plus_epoch():
    got = _picked(_stream(_rows(6), 3, epochs=2, selector_type="shuffle", seed=7))
    expected = [np.random.default_rng(7 + e).permutation(6).tolist() for e in (0, 1)]
    assert got == [expected[0][:3], expected[0][3:], expected[1][:3], expected[1][3:]]


def test_random_batches_hold_distinct_rows_and_repeat_for_the_same_seed():
    a = _picked(_stream(_rows(8), 4, steps=5, selector_type="random", seed=3))
    b = _picked(_stream(_rows(8), 4, steps=5, selector_type="random", seed=3))
    assert a == b and all(len(set(batch)) == 4 for batch in a) and len(a) == 5


def test_offline_easy2hard_serves_the_highest_feature_first():
    rows = _rows(4, easy=[0.1, 0.9, 0.5, 0.9])
    assert _picked(_stream(rows, 2, selector_type="offline_easy2hard", feature_keys=["easy"])) == [[3, 1], [2, 0]]


def test_difficulty_based_picks_tasks_near_the_target_and_learns_from_feedback():
    # two reference pass rates per task; a weak model's rates sit near the first column
    weak = [0.05, 0.5, 0.9, 0.5]
    strong = [0.2, 0.9, 1.0, 0.9]
    sel = dict(selector_type="difficulty_based", feature_keys=["weak", "strong"],
               kwargs={"target_reward": 0.5, "tau": 0, "m": 8})
    stream = _stream(_rows(4, weak=weak, strong=strong), 2, steps=3, **sel)
    first = [t.index for t in next(stream)]
    # every task starts at Beta(1, 1): the greedy pick is the file's first tasks until feedback arrives
    assert first == [0, 1]
    # task 0 turns out half-solved, task 1 always solved: the estimates move and the picks follow them
    stream.feedback([0, 1], [0.5, 1.0])
    second = [t.index for t in next(stream)]
    est = stream.selector.estimator.predict()
    # task 0 is now known to sit at the target; tasks 2 and 3 are placed above it by interpolating their
    # reference rates with the capability the batch showed; task 1 is easy
    assert est == pytest.approx([0.5, 0.9, 2.6 / 3.6, 2.6 / 3.6])
    assert second == [0, 2]


def test_selector_streams_resume_at_the_same_batch():
    stream = _stream(_rows(6), 2, epochs=2, selector_type="shuffle", seed=1)
    full = _picked(_stream(_rows(6), 2, epochs=2, selector_type="shuffle", seed=1))
    next(stream), next(stream), next(stream)
    state = stream.state_dict()
    again = _stream(_rows(6), 2, epochs=2, selector_type="shuffle", seed=1)
    again.load_state_dict(state)
    assert _picked(again) == full[3:]


def test_a_selector_without_usable_feature_columns_is_an_error_naming_the_column():
    with pytest.raises(DataError, match="feature_keys"):
        _stream(_rows(3, easy=[1, None, 2]), 1, selector_type="offline_easy2hard", feature_keys=["easy"])
    with pytest.raises(DataError, match="exactly two feature_keys"):
        _stream(_rows(3, easy=[1, 2, 3]), 1, selector_type="difficulty_based", feature_keys=["easy"])
