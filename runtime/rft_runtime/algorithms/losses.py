"""Which loss trains a config, decided once at load time: a LossPlan.

A step is one forward_backward and one optim_step. When the whole loss is one of Tinker's built-in losses
(`ppo`, `importance_sampling`, `cispo`, `cross_entropy`) the plan names it and its loss_fn_config, and the
loss aggregation (loss_agg_mode) and any constant factor are folded into each token's advantage or
weight, which those losses are linear in. Otherwise (a KL or entropy term, gspo's sequence ratio, sapo's
soft gate, ...) the plan is a client-side loss for forward_backward_custom, which costs one extra forward
pass (bench/runtime.py measures it). The maths of both is in algorithms.terms.

`loss_plan` takes the algorithm type's parts (algorithms.types), lets the config override each, checks each
part, then the algorithm's own rules (`Algorithm.check`). Every problem names its field.

No torch here: the validator and the catalog import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rft_runtime.algorithms.advantages import TOKEN_ADVANTAGE_FNS, check_advantage_args
from rft_runtime.algorithms.base import Algorithm
from rft_runtime.algorithms.errors import AlgorithmError
from rft_runtime.algorithms.policy_losses import (
    AGG_MODES,
    POLICY_LOSS_PARTS,
    PolicyLoss,
    clip_bounds,
    number,
    policy_loss,
)
from rft_runtime.algorithms.registry import algorithm_spec
from rft_runtime.config.paths import JOB

A = JOB.algorithm
DEFAULT_CLIP_RANGE = 0.2
# Trinity's policy_loss_fn names -> their default_args (the parts are in algorithms.policy_losses)
POLICY_LOSSES: dict[str, dict[str, Any]] = {name: loss.defaults for name, loss in POLICY_LOSS_PARTS.items()}
# Trinity's kl_fn names (the KL loss term and the reward penalty share them)
KL_FNS = ("none", "k1", "k2", "k3", "low_var_kl", "abs", "corrected_k3")
TRINITY_KL_COEF = 0.001
ENTROPY_FNS = ("none", "default", "mix")
SAMPLE_STRATEGIES_HONOURED = ("default", "warmup", "mix")

__all__ = ["AGG_MODES", "KL_FNS", "POLICY_LOSSES", "LossPlan", "agg_scales", "clip_bounds", "loss_plan"]


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
    # how the trained loss differs from Trinity's where the user did not ask (logged when a stage starts)
    notes: list[str] = field(default_factory=list)
    # what `rft validate` should say about how this config trains
    warnings: list[str] = field(default_factory=list)
    # what a step trains on (the algorithm type's data kind): the loop picks the step builder by it
    data: str = "rollouts"

    @property
    def loss(self) -> PolicyLoss:
        """The policy loss part."""
        return POLICY_LOSS_PARTS[self.policy_loss]

    @property
    def uses_reference(self) -> bool:
        """True when the loss has a KL term, which needs the reference (base) model's logprobs."""
        return self.kl_fn != "none" and self.kl_coef > 0

    @property
    def custom(self) -> bool:
        """True when the loss runs client-side (forward_backward_custom)."""
        return self.builtin is None

    @property
    def is_mix(self) -> bool:
        """True when each step adds expert SFT data to its rollouts (mix, mix_chord)."""
        return self.loss.expert_data

    @property
    def is_dpo(self) -> bool:
        """True when the step trains chosen/rejected pairs (each pair two datums, chosen first)."""
        return self.loss.pairs

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
        return not self.uses_reference and not self.entropy_coef and self.loss.scaled_by_advantage(self.policy_args)


# ---------------------------------------------------------------- one part at a time


