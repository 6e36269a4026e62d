"""Advantages against hand-computed values, and the Tinker loss each algorithm trains with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from rft_runtime.algorithms import (
    AlgorithmError,
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


def test_grpo_group_of_one_and_equal_rewards_give_zero():
    assert compute_advantages("grpo", [1.1], {}) == [0.0]
    assert compute_advantages("grpo", [0.7, 0.7, 0.7], {}) == [0.0, 0.0, 0.0]
    assert compute_advantages("grpo", [], {}) == []


def test_grpo_without_std_normalisation():
    assert compute_advantages("grpo", [1.0, 0.0, 0.0, 0.0], {"std_normalize": False}) == approx(
        [0.75, -0.25, -0.25, -0.25])


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


# ---------------------------------------------------------------- reinforce++


def test_reinforceplusplus_group_step_then_batch_whitening():
    # two tasks' groups; no group baseline (Trinity's), then whitening over all four rollouts:
    # mean 0.5, unbiased var 1/3 -> +-0.866025
    batch = compute_advantages("reinforceplusplus", [1.0, 0.0], {}) + compute_advantages(
        "reinforceplusplus", [1.0, 0.0], {})
    assert batch == [1.0, 0.0, 1.0, 0.0]
    assert normalise_batch(batch) == approx([0.866025, -0.866025] * 2, rel=1e-5)


def test_reinforceplusplus_token_weighted_whitening():
    # rollout rewards [1, 0] with 3 and 1 response tokens: token values 1,1,1,0 -> mean 0.75,
    # unbiased var (3 * 0.0625 + 0.5625) / 3 = 0.25 -> (1 - 0.75) / 0.5 = 0.5, (0 - 0.75) / 0.5 = -1.5
    assert normalise_batch([1.0, 0.0], weights=[3, 1]) == approx([0.5, -1.5], rel=1e-6)


def test_reinforceplusplus_group_baseline_option():
    assert compute_advantages("reinforceplusplus", [1.0, 0.0, 0.0, 0.0], {"group_baseline": True}) == approx(
        [0.75, -0.25, -0.25, -0.25])


def test_reinforceplusplus_group_of_one_and_equal_rewards():
    assert normalise_batch(compute_advantages("reinforceplusplus", [0.8], {})) == [0.0]
    # exact zeros: the trainer skips rollouts whose advantage is 0
    assert normalise_batch([0.4, 0.4, 0.4]) == [0.0, 0.0, 0.0]


def test_reinforceplusplus_refuses_discounting():
    with pytest.raises(AlgorithmError, match="gamma"):
        compute_advantages("reinforceplusplus", [1.0, 0.0], {"gamma": 0.99})


# ---------------------------------------------------------------- bad input


def test_unknown_algorithm_and_argument_are_named():
    with pytest.raises(AlgorithmError, match="'ppo'.*grpo, opmd, rloo, reinforceplusplus"):
        compute_advantages("ppo", [1.0, 0.0], {})
    with pytest.raises(AlgorithmError, match=r"advantage_fn_args: eps not used by grpo \(accepted: epsilon"):
        compute_advantages("grpo", [1.0, 0.0], {"eps": 1e-3})
    # the same check, before any rollout
    with pytest.raises(AlgorithmError, match="eps not used by grpo"):
        check_advantage_args("grpo", {"eps": 1e-3})
    assert check_advantage_args("opmd", {"opmd_baseline": "logavgexp", "tau": 0.5}) == "opmd"
    with pytest.raises(AlgorithmError, match="finite"):
        compute_advantages("grpo", [1.0, math.nan], {})


# ---------------------------------------------------------------- losses, from a real config


def job(tmp_path, **algorithm) -> object:
    raw = yaml.safe_load((EXAMPLES / "tinker.yaml").read_text())
    raw["checkpoint_root_dir"] = str(tmp_path)
    raw["algorithm"].update(algorithm)
    return load_config_dict(raw)


@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforceplusplus", "opmd"])
def test_rl_algorithms_use_tinkers_ppo_loss_with_default_clip(tmp_path, algo):
    name, config = loss_spec(job(tmp_path, algorithm_type=algo))
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
