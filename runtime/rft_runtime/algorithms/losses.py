"""Which loss trains a config, decided once at load time: a LossPlan.

A step is one forward_backward and one optim_step. When the whole loss is one of Tinker's built-in losses
(`ppo`, `importance_sampling`, `cispo`, `cross_entropy`) the plan names it and its loss_fn_config, and the
loss aggregation (loss_agg_mode) and any constant factor are folded into each token's advantage or
weight, which those losses are linear in. Otherwise (a KL or entropy term, gspo's sequence ratio, sapo's
soft gate, ...) the plan is a client-side loss for forward_backward_custom, which costs one extra forward
pass (bench/runtime.py measures it). The maths of both is in algorithms.terms.

No torch here: the validator and the catalog import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rft_runtime.algorithms.advantages import AlgorithmError, check_advantage_args

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
DEFAULT_CLIP_RANGE = 0.2

# Trinity's policy_loss_fn names -> their arguments with Trinity's defaults. As in Trinity, default_args
# (POLICY_LOSSES) apply when policy_loss_fn_args is not given at all; given args are completed with the
# constructor's defaults (INIT_DEFAULTS, where they differ). loss_agg_mode is the algorithm's: Trinity
# overrides the loss's own with algorithm.loss_agg_mode.
POLICY_LOSSES: dict[str, dict[str, Any]] = {
    "ppo": {"clip_range": 0.2, "clip_range_low": None, "clip_range_high": None, "clip_ratio_c": 3.0,
            "enable_sequence_masking": False, "delta_sequence_masking": 0.1,
            "fallback_to_policy_gradient": False},
    "gspo": {"clip_range": None, "clip_range_low": 0.0003, "clip_range_high": 0.0004},
    "cispo": {"clip_range_low": 1.0, "clip_range_high": 0.28, "enable_mask_clip": False,
              "mask_clip_range_low": 1.0, "mask_clip_range_high": 0.28},
    "sapo": {"tau_pos": 1.0, "tau_neg": 1.05},
    "topr": {"advantage_threshold": 0.0},
    "sppo": {"epsilon": 0.3},
    "importance_sampling": {},
    "opmd": {"tau": 1.0},
    "rec": {"epsilon_low": 0.2, "epsilon_high": 0.2, "epsilon_low_prime": 0.6, "epsilon_high_prime": 2.0,
            "clip_mode": "none", "weight": "none", "regularizer": "none", "regularizer_coef": 0.0,
            "temp": 1.0},
    "sft": {},
    "dpo": {"beta": 0.1, "label_smoothing": 0.0},
    # mix: (1 - mu) ppo on the rollouts + mu sft on the expert data. The batch-size arguments are Trinity's
    # micro-batch bookkeeping, which it fills in itself; one step here is one batch, so they change nothing.
    "mix": {"mu": 0.1, "clip_range": 0.2, "clip_range_low": None, "clip_range_high": None, "use_dynamic_bsz": None,
            "ppo_mini_batch_size": 1, "ppo_micro_batch_size_per_gpu": 1, "ngpus_trainer": 1,
            "train_batch_size_usual": 1, "train_batch_size_expert": 1, "sft_loss_agg_mode": None,
            "grpo_loss_agg_mode": None},
}
INIT_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {"clip_range": None},
    "gspo": {"clip_range_low": None, "clip_range_high": None},
    "rec": {"epsilon_low_prime": 0.4, "epsilon_high_prime": 0.4},
}
POLICY_LOSS_REFUSALS = {
    "mix_chord": "CHORD's weighting of expert data is not implemented on Tinker yet; use mix, or the veRL backend",
    "sft_is": "it is one of mix_chord's expert-data terms; use sft",
    "sft_phi": "it is one of mix_chord's expert-data terms; use sft",
}
# Trinity's kl_fn names (the KL loss term and the reward penalty share them)
KL_FNS = ("none", "k1", "k2", "k3", "low_var_kl", "abs", "corrected_k3")
TRINITY_KL_COEF = 0.001
ENTROPY_FNS = ("none", "default", "mix")
SAMPLE_STRATEGIES_HONOURED = ("default", "warmup", "mix")


def _algorithm(cfg: Any) -> Any:
    # a JobConfig, or its `algorithm` section
    return getattr(cfg, "algorithm", cfg)


def _num(args: Mapping[str, Any], key: str, where: str) -> float:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AlgorithmError(f"algorithm.{where}.{key} must be a number, got {value!r}")
    return float(value)


@dataclass
class LossPlan:
    """Everything the trainer needs to build a step's loss, resolved from the config once."""

    algorithm: str
    advantage_fn: str | None
    advantage_args: dict[str, Any]
    policy_loss: str
    policy_args: dict[str, Any]
    agg_mode: str
    kl_fn: str = "none"
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    # (Tinker loss, loss_fn_config) when one built-in forward_backward computes the whole loss
    builtin: tuple[str, dict[str, float] | None] | None = None
    # constant folded into the advantages on the built-in path (opmd's 1 / (1 + tau))
    advantage_factor: float = 1.0
    notes: list[str] = field(default_factory=list)

    @property
    def uses_reference(self) -> bool:
        """True when the loss needs the reference (base) model's logprobs."""
        return self.kl_fn != "none" and self.kl_coef > 0

    @property
    def custom(self) -> bool:
        """True when the loss runs client-side (forward_backward_custom)."""
        return self.builtin is None

    @property
    def is_mix(self) -> bool:
        """True when each step adds expert SFT data to its rollouts (mix)."""
        return self.policy_loss == "mix"

    @property
    def is_dpo(self) -> bool:
        """True when the step trains chosen/rejected pairs (each pair two datums, chosen first)."""
        return self.policy_loss == "dpo"

    @property
    def uses_reference_logprobs(self) -> bool:
        """True when the step needs the reference model's logprobs (a KL term, or dpo's ratios)."""
        return self.uses_reference or self.is_dpo

    @property
    def is_sft(self) -> bool:
        """True when the policy loss is cross-entropy on the responses (sft, raft)."""
        return self.policy_loss == "sft"

    def only_policy_gradient(self) -> bool:
        """True when every term is scaled by an advantage, so a zero-advantage experience changes nothing."""
        return not self.uses_reference and not self.entropy_coef and not self.is_sft and not self.is_dpo and \
            not self.is_mix and not (
            self.policy_loss == "rec" and self.policy_args.get("regularizer") != "none"
            and self.policy_args.get("regularizer_coef"))