def _policy(algo: Any, spec: type[Algorithm]) -> tuple[PolicyLoss, dict[str, Any], dict[str, Any], str]:
    """(loss, its args, the args as given, loss_agg_mode)."""
    loss = policy_loss(algo.policy_loss_fn or spec.policy_loss_fn)
    given = dict(algo.policy_loss_fn_args or {})
    args = loss.arguments(given)
    agg = algo.loss_agg_mode or "token-mean"
    if agg not in AGG_MODES:
        raise AlgorithmError(f"{agg!r} is not one of {', '.join(AGG_MODES)}", A.loss_agg_mode)
    if "loss_agg_mode" in given and given["loss_agg_mode"] != agg:
        # Trinity overwrites the loss's own loss_agg_mode with algorithm.loss_agg_mode: say so, not silently
        raise AlgorithmError(f"{given['loss_agg_mode']!r} differs from algorithm.loss_agg_mode {agg!r}, which "
                             "Trinity uses for every term: set algorithm.loss_agg_mode instead",
                             A.policy_loss_fn_args["loss_agg_mode"])
    if loss.pairs != (spec.data == "dpo"):
        raise AlgorithmError(f"{loss.name!r}: the dpo loss trains on chosen/rejected pairs and only algorithm_type "
                             "dpo reads them; use dpo with dpo, or another loss", A.policy_loss_fn)
    return loss, args, given, agg


def _advantage(algo: Any, spec: type[Algorithm], loss: PolicyLoss) -> tuple[str | None, dict[str, Any]]:
    adv_fn = algo.advantage_fn or spec.advantage_fn
    if not POLICY_LOSS_PARTS[spec.policy_loss_fn].needs_advantage and algo.advantage_fn in (None, "none"):
        adv_fn = None  # sft, dpo, cpt, raft: nothing to compute
    if loss.needs_advantage and adv_fn is None:
        raise AlgorithmError(f"{loss.name!r} needs advantages: set algorithm.advantage_fn", A.policy_loss_fn)
    return adv_fn, check_advantage_args(adv_fn, algo.advantage_fn_args) if adv_fn else {}


def _kl(algo: Any, spec: type[Algorithm], loss: PolicyLoss) -> tuple[str, float, list[str]]:
    """(kl_fn, kl_coef, warnings) of the KL loss term."""
    kl_fn = algo.kl_loss_fn or spec.kl_loss_fn
    if kl_fn not in KL_FNS:
        raise AlgorithmError(f"{kl_fn!r} is not one of {', '.join(KL_FNS)}", A.kl_loss_fn)
    kl_args = dict(algo.kl_loss_fn_args or {})
    unknown = sorted(set(kl_args) - {"kl_coef", "adaptive", "target_kl", "horizon"})
    if unknown:
        raise AlgorithmError(f"{', '.join(unknown)} not used by the KL loss (accepted: kl_coef, adaptive, "
                             "target_kl, horizon)", A.kl_loss_fn_args)
    if kl_args.get("adaptive"):
        raise AlgorithmError("Trinity adapts the coefficient only for kl_penalty_fn, never for the KL loss; set "
                             "adaptive: false", A.kl_loss_fn_args["adaptive"])
    warnings = []
    if "kl_coef" in kl_args:
        kl_coef = number(kl_args, "kl_coef", A.kl_loss_fn_args)
    elif algo.kl_loss_fn not in (None, "none"):
        kl_coef = TRINITY_KL_COEF  # the user chose an estimator and left Trinity's coefficient
    else:
        # Trinity's default k2 loss (kl_coef 0.001) would cost a reference pass and a custom loss every
        # step; it is added only when asked for
        kl_coef = 0.0
        if spec.kl_loss_fn != "none" and algo.kl_loss_fn is None and algo.kl_loss_fn_args is None:
            here = (f"on Tinker {loss.name} trains none" if loss.expert_data else
                    "on Tinker this runtime adds none unless kl_loss_fn or kl_loss_fn_args.kl_coef is set")
            warnings.append(f"algorithm.kl_loss_fn_args is not set: Trinity adds a KL loss ({spec.kl_loss_fn}, "
                            f"kl_coef 0.001) to {spec.name} by default; {here}")
    if kl_coef < 0:
        raise AlgorithmError(f"must be >= 0, got {kl_coef}", A.kl_loss_fn_args["kl_coef"])
    if kl_fn == "none":
        return kl_fn, 0.0, warnings
    if kl_coef and loss.expert_data:
        # Trinity's KL term spans the expert rows too, with reference logprobs of them: not fetched here
        raise AlgorithmError(f"{loss.name} trains no KL term on Tinker (Trinity's would cover the expert rows "
                             "too); set kl_coef: 0, or kl_loss_fn: none", A.kl_loss_fn_args["kl_coef"])
    return kl_fn, kl_coef, warnings


