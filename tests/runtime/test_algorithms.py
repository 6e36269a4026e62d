"""Policy losses, KL and entropy terms and loss aggregation against values computed by hand; the built-in
Tinker loss each plan picks gives the same loss and gradient as Trinity's formula; every Trinity algorithm
type and loss setting is either trained or refused with a reason (none accepted and then ignored)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from rft_runtime.algorithms import (
    AGG_MODES,
    ALGORITHMS,
    AlgorithmError,
    agg_scales,
    loss_plan,
)
from rft_runtime.config import ConfigError, load_config_dict
from rft_runtime.config.trinity_facts import REGISTRIES

torch = pytest.importorskip("torch")
from rft_runtime.algorithms import terms  # noqa: E402  (needs torch)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
approx = pytest.approx
L15 = math.log(1.5)


def job(tmp_path, teacher=False, **algorithm):
    """The Tinker example config with `algorithm` fields set (and a teacher model, and expert data for mix),
    loaded and validated."""
    raw = yaml.safe_load((EXAMPLES / "tinker.yaml").read_text())
    raw["checkpoint_root_dir"] = str(tmp_path)
    raw["algorithm"].update(algorithm)
    if algorithm.get("algorithm_type") in ("mix", "mix_chord"):
        raw["buffer"]["trainer_input"]["auxiliary_buffers"] = {"sft_dataset": {
            "name": "sft_dataset", "storage_type": "file", "path": str(tmp_path / "expert.jsonl")}}
    if teacher:
        raw.setdefault("explorer", {})["auxiliary_models"] = [{"model_path": raw["model"]["model_path"]}]
    return load_config_dict(raw)


def run_terms(plan, ratios, adv, ref=None, scale=None):
    """Loss, metrics and d loss / d logprob of one two-token experience (old logprobs 0, so lp = log r)."""
    lp = torch.tensor([math.log(r) for r in ratios], requires_grad=True)
    seq = terms.make_seq(0, [0.0] * len(ratios), adv, [1] * len(ratios),
                         scale if scale is not None else 1 / len(ratios), ref)
    loss, metrics = terms.compute_terms(plan, [seq], [lp])
    loss.backward()
    return float(loss), metrics, lp.grad.tolist()


def plan_of(tmp_path, **algorithm):
    return loss_plan(job(tmp_path, **algorithm))


def test_distillation_needs_a_teacher_model(tmp_path):
    with pytest.raises(ConfigError, match=r"explorer.auxiliary_models.*on_policy_distill distils from a teacher"):
        job(tmp_path, algorithm_type="on_policy_distill")
    assert loss_plan(job(tmp_path, teacher=True, algorithm_type="jsd")).advantage_fn == "jsd"


# ---------------------------------------------------------------- policy losses by hand


def test_ppo_clips_both_sides_and_dual_clips_negative_advantages(tmp_path):
    plan = plan_of(tmp_path, algorithm_type="grpo", policy_loss_fn_args={"clip_range": 0.2, "clip_ratio_c": 3.0})
    assert plan.custom  # dual clip set explicitly: trained client-side
    # A = 1, ratios 1.5 (clipped at 1.2: no gradient) and 1.0: losses -1.2, -1.0, token mean -1.1
    loss, m, grad = run_terms(plan, [1.5, 1.0], 1.0)
    assert loss == approx(-1.1) and m["actor/pg_clipfrac"] == 0.5
    assert grad == approx([0.0, -0.5])
    # A = -1, ratio 0.5 (below 0.8: loss 0.8, constant) and 4.0 (loss 4 capped at clip_ratio_c 3, constant)
    loss, m, grad = run_terms(plan, [0.5, 4.0], -1.0)
    assert loss == approx(1.9) and grad == approx([0.0, 0.0]) and m["actor/pg_clipfrac"] == 0.5
    # ppo_kl: mean of old - new logprob
    assert m["actor/ppo_kl"] == approx(-(math.log(0.5) + math.log(4.0)) / 2)


def test_gspo_uses_the_sequence_ratio_for_every_token(tmp_path):
    # given args start from the constructor's defaults (as in Trinity): clip_range sets both sides
    plan = plan_of(tmp_path, algorithm_type="gspo", policy_loss_fn_args={"clip_range": 0.2})
    assert plan.policy_args["clip_range_low"] is None and plan.policy_args["clip_range_high"] is None
    # ratios 1.1, 1.0: sequence ratio exp(log(1.1) / 2) = 1.048809, inside the clip: loss -s, grad -s / 2 each
    loss, m, grad = run_terms(plan, [1.1, 1.0], 1.0)
    assert loss == approx(-1.048809, rel=1e-6) and grad == approx([-0.524404, -0.524404], rel=1e-5)
    # ratios 1.5, 1.0: sequence ratio 1.224745 > 1.2: both tokens clipped, no gradient
    loss, m, grad = run_terms(plan, [1.5, 1.0], 1.0)
    assert loss == approx(-1.2) and grad == approx([0.0, 0.0]) and m["actor/pg_clipfrac"] == 1.0


def test_cispo_sapo_topr_sppo_importance_sampling_opmd(tmp_path):
    # cispo (Trinity defaults: ratio clamped to [0, 1.28]): -A sg(w) logp, w = [1.28, 1.0]
    loss, m, grad = run_terms(plan_of(tmp_path, algorithm_type="cispo", kl_loss_fn="none",
                                      entropy_loss_fn_args={"entropy_coef": 0.0}), [1.5, 1.0], 1.0)
    assert loss == approx(-0.5 * 1.28 * L15) and grad == approx([-0.64, -0.5])
    # with enable_mask_clip, a positive-advantage token whose ratio is over 1.28 carries no loss at all
    loss, m, grad = run_terms(plan_of(tmp_path, algorithm_type="cispo", kl_loss_fn="none",
                                      policy_loss_fn_args={"enable_mask_clip": True}), [1.5, 1.0], 1.0)
    assert loss == approx(0.0) and grad == approx([0.0, -0.5])
    # sapo (tau_pos 1): gate 4 sigmoid(r - 1) = [2.489837, 2.0]
    loss, m, grad = run_terms(plan_of(tmp_path, algorithm_type="sapo"), [1.5, 1.0], 1.0)
    assert loss == approx(-0.5 * 2.489837 * L15, rel=1e-6) and grad == approx([-1.244919, -1.0], rel=1e-6)
    # topr, reward -1 <= threshold 0: alpha = clamp(r, 0, 1) = [1, 0.5]; loss -alpha A logp
    loss, m, grad = run_terms(plan_of(tmp_path, algorithm_type="topr"), [1.5, 0.5], -1.0)
    assert loss == approx(0.5 * (L15 + 0.5 * math.log(0.5))) and grad == approx([0.5, 0.25])
    # sppo (epsilon 0.3): ratio 1.5 is outside [1/1.3, 1.3], so only the second token has a gradient
    loss, m, grad = run_terms(plan_of(tmp_path, algorithm_type="sppo"), [1.5, 1.0], 1.0)
    assert loss == approx(0.0) and grad == approx([0.0, -0.5]) and m["actor/pg_clipfrac"] == 0.5
    # importance_sampling: -A r
    plan = plan_of(tmp_path, algorithm_type="grpo", policy_loss_fn="importance_sampling")
    loss, m, grad = run_terms(plan, [1.5, 1.0], 1.0)
    assert loss == approx(-1.25) and grad == approx([-0.75, -0.5])
    # opmd (tau 1): -A logp / 2
    loss, m, grad = run_terms(plan_of(tmp_path, algorithm_type="opmd"), [1.5, 1.0], 1.0)
    assert loss == approx(-0.25 * L15) and grad == approx([-0.25, -0.25])


def test_rec_two_side_clip_masks_tokens_outside_the_range(tmp_path):
    plan = plan_of(tmp_path, algorithm_type="rec", policy_loss_fn_args={"clip_mode": "two-side"})
    # ratio 1.5 is outside [0.8, 1.2]: masked; token 2 keeps -A logp
    loss, m, grad = run_terms(plan, [1.5, 1.0], 1.0)
    assert loss == approx(0.0) and grad == approx([0.0, -0.5]) and m["actor/pg_clipfrac"] == 0.5


# ---------------------------------------------------------------- KL, entropy, aggregation


@pytest.mark.parametrize("fn, per_token", [
    ("k1", L15), ("abs", L15), ("k2", 0.5 * L15 ** 2), ("k3", 2 / 3 - 1 + L15), ("low_var_kl", 2 / 3 - 1 + L15),
    ("corrected_k3", 1.5 * (2 / 3 - 1 + L15)),
])
def test_kl_estimators_against_the_reference(tmp_path, fn, per_token):
    # policy logprob log 1.5 vs reference 0 on token 1, equal on token 2; token mean halves it
    plan = plan_of(tmp_path, algorithm_type="grpo", kl_loss_fn=fn, kl_loss_fn_args={"kl_coef": 0.1})
    assert plan.uses_reference and plan.custom
    loss, m, _ = run_terms(plan, [1.5, 1.0], 0.0, ref=[0.0, 0.0])
    assert m["actor/kl_loss"] == approx(per_token / 2, rel=1e-6)
    assert loss == approx(m["actor/pg_loss"] + 0.1 * m["actor/kl_loss"], rel=1e-6)


def test_kl_estimator_alone_uses_trinitys_coefficient(tmp_path):
    assert plan_of(tmp_path, algorithm_type="grpo", kl_loss_fn="k3", kl_loss_fn_args=None).kl_coef == 0.001
    assert plan_of(tmp_path, algorithm_type="dapo").kl_coef == 0.0


def test_entropy_bonus_is_the_sampled_token_estimate_with_a_score_function_gradient(tmp_path):
    plan = plan_of(tmp_path, algorithm_type="grpo", entropy_loss_fn_args={"entropy_coef": 0.1})
    lp = [math.log(0.5), math.log(0.25)]
    loss, m, grad = run_terms(plan, [0.5, 0.25], 0.0)
    # value: mean -logp; gradient of -coef * H: coef * logp * scale per token
    assert m["actor/entropy_loss"] == approx(-(lp[0] + lp[1]) / 2)
    assert loss == approx(-0.1 * m["actor/entropy_loss"])
    assert grad == approx([0.1 * lp[0] / 2, 0.1 * lp[1] / 2])


def test_loss_agg_modes_weight_tokens_as_trinity_aggregates():
    lengths = [2, 1]
    assert agg_scales("token-mean", lengths) == approx([1 / 3, 1 / 3])
    assert agg_scales("seq-mean-token-sum", lengths) == approx([1 / 2, 1 / 2])
    assert agg_scales("seq-mean-token-mean", lengths) == approx([1 / 4, 1 / 2])
    assert agg_scales("seq-mean-token-sum-norm", lengths, normalizer=4) == approx([1 / 4, 1 / 4])
    assert agg_scales("seq-mean-token-sum-norm", lengths) == approx([1 / 2, 1 / 2])  # the longest: 2
    assert agg_scales("token-mean", [0, 2]) == [0.0, 0.5]


# ---------------------------------------------------------------- built-in losses equal Trinity's formula


@pytest.mark.parametrize("algorithm, fields", [
    ("grpo", {}), ("grpo", {"policy_loss_fn": "importance_sampling"}), ("cispo", {"kl_loss_fn": "none"}),
    ("opmd", {}), ("asymre", {}),
])
def test_the_builtin_tinker_loss_gives_trinitys_loss_and_gradient(tmp_path, algorithm, fields):
    from rft_runtime.engine import losses as engine_losses

    plan = plan_of(tmp_path, algorithm_type=algorithm, **fields)
    name, config = plan.builtin
    ratios, adv, scale = [1.1, 0.9, 1.05], -0.7, 1 / 3
    lp_a = torch.tensor([math.log(r) for r in ratios], requires_grad=True)
    inputs = {"logprobs": torch.zeros(3), "advantages": torch.full((3,), adv * plan.advantage_factor * scale)}
    server = engine_losses.token_losses(name, lp_a, inputs, config or {}).sum()
    server.backward()
    loss, _, grad = run_terms(plan, ratios, adv, scale=scale)
    assert float(server) == approx(loss, rel=1e-5, abs=1e-7)
    assert lp_a.grad.tolist() == approx(grad, rel=1e-5, abs=1e-7)


def test_default_ppo_is_one_builtin_pass_and_says_what_it_leaves_out(tmp_path):
    plan = plan_of(tmp_path, algorithm_type="grpo")
    assert plan.builtin == ("ppo", approx({"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}))
    assert any("dual clip" in n for n in plan.notes)
    assert plan_of(tmp_path, algorithm_type="gspo").custom
    assert plan_of(tmp_path, algorithm_type="grpo", loss_agg_mode="seq-mean-token-sum").builtin


def test_zero_advantage_rollouts_are_skipped_only_when_no_other_term_trains(tmp_path):
    assert plan_of(tmp_path, algorithm_type="grpo").only_policy_gradient()
    assert not plan_of(tmp_path, algorithm_type="grpo", kl_loss_fn_args={"kl_coef": 0.01}).only_policy_gradient()
    assert not plan_of(tmp_path, algorithm_type="grpo",
                       entropy_loss_fn_args={"entropy_coef": 0.01}).only_policy_gradient()
    assert not plan_of(tmp_path, algorithm_type="raft").only_policy_gradient()


# ---------------------------------------------------------------- every algorithm type: trained or refused


def test_every_trinity_algorithm_type_is_in_the_registry():
    assert set(REGISTRIES["algorithms"]) == set(ALGORITHMS)


@pytest.mark.parametrize("algorithm", sorted(n for n, s in ALGORITHMS.items() if s.refusal))
def test_a_refused_algorithm_names_itself_the_reason_and_an_alternative(tmp_path, algorithm):
    with pytest.raises(ConfigError) as err:
        job(tmp_path, algorithm_type=algorithm)
    text = str(err.value)
    assert "algorithm.algorithm_type" in text and repr(algorithm) in text
    assert ALGORITHMS[algorithm].refusal in text
    assert "use " in ALGORITHMS[algorithm].refusal


@pytest.mark.parametrize("algorithm", sorted(n for n, s in ALGORITHMS.items() if not s.refusal and s.data == "rollouts"))
def test_a_trained_algorithm_loads_with_its_own_parts(tmp_path, algorithm):
    spec = ALGORITHMS[algorithm]
    plan = loss_plan(job(tmp_path, teacher=True, algorithm_type=algorithm))
    assert plan.policy_loss == spec.policy_loss_fn and plan.advantage_fn == spec.advantage_fn


# ---------------------------------------------------------------- every loss setting: honoured or refused


SETTINGS = (
    [("policy_loss_fn", n) for n in REGISTRIES["policy_loss_fns"]]
    + [("advantage_fn", n) for n in REGISTRIES["advantage_fns"]]
    + [("kl_loss_fn", n) for n in REGISTRIES["kl_fns"]]
    + [("kl_penalty_fn", n) for n in REGISTRIES["kl_fns"]]
    + [("entropy_loss_fn", n) for n in REGISTRIES["entropy_loss_fns"]]
    + [("sample_strategy", n) for n in REGISTRIES["sample_strategies"]]
    + [("loss_agg_mode", n) for n in AGG_MODES]
)


@pytest.mark.parametrize("field, value", SETTINGS)
def test_every_loss_setting_is_honoured_or_refused_with_its_field(tmp_path, field, value):
    fields = {field: value}
    if field == "entropy_loss_fn":
        fields["entropy_loss_fn_args"] = {"entropy_coef": 0.01}
    if field == "kl_penalty_fn":
        fields["kl_penalty_fn_args"] = {"kl_coef": 0.01}
    try:
        cfg = job(tmp_path, teacher=True, algorithm_type="grpo", **fields)
    except ConfigError as exc:
        text = str(exc)
        assert f"algorithm.{field}" in text and repr(value) in text, text
        return
    plan = loss_plan(cfg)
    honoured = {
        "policy_loss_fn": plan.policy_loss, "advantage_fn": plan.advantage_fn, "kl_loss_fn": plan.kl_fn,
        "loss_agg_mode": plan.agg_mode,
    }
    if field in honoured:
        assert honoured[field] == value
    elif field == "entropy_loss_fn":
        assert plan.entropy_coef == (0.0 if value == "none" else 0.01)
    elif field == "kl_penalty_fn":
        # no penalty: the rewards are the scores, as asked, or (grpo computes its advantages outside the trainer,
        # where Trinity never reads kl_penalty_fn) as Trinity trains it, said with the reason
        assert value == "none" or [w for w in plan.warnings if w.startswith("algorithm.kl_penalty_fn: ")
                                   and "no effect on the Tinker backend" in w]
    elif field == "sample_strategy":
        # warmup is Trinity's deprecated alias of default; staleness_control (max_staleness inf) drops nothing
        assert value in ("default", "warmup", "staleness_control")


def test_staleness_control_holds_when_sync_offset_is_within_max_staleness(tmp_path):
    raw = yaml.safe_load((EXAMPLES / "tinker.yaml").read_text())
    raw["checkpoint_root_dir"] = str(tmp_path)
    raw["synchronizer"]["sync_offset"] = 1
    raw["algorithm"].update(sample_strategy="staleness_control", sample_strategy_args={"max_staleness": 1})
    assert loss_plan(load_config_dict(raw)).policy_loss == "ppo"
    raw["algorithm"]["sample_strategy_args"] = {"max_staleness": 0}
    with pytest.raises(ConfigError, match=r"max_staleness: 0 is below synchronizer.sync_offset 1"):
        load_config_dict(raw)


def test_unknown_loss_arguments_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"algorithm.policy_loss_fn_args.*tau_pos not used by gspo"):
        job(tmp_path, algorithm_type="gspo", policy_loss_fn_args={"tau_pos": 1.0})
    with pytest.raises(ConfigError, match=r"algorithm.entropy_loss_fn_args.*entropy_cof"):
        job(tmp_path, algorithm_type="grpo", entropy_loss_fn_args={"entropy_cof": 0.1})
    with pytest.raises(ConfigError, match=r"algorithm.policy_loss_fn_args.loss_agg_mode"):
        job(tmp_path, algorithm_type="grpo", policy_loss_fn_args={"loss_agg_mode": "seq-mean-token-sum"})
    with pytest.raises(AlgorithmError, match="clip_ratio_c must be > 1"):
        plan = job(tmp_path, algorithm_type="grpo")
        plan.algorithm.policy_loss_fn_args = {"clip_ratio_c": 1.0}
        loss_plan(plan)


def test_dpo_loss_over_a_pair(tmp_path):
    from rft_runtime.algorithms.losses import LossPlan

    plan = LossPlan("dpo", None, {}, "dpo", {"beta": 0.1, "label_smoothing": 0.0}, "token-mean")
    # chosen: policy 2 x log 0.5 vs reference 2 x log 0.25 -> ratio 2 log 2; rejected: equal -> 0
    chosen = torch.tensor([math.log(0.5)] * 2, requires_grad=True)
    rejected = torch.tensor([math.log(0.5)], requires_grad=True)
    seqs = [terms.make_seq(0, [0.0] * 2, 0.0, [1, 1], 1.0, [math.log(0.25)] * 2),
            terms.make_seq(0, [0.0], 0.0, [1], 1.0, [math.log(0.5)])]
    loss, m = terms.compute_terms(plan, seqs, [chosen, rejected])
    loss.backward()
    z = 2 * math.log(2)
    assert float(loss) == approx(math.log(1 + math.exp(-0.1 * z)))
    g = 0.1 / (1 + math.exp(0.1 * z))  # beta * sigmoid(-beta z)
    assert chosen.grad.tolist() == approx([-g, -g]) and rejected.grad.tolist() == approx([g])
    assert m["actor/accuracy_mean"] == 1.0 and m["actor/chosen_reward"] == approx(0.1 * z)


def test_mix_weighs_the_rollouts_ppo_against_the_expert_sft(tmp_path):
    from rft_runtime.algorithms.losses import POLICY_LOSSES, LossPlan

    plan = LossPlan("mix", "grpo", {}, "mix", dict(POLICY_LOSSES["mix"]), "token-mean")
    rollout = torch.zeros(2, requires_grad=True)  # ratio 1 on both tokens, A = 1: ppo loss -1 per token
    expert = torch.tensor([math.log(0.5)], requires_grad=True)
    seqs = [terms.make_seq(0, [0.0, 0.0], 1.0, [1, 1], 0.5), terms.make_seq(0, [0.0], 0.0, [1], 1.0)]
    seqs[1].expert = True
    loss, m = terms.compute_terms(plan, seqs, [rollout, expert])
    loss.backward()
    assert m["actor/pg_loss"] == approx(-1.0) and m["actor/sft_loss"] == approx(math.log(2))
    assert float(loss) == approx(0.9 * -1.0 + 0.1 * math.log(2))
    assert rollout.grad.tolist() == approx([-0.45, -0.45]) and expert.grad.tolist() == approx([-0.1])


# ---------------------------------------------------------------- CHORD (mix_chord), sft_is, sft_phi


def test_chord_mu_warms_up_linearly_then_decays_by_cosine_to_the_valley():
    from rft_runtime.algorithms.policy_losses import mu_at

    args = {"mu_warmup_steps": 2, "mu_decay_steps": 2, "mu_peak": 0.5, "mu_valley": 0.1}
    # Trinity's trainer counts steps from 1: warm-up step/2 * 0.5, then 0.1 + 0.4 * (1 + cos(pi k / 2)) / 2
    assert [mu_at(args, s) for s in range(1, 6)] == approx([0.25, 0.5, 0.3, 0.1, 0.1])
    # Trinity's defaults: no warm-up, no decay, mu 0.1 throughout
    flat = {"mu_warmup_steps": 0, "mu_decay_steps": 0, "mu_peak": 0.1, "mu_valley": 0.1}
    assert [mu_at(flat, s) for s in (1, 50)] == approx([0.1, 0.1])


def test_mix_chord_weighs_the_expert_tokens_by_phi_at_the_scheduled_mu(tmp_path):
    plan = plan_of(tmp_path, algorithm_type="mix_chord",
                   policy_loss_fn_args={"mu_warmup_steps": 2, "mu_decay_steps": 2, "mu_peak": 0.5, "mu_valley": 0.1,
                                        "clip_range": 0.2})
    assert plan.is_mix and plan.custom and plan.policy_args["enable_phi_function"] is True
    rollout = torch.zeros(2, requires_grad=True)  # ratio 1, A = 1: ppo loss -1 per token
    expert = torch.tensor([math.log(0.5), math.log(0.25)], requires_grad=True)
    seqs = [terms.make_seq(0, [0.0, 0.0], 1.0, [1, 1], 0.5), terms.make_seq(0, [0.0, 0.0], 0.0, [1, 1], 0.5)]
    seqs[1].expert = True
    loss, m = terms.compute_terms(plan, seqs, [rollout, expert], step=3)
    loss.backward()
    # step 3: mu 0.3; sft_phi per token -lp * p (1 - p): 0.25 log 2 and 0.1875 log 4, token mean
    phi = (0.25 * math.log(2) + 0.1875 * math.log(4)) / 2
    assert m["actor/mu"] == approx(0.3) and m["actor/expert/sft_phi_loss"] == approx(phi)
    assert float(loss) == approx(0.7 * -1.0 + 0.3 * phi)
    assert rollout.grad.tolist() == approx([-0.35, -0.35])
    assert expert.grad.tolist() == approx([-0.3 * 0.25 / 2, -0.3 * 0.1875 / 2])


def test_mix_chord_without_phi_is_mix_with_a_scheduled_mu(tmp_path):
    plan = plan_of(tmp_path, algorithm_type="mix_chord",
                   policy_loss_fn_args={"enable_phi_function": False, "clip_range": 0.2, "mu_peak": 0.4,
                                        "mu_valley": 0.4})
    expert = torch.tensor([math.log(0.5)], requires_grad=True)
    seq = terms.make_seq(0, [0.0], 0.0, [1], 1.0)
    seq.expert = True
    loss, m = terms.compute_terms(plan, [seq], [expert], step=1)
    assert float(loss) == approx(0.4 * math.log(2)) and m["actor/expert/sft_loss"] == approx(math.log(2))


def test_mix_chord_given_args_need_a_clip_range_as_trinitys_constructor_does(tmp_path):
    with pytest.raises(ConfigError, match=r"algorithm.policy_loss_fn_args: needs clip_range"):
        plan_of(tmp_path, algorithm_type="mix_chord", policy_loss_fn_args={"mu_peak": 0.2})
    with pytest.raises(ConfigError, match=r"algorithm.policy_loss_fn_args.mu_warmup_steps: must be a whole number"):
        plan_of(tmp_path, algorithm_type="mix_chord", policy_loss_fn_args={"mu_warmup_steps": -1, "clip_range": 0.2})


def test_sft_is_and_sft_phi_reweight_the_cross_entropy(tmp_path):
    lp = [math.log(0.5), math.log(0.25)]
    loss, m, grad = run_terms(plan_of(tmp_path, algorithm_type="raft", policy_loss_fn="sft_is"), [0.5, 0.25], 0.0)
    assert m["actor/sft_is_loss"] == approx(-(0.5 * lp[0] + 0.25 * lp[1]) / 2) and grad == approx([-0.25, -0.125])
    plan = plan_of(tmp_path, algorithm_type="raft", policy_loss_fn="sft_phi", policy_loss_fn_args={"cutoff_prob": 0.4})
    loss, m, grad = run_terms(plan, [0.5, 0.25], 0.0)
    # the first token is above the cutoff: its logprob is clamped at log 0.4 and carries no gradient
    assert loss == approx(-(0.25 * math.log(0.4) + 0.1875 * lp[1]) / 2) and grad == approx([0.0, -0.1875 / 2])


def test_mix_trains_no_kl_term_and_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"algorithm.kl_loss_fn_args.kl_coef: mix trains no KL term on Tinker"):
        plan_of(tmp_path, algorithm_type="mix", kl_loss_fn="k2", kl_loss_fn_args={"kl_coef": 0.1})
    assert plan_of(tmp_path, algorithm_type="mix_chord", kl_loss_fn_args={"kl_coef": 0.0}).kl_coef == 0.0


# ---------------------------------------------------------------- dpo with a KL term


def dpo_job(tmp_path, **algorithm):
    raw = yaml.safe_load((EXAMPLES / "tinker.yaml").read_text())
    raw["checkpoint_root_dir"] = str(tmp_path)
    raw["mode"] = "train"
    raw["algorithm"] = {"algorithm_type": "dpo", **algorithm}
    raw["buffer"]["trainer_input"] = {"experience_buffer": {"name": "pairs", "storage_type": "file",
                                                            "path": str(tmp_path / "pairs.jsonl")}}
    return load_config_dict(raw)


def test_dpo_trains_trinitys_kl_term_beside_the_pair_loss(tmp_path):
    plan = loss_plan(dpo_job(tmp_path, kl_loss_fn="k1", kl_loss_fn_args={"kl_coef": 0.1}))
    assert (plan.kl_fn, plan.kl_coef, plan.is_dpo, plan.custom) == ("k1", 0.1, True, True)
    # the dpo_humanlike example's pair; the KL term is token-mean over both replies' tokens
    chosen = torch.tensor([math.log(0.5)] * 2, requires_grad=True)
    rejected = torch.tensor([math.log(0.5)], requires_grad=True)
    seqs = [terms.make_seq(0, [0.0] * 2, 0.0, [1, 1], 1 / 3, [math.log(0.25)] * 2),
            terms.make_seq(0, [0.0], 0.0, [1], 1 / 3, [math.log(0.5)])]
    loss, m = terms.compute_terms(plan, seqs, [chosen, rejected])
    loss.backward()
    z = 2 * math.log(2)
    kl = 2 * math.log(2) / 3  # k1: lp - ref, log 2 on each chosen token, 0 on the rejected one
    assert m["actor/dpo_loss"] == approx(math.log(1 + math.exp(-0.1 * z)))
    assert m["actor/kl_loss"] == approx(kl) and m["actor/kl_coef"] == 0.1
    assert float(loss) == approx(m["actor/dpo_loss"] + 0.1 * kl)
    g = 0.1 / (1 + math.exp(0.1 * z))
    assert chosen.grad.tolist() == approx([-g + 0.1 / 3] * 2) and rejected.grad.tolist() == approx([g + 0.1 / 3])


def test_dpo_kl_defaults_follow_trinity_and_say_where_they_differ(tmp_path):
    # kl_coef alone: Trinity's dpo estimator k2
    assert loss_plan(dpo_job(tmp_path, kl_loss_fn_args={"kl_coef": 0.05})).kl_fn == "k2"
    # nothing set: no KL term here, and validate says that Trinity would add one
    cfg = dpo_job(tmp_path)
    assert loss_plan(cfg).kl_coef == 0.0
    assert any("Trinity adds a KL loss (k2, kl_coef 0.001) to dpo" in w for w in cfg.warnings)
    # none: Trinity replaces it with k2 on dpo; here it means none, and validate says so
    assert any("Trinity replaces it with k2 on dpo" in w for w in dpo_job(tmp_path, kl_loss_fn="none").warnings)


# ---------------------------------------------------------------- what validate says about ppo's dual clip


def test_the_dual_clip_is_only_warned_about_when_the_user_sets_it(tmp_path):
    # a default grpo config does not warn about a setting nobody wrote (the note is logged at run start)
    assert not any("clip_ratio_c" in w for w in job(tmp_path, algorithm_type="grpo").warnings)
    # set explicitly, it is trained client-side, and validate says what that costs
    cfg = job(tmp_path, algorithm_type="grpo", policy_loss_fn_args={"clip_range": 0.2, "clip_ratio_c": 3.0})
    assert loss_plan(cfg).custom
    assert any("clip_ratio_c 3.0: the ppo loss runs on this machine" in w for w in cfg.warnings), cfg.warnings
