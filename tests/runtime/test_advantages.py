"""Advantages against hand-computed values, and the Tinker loss each algorithm trains with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from rft_runtime.algorithms import (
    AlgorithmError,
    Sample,
    batch_advantages,
    check_advantage_args,
    compute_advantages,
    loss_spec,
    needs_custom_kl_loss,
    normalise_batch,
)
from rft_runtime.config import ConfigError, load_config_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
approx = pytest.approx


# ---------------------------------------------------------------- grpo


def test_grpo_two_right_two_wrong():
    # mean 0.5; unbiased std = sqrt(4 * 0.25 / 3) = 0.57735; 0.5 / 0.57735 = 0.866025
    assert compute_advantages("grpo", [1.0, 0.0, 1.0, 0.0], {}) == approx([0.866025, -0.866025] * 2, rel=1e-5)


def test_grpo_uneven_group_and_epsilon():
    # [3, 1]: mean 2, std sqrt(2); with epsilon 0.5: 1 / (1.41421 + 0.5) = 0.522408
    assert compute_advantages("grpo", [3.0, 1.0], {}) == approx([0.707107, -0.707107], rel=1e-5)
    assert compute_advantages("grpo", [3.0, 1.0], {"epsilon": 0.5}) == approx([0.522408, -0.522408], rel=1e-5)


def test_grpo_format_bonus_rewards():
    # math_workflow rewards 1.1 (right, tags), -0.1 (wrong, no tags), 0.9, 0.1: mean 0.5,
    # deviations 0.6, -0.6, 0.4, -0.4; unbiased var = (0.36*2 + 0.16*2) / 3 = 0.346667, std 0.588784
    advs = compute_advantages("grpo", [1.1, -0.1, 0.9, 0.1], {})
    assert advs == approx([1.019049, -1.019049, 0.679366, -0.679366], rel=1e-5)


def test_grpo_group_of_one_is_its_reward_and_equal_rewards_give_zero():
    # Trinity: a group of one has mean 0 and std 1, so A = r / (1 + epsilon)
    assert compute_advantages("grpo", [1.1], {}) == approx([1.1 / (1 + 1e-6)])
    assert compute_advantages("grpo", [0.7, 0.7, 0.7], {}) == [0.0, 0.0, 0.0]
    assert compute_advantages("grpo", [], {}) == []


def test_grpo_std_threshold_drops_flat_groups_and_groups_of_one():
    samples = [Sample("a", 0, 1.0), Sample("a", 1, 1.0), Sample("b", 0, 1.0), Sample("b", 1, 0.0),
               Sample("c", 0, 1.0)]
    advs = batch_advantages("grpo", samples, {"std_threshold": 0.1})
    assert advs[:2] == [None, None] and advs[4] is None
    assert advs[2:4] == approx([0.707107, -0.707107], rel=1e-5)


def test_grpo_batch_std():
    # batch rewards [1, 0, 3, 3]: unbiased std 1.5; the mean stays the group's
    samples = [Sample("a", 0, 1.0), Sample("a", 1, 0.0), Sample("b", 0, 3.0), Sample("b", 1, 3.0)]
    advs = batch_advantages("grpo", samples, {"std_cal_level": "batch"})
    assert advs == approx([0.333333, -0.333333, 0.0, 0.0], rel=1e-5)


def test_grpo_rank_penalty_scales_rewards_by_logprob_rank():
    # ranks by mean logprob: -3 -> 0, -2 -> 1/3, -1 -> 2/3; rewards x (1 - rank * 0.5) = [0.6667, 0.8333, 0]
    samples = [Sample("a", i, r, mean_logprob=lp)
               for i, (r, lp) in enumerate([(1.0, -1.0), (1.0, -2.0), (0.0, -3.0)])]
    advs = batch_advantages("grpo", samples, {"rank_penalty": 0.5})
    assert advs == approx([0.377964, 0.755929, -1.133893], rel=1e-5)


def test_grpo_takes_trinitys_arguments_only():
    with pytest.raises(AlgorithmError, match="std_normalize not used by grpo"):
        compute_advantages("grpo", [1.0, 0.0], {"std_normalize": False})
    with pytest.raises(AlgorithmError, match="duplicate_experiences"):
        compute_advantages("grpo", [1.0, 0.0], {"duplicate_experiences": True})


# ---------------------------------------------------------------- opmd


def test_opmd_mean_baseline():
    assert compute_advantages("opmd", [1.0, 0.0, 0.0], {}) == approx([2 / 3, -1 / 3, -1 / 3])


def test_opmd_logavgexp_baseline():
    # tau 1: log((e + 2) / 3) = log(4.718282 / 3) = 0.452832
    advs = compute_advantages("opmd", [1.0, 0.0, 0.0], {"opmd_baseline": "logavgexp", "tau": 1.0})
    assert advs == approx([0.547168, -0.452832, -0.452832], rel=1e-5)
    # tau 0.5: 0.5 * log((e^2 + 2) / 3) = 0.5 * log(3.129685) = 0.5 * 1.140932 = 0.570466
    advs = compute_advantages("opmd", [1.0, 0.0, 0.0], {"opmd_baseline": "logavgexp", "tau": 0.5})
    assert advs == approx([0.429534, -0.570466, -0.570466], rel=1e-5)


def test_opmd_group_of_one_keeps_reward_and_equal_rewards_give_zero():
    # Trinity's opmd: baseline 0 for a lone rollout
    assert compute_advantages("opmd", [0.9], {}) == [0.9]
    assert compute_advantages("opmd", [0.5, 0.5], {}) == [0.0, 0.0]
    assert compute_advantages("opmd", [0.5, 0.5], {"opmd_baseline": "logavgexp", "tau": 2.0}) == [0.0, 0.0]


# ---------------------------------------------------------------- rloo


def test_rloo_leave_one_out():
    assert compute_advantages("rloo", [1.0, 0.0, 0.0], {}) == approx([1.0, -0.5, -0.5])
    # 2 - (4+6)/2 = -3; 4 - (2+6)/2 = 0; 6 - (2+4)/2 = 3
    assert compute_advantages("rloo", [2.0, 4.0, 6.0], {}) == approx([-3.0, 0.0, 3.0])


def test_rloo_group_of_one_and_equal_rewards_give_zero():
    assert compute_advantages("rloo", [1.0], {}) == [0.0]
    assert compute_advantages("rloo", [0.3, 0.3, 0.3, 0.3], {}) == [0.0] * 4


# ---------------------------------------------------------------- reinforce++ (whitened over the batch's tokens)


def test_reinforceplusplus_whitens_returns_over_the_batch_tokens():
    # returns [1, 0] with 3 and 1 response tokens: token mean 0.75, unbiased token var 0.25
    samples = [Sample("a", 0, 1.0, n_tokens=3), Sample("b", 0, 0.0, n_tokens=1)]
    assert batch_advantages("reinforceplusplus", samples) == approx([0.5, -1.5], rel=1e-6)
    assert normalise_batch([1.0, 0.0], weights=[3, 1]) == approx([0.5, -1.5], rel=1e-6)
    assert batch_advantages("reinforceplusplus", [Sample("a", 0, 0.8)]) == [0.0]
    assert normalise_batch([0.4, 0.4, 0.4]) == [0.0, 0.0, 0.0]


def test_reinforceplusplus_gamma_must_be_one():
    with pytest.raises(AlgorithmError, match="gamma must be 1.0"):
        compute_advantages("reinforceplusplus", [1.0, 0.0], {"gamma": 0.99})


# ---------------------------------------------------------------- asymre, rec, reinforce


def test_asymre_shifts_the_group_mean():
    assert compute_advantages("asymre", [1.0, 0.0]) == approx([0.6, -0.4])
    assert compute_advantages("asymre", [1.0, 0.0], {"baseline_shift": 0.2}) == approx([0.3, -0.7])
    assert compute_advantages("asymre", [0.7]) == approx([0.7])  # a group of one: baseline 0


def test_rec_mean_baseline_population_std_and_balance_drop():
    assert compute_advantages("rec", [1.0, 0.0, 0.0]) == approx([2 / 3, -1 / 3, -1 / 3])
    # population std of [1, 0, 0] = sqrt(2) / 3
    assert compute_advantages("rec", [1.0, 0.0, 0.0], {"std_normalize": True}) == approx(
        [1.414212, -0.707106, -0.707106], rel=1e-5)
    # two below the mean, one above: one of the two is dropped (advantage 0), the rest use mean 0.5
    assert sorted(compute_advantages("rec", [1.0, 0.0, 0.0], {"drop": "balance"})) == approx([-0.5, 0.0, 0.5])
    assert compute_advantages("rec", [0.4]) == approx([0.4])


def test_reinforce_is_the_reward():
    assert compute_advantages("reinforce", [1.0, 0.0, 0.5]) == [1.0, 0.0, 0.5]


# ---------------------------------------------------------------- multi-step: step_wise_grpo, gigpo


def _runs():
    # task t: run 0 has two turns (last reward 1.0), run 1 one turn (reward 0.0)
    return [Sample("t", 0, 0.3, step=0, info={"env_state_hash": "s0"}),
            Sample("t", 0, 1.0, step=1, info={"env_state_hash": "s1"}),
            Sample("t", 1, 0.0, step=0, info={"env_state_hash": "s0"})]


def test_step_wise_grpo_broadcasts_the_last_step_advantage_over_the_run():
    assert batch_advantages("step_wise_grpo", _runs()) == approx([0.707107, 0.707107, -0.707107], rel=1e-5)
    assert batch_advantages("step_wise_grpo", _runs(), {"enable_step_norm": True}) == approx(
        [0.353553, 0.353553, -0.707107], rel=1e-5)


def test_gigpo_adds_anchor_state_advantages_to_episode_advantages():
    # episode: totals [1, 0] -> A_E = +-0.5 (fnorm none); anchor s0: returns [1, 0] -> A_S = +-0.5; s1 alone: 0
    assert batch_advantages("gigpo", _runs()) == approx([1.0, 0.5, -1.0], rel=1e-5)
    assert batch_advantages("gigpo", _runs(), {"omega": 0.0}) == approx([0.5, 0.5, -0.5], rel=1e-5)


# ---------------------------------------------------------------- distillation: per-token advantages


def test_on_policy_distill_is_the_teacher_minus_the_sampler_per_token():
    s = Sample("t", 0, 0.0, info={"teacher_logprobs": [-0.5, -2.0]}, logprobs=[-1.0, -1.0])
    assert batch_advantages("on_policy_distill", [s]) == [approx([0.5, -1.0])]
    assert batch_advantages("on_policy_distill", [s], {"kl_coef": 2.0}) == [approx([1.0, -2.0])]
    with pytest.raises(AlgorithmError, match="teacher's logprob of every response token"):
        batch_advantages("on_policy_distill", [Sample("t", 0, 0.0, logprobs=[-1.0])])


def test_jsd_advantage_per_token():
    s = Sample("t", 0, 0.0, info={"teacher_logprobs": [-0.5]}, logprobs=[-1.0])
    assert batch_advantages("jsd", [s], {"lambda_coef": 0.0}) == [approx([0.5])]  # -(s - t)
    assert batch_advantages("jsd", [s], {"lambda_coef": 1.0}) == [approx([-0.5])]  # -(t - s)
    # lambda 0.5: m = log(0.5 e^-0.5 + 0.5 e^-1) = log(0.487205) = -0.719070;
    # JSD = 0.5 (t - m) + 0.5 (s - m) = 0.5 (0.219070) + 0.5 (-0.280930) = -0.030930, A = -JSD
    assert batch_advantages("jsd", [s]) == [approx([0.030930], rel=1e-4)]
    # same logprobs: nothing to learn
    same = Sample("t", 0, 0.0, info={"teacher_logprobs": [-1.0]}, logprobs=[-1.0])
    assert batch_advantages("jsd", [same]) == [approx([0.0], abs=1e-12)]


# ---------------------------------------------------------------- bad input


def test_unknown_function_argument_and_bad_rewards_are_named():
    with pytest.raises(AlgorithmError, match="advantage_fn 'ppo' cannot run on Tinker: GAE needs a critic"):
        compute_advantages("ppo", [1.0, 0.0], {})
    with pytest.raises(AlgorithmError, match="eps not used by grpo"):
        compute_advantages("grpo", [1.0, 0.0], {"eps": 1e-3})
    assert check_advantage_args("opmd", {"opmd_baseline": "logavgexp", "tau": 0.5}) == {
        "opmd_baseline": "logavgexp", "tau": 0.5}
    with pytest.raises(AlgorithmError, match="finite"):
        compute_advantages("grpo", [1.0, math.nan], {})


# ---------------------------------------------------------------- losses, from a real config


def job(tmp_path, **algorithm) -> object:
    raw = yaml.safe_load((EXAMPLES / "tinker.yaml").read_text())
    raw["checkpoint_root_dir"] = str(tmp_path)
    raw["algorithm"].update(algorithm)
    return load_config_dict(raw)


@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforceplusplus", "opmd"])
def test_rl_algorithms_use_one_builtin_tinker_loss(tmp_path, algo):
    name, config = loss_spec(job(tmp_path, algorithm_type=algo))
    if algo == "opmd":  # -A logp / (1 + tau): cispo with its weight clipped to exactly 1
        assert (name, config) == ("cispo", {"clip_low_threshold": 1.0, "clip_high_threshold": 1.0})
    else:
        assert name == "ppo"
        assert config == approx({"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})


def test_clip_ranges_from_policy_loss_fn_args(tmp_path):
    cfg = job(tmp_path, algorithm_type="grpo", policy_loss_fn_args={"clip_range": 0.3})
    assert loss_spec(cfg)[1] == approx({"clip_low_threshold": 0.7, "clip_high_threshold": 1.3})
    # DAPO-style asymmetric clip: each side overrides clip_range
    cfg = job(tmp_path, algorithm_type="grpo",
              policy_loss_fn_args={"clip_range": 0.3, "clip_range_low": 0.2, "clip_range_high": 0.28})
    assert loss_spec(cfg)[1] == approx({"clip_low_threshold": 0.8, "clip_high_threshold": 1.28})


def test_sft_uses_cross_entropy(tmp_path):
    raw = yaml.safe_load((EXAMPLES / "tinker.yaml").read_text())
    raw["checkpoint_root_dir"] = str(tmp_path)
    raw["mode"] = "train"
    raw["algorithm"] = {"algorithm_type": "sft", "optimizer": {"lr": 1e-5}}
    raw["buffer"]["trainer_input"]["experience_buffer"] = {
        "name": "sft", "storage_type": "file", "path": str(tmp_path / "sft.jsonl")}
    assert loss_spec(load_config_dict(raw)) == ("cross_entropy", None)


def test_kl_needs_a_custom_loss_only_when_its_coefficient_is_positive(tmp_path):
    assert not needs_custom_kl_loss(job(tmp_path, algorithm_type="grpo"))  # the seed sets kl_coef 0.0
    assert needs_custom_kl_loss(job(tmp_path, algorithm_type="grpo", kl_loss_fn_args={"kl_coef": 0.001}))


def test_a_bad_clip_range_is_named(tmp_path):
    # caught when the config is loaded (before any rollout), and by loss_spec for configs built otherwise
    with pytest.raises(ConfigError, match="algorithm.policy_loss_fn_args.clip_range_low"):
        job(tmp_path, algorithm_type="grpo", policy_loss_fn_args={"clip_range_low": 1.5})
    cfg = job(tmp_path, algorithm_type="grpo")
    cfg.algorithm.policy_loss_fn_args = {"clip_range_low": 1.5}
    with pytest.raises(AlgorithmError, match="clip_range_low"):
        loss_spec(cfg)