def _entropy(algo: Any, spec: type[Algorithm], loss: PolicyLoss) -> float:
    """The entropy bonus's coefficient (0: none)."""
    ent_fn = algo.entropy_loss_fn or spec.entropy_loss_fn
    if ent_fn not in ENTROPY_FNS:
        raise AlgorithmError(f"{ent_fn!r} is not one of {', '.join(ENTROPY_FNS)}", A.entropy_loss_fn)
    ent_args = dict(algo.entropy_loss_fn_args or {})
    unknown = sorted(set(ent_args) - {"entropy_coef"})
    if unknown:
        raise AlgorithmError(f"{', '.join(unknown)} not used (accepted: entropy_coef)", A.entropy_loss_fn_args)
    coef = number(ent_args, "entropy_coef", A.entropy_loss_fn_args) if "entropy_coef" in ent_args else 0.0
    if ent_fn == "none" or not coef:
        return 0.0
    if ent_fn == "mix" and not loss.expert_data:
        raise AlgorithmError("'mix' skips expert data, which only mix and mix_chord have; use 'default'",
                             A.entropy_loss_fn)
    if loss.expert_data and ent_fn == "default":
        raise AlgorithmError(f"with {loss.name} use 'mix' (the entropy of the rollouts, not of the expert data, "
                             "as Trinity)", A.entropy_loss_fn)
    return coef


def _sample_strategy(cfg: Any, algo: Any, spec: type[Algorithm], loss: PolicyLoss) -> None:
    strategy = algo.sample_strategy or spec.sample_strategy
    args = algo.sample_strategy_args or {}
    if loss.expert_data and strategy != "mix":
        raise AlgorithmError(f"{loss.name!r} trains on expert data, which only sample_strategy mix puts in the "
                             f"step; set sample_strategy: mix (or use algorithm_type {loss.name})", A.policy_loss_fn)
    if strategy == "mix" and not loss.expert_data:
        raise AlgorithmError(f"'mix' adds expert data, which only policy_loss_fn mix or mix_chord trains on (not "
                             f"{loss.name!r}); use algorithm_type mix or mix_chord", A.sample_strategy)
    sync = getattr(cfg, "synchronizer", None)
    if strategy == "staleness_control" and sync is not None:
        # Trinity drops experiences sampled by weights more than max_staleness steps older than the trained
        # ones; here the explorer is never more than sync_offset steps behind, so the strategy holds exactly
        # when max_staleness >= sync_offset (nothing is ever that stale) and is refused otherwise
        raw = args.get("max_staleness", float("inf"))
        where = A.sample_strategy_args["max_staleness"]
        try:
            max_staleness = float(raw)
        except (TypeError, ValueError):
            raise AlgorithmError(f"must be a number, got {raw!r}", where) from None
        if max_staleness < sync.sync_offset:
            raise AlgorithmError(
                f"{raw} is below synchronizer.sync_offset {sync.sync_offset}: this runtime bounds staleness by "
                "sync_offset (the explorer runs at most that many steps ahead) and does not drop rollouts; set "
                "sync_offset <= max_staleness", where)
        strategy = "default"
    if strategy not in SAMPLE_STRATEGIES_HONOURED:
        raise AlgorithmError(f"{strategy!r} cannot run on Tinker: this runtime trains each step on that step's "
                             "fresh rollouts (Trinity's 'default'); use default, or staleness_control with "
                             "max_staleness >= synchronizer.sync_offset", A.sample_strategy)
    buffer = getattr(cfg, "buffer", None)
    if strategy == "mix" and buffer is not None:
        name = args.get("sft_dataset_name", "sft_dataset")
        if name not in buffer.trainer_input.auxiliary_buffers:
            raise AlgorithmError(f"{loss.name} trains on expert SFT data from this dataset "
                                 "(sample_strategy_args.sft_dataset_name); add it",
                                 JOB.buffer.trainer_input.auxiliary_buffers[name])
        ratio = args.get("expert_data_ratio", 0.5)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
            raise AlgorithmError(f"must be in (0, 1), got {ratio!r}", A.sample_strategy_args["expert_data_ratio"])


