"""Trinity's policy losses as parts an algorithm names: each one object with its arguments and Trinity's
defaults, the check of their values, the Tinker built-in loss equal to it (if any), and what it trains on.

As in Trinity, `defaults` (its default_args) apply when policy_loss_fn_args is not given at all; given args
are completed with the constructor's defaults (`init_defaults`, where they differ). loss_agg_mode is the
algorithm's: Trinity overrides the loss's own with algorithm.loss_agg_mode. The torch maths of each loss is
in algorithms.terms (kept apart so that the validator and the operator import no torch).

    POLICY_LOSS_PARTS["ppo"].arguments({"clip_range": 0.3})   # Trinity's args, checked
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rft_runtime.algorithms.errors import AlgorithmError
from rft_runtime.config.paths import JOB

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
ARGS = JOB.algorithm.policy_loss_fn_args

# (Tinker's built-in loss, its loss_fn_config) and the constant folded into each token's advantage
Builtin = tuple[tuple[str, dict[str, float] | None], float]


def number(args: Mapping[str, Any], key: str, where: Any = ARGS) -> float:
    """args[key] as a float; an AlgorithmError at where[key] when it is not a number."""
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AlgorithmError(f"must be a number, got {value!r}", where[key])
    return float(value)


def clip_bounds(args: Mapping[str, Any]) -> tuple[float, float]:
    """(low, high) clip epsilons: clip_range_low / clip_range_high, each falling back to clip_range."""
    base = args.get("clip_range")
    low = args.get("clip_range_low")
    high = args.get("clip_range_high")
    low = base if low is None else low
    high = base if high is None else high
    if low is not None and not 0 <= float(low) < 1:
        raise AlgorithmError(f"must be in [0, 1), got {low}", ARGS["clip_range_low"])
    if high is not None and float(high) < 0:
        raise AlgorithmError(f"must be >= 0, got {high}", ARGS["clip_range_high"])
    if low is None or high is None:
        raise AlgorithmError("needs clip_range, or clip_range_low and clip_range_high (Trinity's defaults apply "
                             "only when policy_loss_fn_args is unset)", ARGS)
    return float(low), float(high)


def _one_of(args: Mapping[str, Any], key: str, allowed: tuple[Any, ...]) -> None:
    if args[key] not in allowed:
        raise AlgorithmError(f"{args[key]!r} is not one of {', '.join(str(a) for a in allowed)}", ARGS[key])


def mu_at(args: Mapping[str, Any], step: int) -> float:
    """CHORD's weight of the expert term at train step `step` (1-based, as Trinity's trainer counts): a
    linear warm-up to mu_peak over mu_warmup_steps, then a cosine decay to mu_valley over mu_decay_steps."""
    warmup, decay = int(args["mu_warmup_steps"]), int(args["mu_decay_steps"])
    peak, valley = float(args["mu_peak"]), float(args["mu_valley"])
    if step < warmup:
        return step / warmup * peak
    if step >= warmup + decay:
        return valley
    return (peak - valley) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / decay)) + valley


@dataclass(frozen=True)
class PolicyLoss:
    """One of Trinity's policy_loss_fn names, as this runtime trains it."""

    name: str
    defaults: dict[str, Any]
    init_defaults: dict[str, Any] = field(default_factory=dict)
    # raises an AlgorithmError naming the argument whose value cannot be trained
    check: Callable[[dict[str, Any]], None] | None = None
    # the Tinker built-in loss equal to this one with these args (given: what the user wrote), else None
    builtin: Callable[[dict[str, Any], Mapping[str, Any]], Builtin | None] | None = None
    # False: the loss reads no advantage (cross-entropy, dpo's pairs)
    needs_advantage: bool = True
    # True: the loss is over chosen/rejected pairs (dpo's data)
    pairs: bool = False
    # True: the step adds expert SFT rows that the loss weighs against the rollouts (sample_strategy mix)
    expert_data: bool = False
    # True when every token's loss is scaled by its advantage with these args, so that an experience with
    # advantage 0 changes nothing
    scaled_by_advantage: Callable[[dict[str, Any]], bool] = lambda args: True
    # the per-token torch loss (lp, old, advantage, mask, args) -> (loss, clipped or None), for a loss
    # registered outside this module; the ones here have theirs in algorithms.terms.POLICY_TERMS
    term: Callable[..., Any] | None = None

    def arguments(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Trinity's arguments of this loss for the config's policy_loss_fn_args, checked."""
        given = dict(given or {})
        given.pop("loss_agg_mode", None)  # checked against algorithm.loss_agg_mode by the loss plan
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise AlgorithmError(f"{', '.join(unknown)} not used by {self.name} (accepted: "
                                 f"{', '.join(self.defaults) or 'none'})", ARGS)
        args = dict(self.defaults)
        if given:
            args.update(self.init_defaults)
        args.update(given)
        if self.check is not None:
            self.check(args)
        return args


POLICY_LOSS_PARTS: dict[str, PolicyLoss] = {}


def register_policy_loss(loss: PolicyLoss) -> PolicyLoss:
    """Make `loss` a policy_loss_fn name the config accepts (its torch term goes in algorithms.terms)."""
    POLICY_LOSS_PARTS[loss.name] = loss
    return loss


# ---------------------------------------------------------------- the losses


def _check_ppo(args: dict[str, Any]) -> None:
    if args["clip_ratio_c"] is None or float(args["clip_ratio_c"]) <= 1.0:
        raise AlgorithmError(f"must be > 1, got {args['clip_ratio_c']}", ARGS["clip_ratio_c"])
    clip_bounds(args)


def _builtin_ppo(args: dict[str, Any], given: Mapping[str, Any]) -> Builtin | None:
    # Tinker's ppo has no dual clip, sequence masking or fallback: with any of them set, client-side
    if "clip_ratio_c" in given or args["enable_sequence_masking"] or args["fallback_to_policy_gradient"]:
        return None
    low, high = clip_bounds(args)
    return ("ppo", {"clip_low_threshold": 1.0 - low, "clip_high_threshold": 1.0 + high}), 1.0


register_policy_loss(PolicyLoss(
    "ppo", {"clip_range": 0.2, "clip_range_low": None, "clip_range_high": None, "clip_ratio_c": 3.0,
            "enable_sequence_masking": False, "delta_sequence_masking": 0.1, "fallback_to_policy_gradient": False},
    init_defaults={"clip_range": None}, check=_check_ppo, builtin=_builtin_ppo))


def _check_clip(args: dict[str, Any]) -> None:
    clip_bounds(args)


register_policy_loss(PolicyLoss(
    "gspo", {"clip_range": None, "clip_range_low": 0.0003, "clip_range_high": 0.0004},
    init_defaults={"clip_range_low": None, "clip_range_high": None}, check=_check_clip))


def _check_cispo(args: dict[str, Any]) -> None:
    for key in ("clip_range_low", "clip_range_high", "mask_clip_range_low", "mask_clip_range_high"):
        if number(args, key) < 0:
            raise AlgorithmError(f"must be >= 0, got {args[key]}", ARGS[key])


register_policy_loss(PolicyLoss(
    "cispo", {"clip_range_low": 1.0, "clip_range_high": 0.28, "enable_mask_clip": False, "mask_clip_range_low": 1.0,
              "mask_clip_range_high": 0.28},
    check=_check_cispo,
    builtin=lambda args, given: None if args["enable_mask_clip"] else (
        ("cispo", {"clip_low_threshold": max(0.0, 1.0 - float(args["clip_range_low"])),
                   "clip_high_threshold": 1.0 + float(args["clip_range_high"])}), 1.0)))


def _check_sapo(args: dict[str, Any]) -> None:
    if number(args, "tau_pos") <= 0 or number(args, "tau_neg") <= 0:
        raise AlgorithmError("tau_pos and tau_neg must be > 0", ARGS)


register_policy_loss(PolicyLoss("sapo", {"tau_pos": 1.0, "tau_neg": 1.05}, check=_check_sapo))
register_policy_loss(PolicyLoss("topr", {"advantage_threshold": 0.0}))


def _check_sppo(args: dict[str, Any]) -> None:
    if number(args, "epsilon") <= 0:
        raise AlgorithmError(f"must be > 0, got {args['epsilon']}", ARGS["epsilon"])


register_policy_loss(PolicyLoss("sppo", {"epsilon": 0.3}, check=_check_sppo))
register_policy_loss(PolicyLoss("importance_sampling", {},
                                builtin=lambda args, given: (("importance_sampling", None), 1.0)))
# -A logp / (1 + tau) is cispo with its weight clipped to exactly 1, on A / (1 + tau)
register_policy_loss(PolicyLoss(
    "opmd", {"tau": 1.0},
    builtin=lambda args, given: (("cispo", {"clip_low_threshold": 1.0, "clip_high_threshold": 1.0}),
                                 1.0 / (1.0 + float(args["tau"])))))


def _check_rec(args: dict[str, Any]) -> None:
    _one_of(args, "clip_mode", ("none", "one-side", "gspo-one-side", "two-side", "ring"))
    _one_of(args, "weight", ("none", "importance_sampling", "gspo_importance_sampling", "advantage"))
    _one_of(args, "regularizer", ("none", "k2", "forward-kl"))


register_policy_loss(PolicyLoss(
    "rec", {"epsilon_low": 0.2, "epsilon_high": 0.2, "epsilon_low_prime": 0.6, "epsilon_high_prime": 2.0,
            "clip_mode": "none", "weight": "none", "regularizer": "none", "regularizer_coef": 0.0, "temp": 1.0},
    init_defaults={"epsilon_low_prime": 0.4, "epsilon_high_prime": 0.4}, check=_check_rec,
    # a regularizer term trains whatever the advantage
    scaled_by_advantage=lambda args: args["regularizer"] == "none" or not args["regularizer_coef"]))

# cross-entropy on the responses, and CHORD's two reweighted forms of it (Trinity registers both alone too)
register_policy_loss(PolicyLoss("sft", {}, builtin=lambda args, given: (("cross_entropy", None), 1.0),
                                needs_advantage=False, scaled_by_advantage=lambda args: False))
register_policy_loss(PolicyLoss("sft_is", {}, needs_advantage=False, scaled_by_advantage=lambda args: False))


def _check_sft_phi(args: dict[str, Any]) -> None:
    if not 0 < number(args, "cutoff_prob") <= 1:
        raise AlgorithmError(f"must be in (0, 1], got {args['cutoff_prob']}", ARGS["cutoff_prob"])


register_policy_loss(PolicyLoss("sft_phi", {"cutoff_prob": 1.0}, check=_check_sft_phi, needs_advantage=False,
                                scaled_by_advantage=lambda args: False))
register_policy_loss(PolicyLoss("dpo", {"beta": 0.1, "label_smoothing": 0.0}, needs_advantage=False, pairs=True,
                                scaled_by_advantage=lambda args: False))

# mix: (1 - mu) ppo on the rollouts + mu sft on the expert data. The batch-size arguments are Trinity's
# micro-batch bookkeeping, which it fills in itself; one step here is one batch, so they change nothing.
_MICRO_BATCH_ARGS = {"use_dynamic_bsz": None, "ppo_mini_batch_size": 1, "ppo_micro_batch_size_per_gpu": 1,
                     "ngpus_trainer": 1, "train_batch_size_usual": 1, "train_batch_size_expert": 1}


def _check_mix_parts(args: dict[str, Any]) -> None:
    clip_bounds(args)
    for key in ("sft_loss_agg_mode", "grpo_loss_agg_mode"):
        if args[key] not in (None, *AGG_MODES):
            raise AlgorithmError(f"{args[key]!r} is not one of {', '.join(AGG_MODES)}", ARGS[key])


def _check_mix(args: dict[str, Any]) -> None:
    if not 0 <= number(args, "mu") <= 1:
        raise AlgorithmError(f"must be in [0, 1], got {args['mu']}", ARGS["mu"])
    _check_mix_parts(args)


register_policy_loss(PolicyLoss(
    "mix", {"mu": 0.1, "clip_range": 0.2, "clip_range_low": None, "clip_range_high": None, **_MICRO_BATCH_ARGS,
            "sft_loss_agg_mode": None, "grpo_loss_agg_mode": None},
    check=_check_mix, expert_data=True, scaled_by_advantage=lambda args: False))


def _check_mix_chord(args: dict[str, Any]) -> None:
    for key in ("mu_warmup_steps", "mu_decay_steps"):
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise AlgorithmError(f"must be a whole number >= 0, got {value!r}", ARGS[key])
    for key in ("mu_peak", "mu_valley"):
        if not 0 <= number(args, key) <= 1:
            raise AlgorithmError(f"must be in [0, 1], got {args[key]}", ARGS[key])
    if not isinstance(args["enable_phi_function"], bool):
        raise AlgorithmError(f"must be true or false, got {args['enable_phi_function']!r}",
                             ARGS["enable_phi_function"])
    _check_mix_parts(args)


# CHORD: mix with a scheduled mu (see mu_at) and, with enable_phi_function, the expert tokens' cross-entropy
# weighted by p (1 - p) (sft_phi). Trinity's default_args set clip_range 0.2; its constructor, which
# completes given args, has none (so given args need a clip range, as in Trinity).
register_policy_loss(PolicyLoss(
    "mix_chord", {"mu_warmup_steps": 0, "mu_decay_steps": 0, "mu_peak": 0.1, "mu_valley": 0.1,
                  "enable_phi_function": True, "clip_range": 0.2, "clip_range_low": None, "clip_range_high": None,
                  **_MICRO_BATCH_ARGS, "sft_loss_agg_mode": None, "grpo_loss_agg_mode": None},
    init_defaults={"clip_range": None}, check=_check_mix_chord, expert_data=True,
    scaled_by_advantage=lambda args: False))


def policy_loss(name: str) -> PolicyLoss:
    """The policy loss `name`; an AlgorithmError at algorithm.policy_loss_fn for one this runtime lacks."""
    try:
        return POLICY_LOSS_PARTS[name]
    except KeyError:
        raise AlgorithmError(f"{name!r} is not one of Trinity's policy losses this runtime trains: "
                             f"{', '.join(POLICY_LOSS_PARTS)}", JOB.algorithm.policy_loss_fn) from None