def clip_bounds(args: Mapping[str, Any]) -> tuple[float, float]:
    """(low, high) clip epsilons: clip_range_low / clip_range_high, each falling back to clip_range."""
    base = args.get("clip_range")
    low = args.get("clip_range_low")
    high = args.get("clip_range_high")
    low = base if low is None else low
    high = base if high is None else high
    if low is not None and not 0 <= float(low) < 1:
        raise AlgorithmError(f"algorithm.policy_loss_fn_args.clip_range_low must be in [0, 1), got {low}")
    if high is not None and float(high) < 0:
        raise AlgorithmError(f"algorithm.policy_loss_fn_args.clip_range_high must be >= 0, got {high}")
    if low is None or high is None:
        raise AlgorithmError("algorithm.policy_loss_fn_args needs clip_range, or clip_range_low and "
                             "clip_range_high (Trinity's defaults apply only when policy_loss_fn_args is unset)")
    low, high = float(low), float(high)
    return low, high


def _policy_args(name: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    if name in POLICY_LOSS_REFUSALS:
        raise AlgorithmError(f"algorithm.policy_loss_fn {name!r} cannot run on Tinker: {POLICY_LOSS_REFUSALS[name]}")
    if name not in POLICY_LOSSES:
        raise AlgorithmError(f"algorithm.policy_loss_fn {name!r} is not one of Trinity's policy losses this "
                             f"runtime trains: {', '.join(POLICY_LOSSES)}")
    defaults = POLICY_LOSSES[name]
    given = dict(given or {})
    given.pop("loss_agg_mode", None)  # checked against algorithm.loss_agg_mode by the caller
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise AlgorithmError(f"algorithm.policy_loss_fn_args: {', '.join(unknown)} not used by {name} "
                             f"(accepted: {', '.join(defaults) or 'none'})")
    args = dict(defaults)
    if given:
        args.update(INIT_DEFAULTS.get(name, {}))
    args.update(given)
    if name == "mix":
        if not 0 <= float(args["mu"]) <= 1:
            raise AlgorithmError(f"algorithm.policy_loss_fn_args.mu must be in [0, 1], got {args['mu']}")
        clip_bounds(args)
        for key in ("sft_loss_agg_mode", "grpo_loss_agg_mode"):
            if args[key] not in (None, *AGG_MODES):
                raise AlgorithmError(f"algorithm.policy_loss_fn_args.{key} {args[key]!r} is not one of "
                                     f"{', '.join(AGG_MODES)}")
    if name == "ppo":
        if args["clip_ratio_c"] is None or float(args["clip_ratio_c"]) <= 1.0:
            raise AlgorithmError(f"algorithm.policy_loss_fn_args.clip_ratio_c must be > 1, got {args['clip_ratio_c']}")
        clip_bounds(args)
    elif name == "gspo":
        clip_bounds(args)
    elif name == "cispo":
        for key in ("clip_range_low", "clip_range_high", "mask_clip_range_low", "mask_clip_range_high"):
            if _num(args, key, "policy_loss_fn_args") < 0:
                raise AlgorithmError(f"algorithm.policy_loss_fn_args.{key} must be >= 0, got {args[key]}")
    elif name == "sapo":
        if _num(args, "tau_pos", "policy_loss_fn_args") <= 0 or _num(args, "tau_neg", "policy_loss_fn_args") <= 0:
            raise AlgorithmError("algorithm.policy_loss_fn_args.tau_pos and tau_neg must be > 0")
    elif name == "sppo":
        if _num(args, "epsilon", "policy_loss_fn_args") <= 0:
            raise AlgorithmError(f"algorithm.policy_loss_fn_args.epsilon must be > 0, got {args['epsilon']}")
    elif name == "rec":
        if args["clip_mode"] not in ("none", "one-side", "gspo-one-side", "two-side", "ring"):
            raise AlgorithmError(f"algorithm.policy_loss_fn_args.clip_mode {args['clip_mode']!r} is not one of "
                                 "none, one-side, gspo-one-side, two-side, ring")
        if args["weight"] not in ("none", "importance_sampling", "gspo_importance_sampling", "advantage"):
            raise AlgorithmError(f"algorithm.policy_loss_fn_args.weight {args['weight']!r} is not one of none, "
                                 "importance_sampling, gspo_importance_sampling, advantage")
        if args["regularizer"] not in ("none", "k2", "forward-kl"):
            raise AlgorithmError(f"algorithm.policy_loss_fn_args.regularizer {args['regularizer']!r} is not one "
                                 "of none, k2, forward-kl")
    return args


def _builtin(name: str, args: Mapping[str, Any], given: Mapping[str, Any]) -> tuple[tuple[str, Any] | None, float]:
    """The built-in Tinker loss equal to policy loss `name` (per token, up to the advantage's scale), if any."""
    if name == "ppo":
        if ("clip_ratio_c" in given or args["enable_sequence_masking"] or args["fallback_to_policy_gradient"]):
            return None, 1.0
        low, high = clip_bounds(args)
        return ("ppo", {"clip_low_threshold": 1.0 - low, "clip_high_threshold": 1.0 + high}), 1.0
    if name == "importance_sampling":
        return ("importance_sampling", None), 1.0
    if name == "cispo" and not args["enable_mask_clip"]:
        return ("cispo", {"clip_low_threshold": max(0.0, 1.0 - float(args["clip_range_low"])),
                          "clip_high_threshold": 1.0 + float(args["clip_range_high"])}), 1.0
    if name == "opmd":
        # -A logp / (1 + tau) is cispo with its weight clipped to exactly 1
        return ("cispo", {"clip_low_threshold": 1.0, "clip_high_threshold": 1.0}), 1.0 / (1.0 + float(args["tau"]))
    if name == "sft":
        return ("cross_entropy", None), 1.0
    return None, 1.0


def loss_plan(cfg: Any) -> LossPlan:
    """Resolve the config's algorithm into a LossPlan; an AlgorithmError names the field that cannot run."""
    from rft_runtime.algorithms.registry import algorithm_spec

    algo_cfg = _algorithm(cfg)
    spec = algorithm_spec(algo_cfg.algorithm_type)
    if spec.refusal:
        raise AlgorithmError(f"algorithm.algorithm_type {spec.name!r} cannot run on Tinker: {spec.refusal}")
    adv_fn = algo_cfg.advantage_fn or spec.advantage_fn
    if spec.policy_loss_fn in ("sft", "dpo") and algo_cfg.advantage_fn in (None, "none"):
        adv_fn = None
    adv_args = check_advantage_args(adv_fn, algo_cfg.advantage_fn_args) if adv_fn else {}
    loss_name = algo_cfg.policy_loss_fn or spec.policy_loss_fn
    given = dict(algo_cfg.policy_loss_fn_args or {})
    args = _policy_args(loss_name, given)
    agg = algo_cfg.loss_agg_mode or "token-mean"
    if agg not in AGG_MODES:
        raise AlgorithmError(f"algorithm.loss_agg_mode {agg!r} is not one of {', '.join(AGG_MODES)}")
    if "loss_agg_mode" in given and given["loss_agg_mode"] != agg:
        # Trinity overwrites the loss's own loss_agg_mode with algorithm.loss_agg_mode: say so, not silently
        raise AlgorithmError(f"algorithm.policy_loss_fn_args.loss_agg_mode {given['loss_agg_mode']!r} differs "
                             f"from algorithm.loss_agg_mode {agg!r}, which Trinity uses for every term: set "
                             "algorithm.loss_agg_mode instead")
    if (loss_name == "dpo") != (spec.schema == "dpo"):
        raise AlgorithmError(f"algorithm.policy_loss_fn {loss_name!r}: the dpo loss trains on chosen/rejected pairs "
                             "and only algorithm_type dpo reads them; use dpo with dpo, or another loss")
    if loss_name not in ("sft", "dpo") and adv_fn is None:
        raise AlgorithmError(f"algorithm.policy_loss_fn {loss_name!r} needs advantages: set algorithm.advantage_fn")

    kl_fn = algo_cfg.kl_loss_fn or spec.kl_loss_fn
    if kl_fn not in KL_FNS:
        raise AlgorithmError(f"algorithm.kl_loss_fn {kl_fn!r} is not one of {', '.join(KL_FNS)}")
    kl_args = dict(algo_cfg.kl_loss_fn_args or {})
    unknown = sorted(set(kl_args) - {"kl_coef", "adaptive", "target_kl", "horizon"})
    if unknown:
        raise AlgorithmError(f"algorithm.kl_loss_fn_args: {', '.join(unknown)} not used by the KL loss "
                             "(accepted: kl_coef, adaptive, target_kl, horizon)")
    if kl_args.get("adaptive"):
        raise AlgorithmError("algorithm.kl_loss_fn_args.adaptive: Trinity adapts the coefficient only for "
                             "kl_penalty_fn, never for the KL loss; set adaptive: false")
    if "kl_coef" in kl_args:
        kl_coef = _num(kl_args, "kl_coef", "kl_loss_fn_args")
    elif algo_cfg.kl_loss_fn not in (None, "none"):
        kl_coef = TRINITY_KL_COEF  # the user chose an estimator and left Trinity's coefficient
    else:
        # Trinity's default k2 loss (kl_coef 0.001) would cost a reference pass and a custom loss every
        # step; it is added only when asked for (the validator warns)
        kl_coef = 0.0
    if kl_coef < 0:
        raise AlgorithmError(f"algorithm.kl_loss_fn_args.kl_coef must be >= 0, got {kl_coef}")
    if kl_fn == "none":
        kl_coef = 0.0
    if loss_name == "sft" and kl_coef and spec.schema != "experience":
        raise AlgorithmError("algorithm.kl_loss_fn: sft from a dataset trains no KL term; set kl_loss_fn: none")

    ent_fn = algo_cfg.entropy_loss_fn or spec.entropy_loss_fn
    if ent_fn not in ENTROPY_FNS:
        raise AlgorithmError(f"algorithm.entropy_loss_fn {ent_fn!r} is not one of {', '.join(ENTROPY_FNS)}")
    ent_args = dict(algo_cfg.entropy_loss_fn_args or {})
    unknown = sorted(set(ent_args) - {"entropy_coef"})
    if unknown:
        raise AlgorithmError(f"algorithm.entropy_loss_fn_args: {', '.join(unknown)} not used (accepted: "
                             "entropy_coef)")
    entropy_coef = _num(ent_args, "entropy_coef", "entropy_loss_fn_args") if "entropy_coef" in ent_args else 0.0
    if ent_fn == "none":
        entropy_coef = 0.0
    if ent_fn == "mix" and entropy_coef and loss_name != "mix":
        raise AlgorithmError("algorithm.entropy_loss_fn 'mix' skips expert data, which only mix has; use 'default'")
    if loss_name == "mix" and ent_fn == "default" and entropy_coef:
        raise AlgorithmError("algorithm.entropy_loss_fn: with mix use 'mix' (the entropy of the rollouts, not of "
                             "the expert data, as Trinity)")
    mix_strategy = (algo_cfg.sample_strategy or spec.sample_strategy) == "mix"
    if loss_name == "mix" and not mix_strategy:
        raise AlgorithmError("algorithm.policy_loss_fn 'mix' trains on expert data, which only sample_strategy mix "
                             "puts in the step; set sample_strategy: mix (or use algorithm_type mix)")
    if mix_strategy and loss_name != "mix":
        raise AlgorithmError(f"algorithm.sample_strategy 'mix' adds expert data, which only policy_loss_fn mix "
                             f"trains on (not {loss_name!r}); use algorithm_type mix")

    if loss_name == "dpo" and kl_coef:
        raise AlgorithmError("algorithm.kl_loss_fn: on Tinker an extra KL term is not trained beside the dpo loss "
                             "(which is already relative to the reference model); set kl_loss_fn: none, or train "
                             "with veRL (model.tinker.enable: false)")
    if loss_name == "dpo" and entropy_coef:
        raise AlgorithmError("algorithm.entropy_loss_fn_args: on Tinker no entropy term is trained with the dpo "
                             "loss; set entropy_coef: 0")
    strategy = algo_cfg.sample_strategy or spec.sample_strategy
    sync = getattr(cfg, "synchronizer", None)
    if strategy == "staleness_control" and sync is not None:
        # Trinity drops experiences sampled by weights more than max_staleness steps older than the trained
        # ones; here the explorer is never more than sync_offset steps behind, so the strategy holds exactly
        # when max_staleness >= sync_offset (nothing is ever that stale) and is refused otherwise
        raw = (algo_cfg.sample_strategy_args or {}).get("max_staleness", float("inf"))
        try:
            max_staleness = float(raw)
        except (TypeError, ValueError):
            raise AlgorithmError(f"algorithm.sample_strategy_args.max_staleness must be a number, got {raw!r}") from None
        if max_staleness < sync.sync_offset:
            raise AlgorithmError(
                f"algorithm.sample_strategy_args.max_staleness {raw} is below synchronizer.sync_offset "
                f"{sync.sync_offset}: this runtime bounds staleness by sync_offset (the explorer runs at most that "
                "many steps ahead) and does not drop rollouts; set sync_offset <= max_staleness")
        strategy = "default"
    if strategy not in SAMPLE_STRATEGIES_HONOURED:
        raise AlgorithmError(f"algorithm.sample_strategy {strategy!r} cannot run on Tinker: this runtime trains "
                             "each step on that step's fresh rollouts (Trinity's 'default'); mixing in expert "
                             "data (mix) is not implemented; use default, or staleness_control with "
                             "max_staleness >= synchronizer.sync_offset")
    penalty = algo_cfg.kl_penalty_fn
    if penalty not in (None, "none"):
        raise AlgorithmError(f"algorithm.kl_penalty_fn {penalty!r}: the KL penalty in the reward is not "
                             "implemented on Tinker; use kl_loss_fn with kl_loss_fn_args.kl_coef (a KL loss "
                             "term) instead")

    buffer = getattr(cfg, "buffer", None)
    if spec.schema == "cpt" and buffer is not None:
        fmt = buffer.trainer_input.experience_buffer.format
        if fmt.prompt_type != "plaintext":
            raise AlgorithmError("buffer.trainer_input.experience_buffer.format.prompt_type: cpt reads raw text "
                                 "from format.prompt_key (Trinity's CPT formatter supports only plaintext); set "
                                 "prompt_type: plaintext")
    if loss_name == "mix" and buffer is not None:
        name = (algo_cfg.sample_strategy_args or {}).get("sft_dataset_name", "sft_dataset")
        if name not in buffer.trainer_input.auxiliary_buffers:
            raise AlgorithmError(f"buffer.trainer_input.auxiliary_buffers.{name}: mix trains on expert SFT data "
                                 f"from this dataset (sample_strategy_args.sft_dataset_name); add it")
        ratio = (algo_cfg.sample_strategy_args or {}).get("expert_data_ratio", 0.5)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
            raise AlgorithmError(f"algorithm.sample_strategy_args.expert_data_ratio must be in (0, 1), got {ratio!r}")
    explorer = getattr(cfg, "explorer", None)
    if adv_fn in ("on_policy_distill", "jsd") and explorer is not None and not explorer.auxiliary_models:
        raise AlgorithmError(f"explorer.auxiliary_models: {adv_fn} distils from a teacher, explorer.auxiliary_models[0] "
                             "(its model_path is the teacher's base model on the same Tinker server); add it")
    plan = LossPlan(algorithm=spec.name, advantage_fn=adv_fn, advantage_args=adv_args, policy_loss=loss_name,
                    policy_args=args, agg_mode=agg, kl_fn=kl_fn, kl_coef=kl_coef, entropy_coef=entropy_coef)
    builtin, factor = _builtin(loss_name, args, given)
    if builtin is not None and not plan.uses_reference and not entropy_coef:
        plan.builtin, plan.advantage_factor = builtin, factor
    if loss_name == "ppo" and "clip_ratio_c" not in given and plan.builtin:
        plan.notes.append("dual clip (clip_ratio_c 3.0) is not applied by Tinker's ppo loss; set "
                          "policy_loss_fn_args.clip_ratio_c to train it client-side")
    return plan


def agg_scales(mode: str, lengths: Sequence[int], normalizer: int | None = None) -> list[float]:
    """Per-sequence token weight that turns a sum over tokens into loss_agg_mode's aggregate.

    token-mean: 1 / all tokens; seq-mean-token-sum: 1 / sequences; seq-mean-token-mean: 1 / (sequences x
    own tokens); seq-mean-token-sum-norm: 1 / normalizer (Trinity: the padded response length; here
    model.max_response_tokens, else the longest response). Sequences of length 0 get 0.
    """
    n = sum(1 for n_tok in lengths if n_tok > 0)
    total = sum(lengths)
    if not n:
        return [0.0] * len(lengths)
    if mode == "token-mean":
        return [1.0 / total if k else 0.0 for k in lengths]
    if mode == "seq-mean-token-sum":
        return [1.0 / n if k else 0.0 for k in lengths]
    if mode == "seq-mean-token-mean":
        return [1.0 / (n * k) if k else 0.0 for k in lengths]
    if mode == "seq-mean-token-sum-norm":
        norm = float(normalizer or max(lengths))
        return [1.0 / norm if k else 0.0 for k in lengths]
    raise AlgorithmError(f"loss_agg_mode {mode!r} is not one of {', '.join(AGG_MODES)}")


# kept for callers of the previous API (config.checks): the Tinker loss and config of the plan
def loss_spec(cfg: Any) -> tuple[str, dict[str, float] | None]:
    """(Tinker loss name, loss_fn_config) of the config's plan; ("custom", None) for a client-side loss."""
    plan = loss_plan(cfg)
    return plan.builtin if plan.builtin else ("custom", None)


def kl_coef(cfg: Any) -> float:
    """The KL loss coefficient the plan trains with (0: no KL term)."""
    return loss_plan(cfg).kl_coef


def needs_custom_kl_loss(cfg: Any) -> bool:
    """True when the plan has a KL term (reference logprobs and a client-side loss)."""
    return loss_plan(cfg).uses_reference