def _builtin(plan: LossPlan, given: dict[str, Any]) -> None:
    """Put the Tinker built-in loss on the plan when one computes the whole loss, else say what differs."""
    found = plan.loss.builtin(plan.policy_args, given) if plan.loss.builtin else None
    if found is None or plan.uses_reference or plan.entropy_coef:
        if plan.policy_loss == "ppo" and "clip_ratio_c" in given:
            plan.warnings.append(
                f"policy_loss_fn_args.clip_ratio_c {given['clip_ratio_c']}: the ppo loss runs on this machine "
                "(forward_backward_custom, one more forward pass a step) to apply the dual clip, which Tinker's "
                "built-in ppo loss does not have")
        return
    (plan.builtin, plan.advantage_factor) = found
    if plan.policy_loss == "ppo":
        plan.notes.append("Tinker's built-in ppo loss trains without the dual clip (clip_ratio_c 3.0 caps the "
                          "loss of a negative advantage at a large ratio); set policy_loss_fn_args.clip_ratio_c to "
                          "train it client-side")


def loss_plan(cfg: Any) -> LossPlan:
    """Resolve the config's algorithm (a JobConfig, or its `algorithm` section) into a LossPlan; an
    AlgorithmError names each field that cannot run."""
    algo = getattr(cfg, "algorithm", cfg)
    spec = algorithm_spec(algo.algorithm_type)
    if spec.refusal:
        raise AlgorithmError(f"{spec.name!r} cannot run on Tinker: {spec.refusal}", A.algorithm_type)
    loss, args, given, agg = _policy(algo, spec)
    adv_fn, adv_args = _advantage(algo, spec, loss)
    kl_fn, kl_coef, warnings = _kl(algo, spec, loss)
    entropy_coef = _entropy(algo, spec, loss)
    _sample_strategy(cfg, algo, spec, loss)
    if algo.kl_penalty_fn not in (None, "none"):
        if spec.kl_in_reward:
            raise AlgorithmError(f"{algo.kl_penalty_fn!r}: the KL penalty in the reward is not implemented on Tinker; "
                                 "use kl_loss_fn with kl_loss_fn_args.kl_coef (a KL loss term) instead",
                                 A.kl_penalty_fn)
        warnings.append(f"algorithm.kl_penalty_fn: {algo.kl_penalty_fn!r} has no effect on the Tinker backend: Trinity "
                        f"puts a KL penalty on the rewards only where its trainer computes the advantages, which "
                        f"{spec.name} does not (its veRL and Tinker trainers ignore it too); for a KL term use "
                        "kl_loss_fn with kl_loss_fn_args.kl_coef")
    if adv_fn in TOKEN_ADVANTAGE_FNS and getattr(cfg, "explorer", None) is not None and not cfg.explorer.auxiliary_models:
        raise AlgorithmError(f"{adv_fn} distils from a teacher, explorer.auxiliary_models[0] (its model_path is the "
                             "teacher's base model on the same Tinker server); add it", JOB.explorer.auxiliary_models)
    plan = LossPlan(algorithm=spec.name, advantage_fn=adv_fn, advantage_args=adv_args, policy_loss=loss.name,
                    policy_args=args, agg_mode=agg, kl_fn=kl_fn, kl_coef=kl_coef, entropy_coef=entropy_coef,
                    warnings=warnings, data=spec.data)
    _builtin(plan, given)
    issues = spec.check(cfg, plan)
    if issues:
        raise AlgorithmError(issues=issues)
    plan.warnings += spec.warnings(cfg, plan)
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
    raise AlgorithmError(f"{mode!r} is not one of {', '.join(AGG_MODES)}", A.loss_agg_mode)


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
