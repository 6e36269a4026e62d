"""The loss terms of a step in torch, per Trinity-RFT 0.6's policy_loss_fn/, kl_fn/ and entropy_loss_fn/.

Notation for one experience: lp_t the trained policy's logprob of response token t (differentiable), old_t
the sampler's, A its advantage, m_t its loss mask, r_t = exp(lp_t - old_t), sg() a stop-gradient. Each
policy loss gives a per-token loss; a term's value is sum_i s_i sum_t m_t loss_t with s_i the
loss_agg_mode weight of experience i (losses.agg_scales). The step's loss is
    pg_loss + kl_coef * kl_loss - entropy_coef * entropy_loss
as Trinity's. `step_loss` is the forward_backward_custom loss; `step_metrics` recomputes the terms from the
logprobs a built-in forward_backward returned (clip fraction and approximate KL, and the loss itself when a
server returns none).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rft_runtime.algorithms.losses import LossPlan, agg_scales
from rft_runtime.algorithms.policy_losses import clip_bounds, mu_at


@dataclass
class Seq:
    """One experience's response as the loss sees it: where it starts in the datum, and its inputs."""

    start: int  # index of the first response token in the datum's target tokens
    old: torch.Tensor
    adv: torch.Tensor  # per response token (an experience's scalar advantage repeated, or a teacher's)
    mask: torch.Tensor
    scale: float  # loss_agg_mode weight of each of its tokens
    ref: torch.Tensor | None = None
    expert: bool = False  # expert SFT data in a mix step


def make_seq(start: int, old: Sequence[float], adv: float | Sequence[float], mask: Sequence[float], scale: float,
             ref: Sequence[float] | None = None) -> Seq:
    """A Seq from plain lists (a scalar advantage applies to every token)."""
    n = len(old)
    advs = [float(adv)] * n if isinstance(adv, (int, float)) else [float(a) for a in adv]
    return Seq(start, torch.tensor(list(old), dtype=torch.float32), torch.tensor(advs, dtype=torch.float32),
               torch.tensor(list(mask), dtype=torch.float32), float(scale),
               None if ref is None else torch.tensor(list(ref), dtype=torch.float32))


def _mmean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / (m.sum() + 1e-8)


# ---------------------------------------------------------------- policy losses: (per-token loss, clipped)


def _ppo(lp, old, a, m, args):
    low, high = clip_bounds(args)
    log_ratio = lp - old
    if args["fallback_to_policy_gradient"]:
        log_ratio = lp - lp.detach()
    ratio = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
    l1 = -a * ratio
    l2 = -a * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    clipped_loss = torch.maximum(l1, l2)
    clipped = l2 > l1
    # dual clip: a negative advantage's loss is at most -A * clip_ratio_c
    clipped_loss = torch.where(a < 0, torch.minimum(clipped_loss, -a * float(args["clip_ratio_c"])), clipped_loss)
    if args["enable_sequence_masking"] and float(_mmean(-(lp - old).detach(), m)) > float(args["delta_sequence_masking"]):
        clipped_loss = torch.where(a < 0, torch.zeros_like(clipped_loss), clipped_loss)
    return clipped_loss, clipped


def _gspo(lp, old, a, m, args):
    low, high = clip_bounds(args)
    seq_log_ratio = _mmean(lp - old, m).detach()
    ratio = torch.exp(lp - lp.detach() + seq_log_ratio)
    l1 = -a * ratio
    l2 = -a * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    return torch.maximum(l1, l2), l2 > l1


def _cispo(lp, old, a, m, args):
    ratio = torch.exp(lp - old)
    lo, hi = 1.0 - float(args["clip_range_low"]), 1.0 + float(args["clip_range_high"])
    weight = torch.clamp(ratio, lo, hi).detach()
    keep = torch.ones_like(ratio)
    if args["enable_mask_clip"]:
        keep = torch.where((ratio > 1.0 + float(args["mask_clip_range_high"])) & (a > 0), 0.0, keep)
        keep = torch.where((ratio < 1.0 - float(args["mask_clip_range_low"])) & (a < 0), 0.0, keep)
    return -a * weight * keep.detach() * lp, (ratio < lo) | (ratio > hi)


def _sapo(lp, old, a, m, args):
    tau = torch.where(a > 0, float(args["tau_pos"]), float(args["tau_neg"]))
    ratio = torch.exp(lp - old)
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    return -a * gate.detach() * lp, None


def _topr(lp, old, a, m, args):
    ratio = torch.exp(lp - old)
    low = a <= float(args["advantage_threshold"])
    alpha = torch.where(low, torch.clamp(ratio, 0.0, 1.0), torch.ones_like(ratio))
    return -alpha.detach() * a * lp, low & (ratio > 1.0)


def _sppo(lp, old, a, m, args):
    eps = float(args["epsilon"])
    ratio = torch.exp(lp - old).detach()
    inside = (ratio >= 1.0 / (1.0 + eps)) & (ratio <= 1.0 + eps)
    return -a * (lp - old) * inside.float(), ~inside


def _importance_sampling(lp, old, a, m, args):
    return -a * torch.exp(torch.clamp(lp - old, -20.0, 20.0)), None


def _opmd(lp, old, a, m, args):
    return -a * lp / (1.0 + float(args["tau"])), None


def _rec(lp, old, a, m, args):
    ratio = torch.exp(lp - old).detach()
    el, eh = float(args["epsilon_low"]), float(args["epsilon_high"])
    mode = args["clip_mode"]
    seq_ratio = torch.exp(_mmean(lp - old, m)).detach()
    if mode == "two-side":
        inside = (ratio >= 1 - el) & (ratio <= 1 + eh)
    elif mode == "one-side":
        inside = ((ratio <= 1 + eh) & (a >= 0)) | ((ratio >= 1 - el) & (a <= 0))
    elif mode == "gspo-one-side":
        inside = ((seq_ratio <= 1 + eh) & (a >= 0)) | ((seq_ratio >= 1 - el) & (a <= 0))
    elif mode == "ring":
        inside = (((ratio >= 1 - el) & (ratio <= 1 + eh))
                  | ((a >= 0) & (ratio <= 1 - float(args["epsilon_low_prime"])))
                  | ((a <= 0) & (ratio >= 1 + float(args["epsilon_high_prime"]))))
    else:
        inside = torch.ones_like(ratio, dtype=torch.bool)
    weight: Any = a
    if args["weight"] == "importance_sampling":
        weight = a * ratio
    elif args["weight"] == "gspo_importance_sampling":
        weight = a * seq_ratio
    elif args["weight"] == "advantage":
        weight = a * torch.exp(a / float(args["temp"]))
    loss = -weight * lp * inside.float()
    coef = float(args["regularizer_coef"])
    if args["regularizer"] == "forward-kl":
        loss = loss - coef * lp
    elif args["regularizer"] == "k2":
        loss = loss + coef * (lp - old).square()
    return loss, ~inside


def _sft(lp, old, a, m, args):
    return -lp, None


def _sft_is(lp, old, a, m, args):
    # cross-entropy weighted by the token's probability (no gradient through the weight)
    return -lp * torch.exp(lp).detach(), None


def _sft_phi(lp, old, a, m, args):
    # cross-entropy weighted by phi = p (1 - p), which lowers the weight of tokens the model is already sure
    # or hopeless about; with cutoff_prob < 1 a token above it carries no gradient (its logprob is clamped)
    p = torch.exp(lp).detach()
    cutoff = float(args.get("cutoff_prob", 1.0))
    if cutoff < 1.0:
        lp = torch.clamp(lp, max=math.log(cutoff))
    return -lp * (p * (1 - p)), None


POLICY_TERMS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor | None]]] = {
    "ppo": _ppo, "gspo": _gspo, "cispo": _cispo, "sapo": _sapo, "topr": _topr, "sppo": _sppo,
    "importance_sampling": _importance_sampling, "opmd": _opmd, "rec": _rec, "sft": _sft, "sft_is": _sft_is,
    "sft_phi": _sft_phi,
    # dpo (a loss over pairs) and mix / mix_chord (a loss over two parts of the step) are dpo_terms and
    # mix_terms below
}


# ---------------------------------------------------------------- KL estimators and entropy


def kl_terms(name: str, lp: torch.Tensor, ref: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate `name` between the policy and the reference (Trinity's kl_fn)."""
    if name == "k1":
        return lp - ref
    if name == "k2":
        return 0.5 * (lp - ref).square()
    if name == "abs":
        return (lp - ref).abs()
    logr = ref - lp
    if name == "k3":
        return logr.exp() - 1 - logr
    if name == "low_var_kl":
        logr = torch.clamp(logr, -20.0, 20.0)
        return torch.clamp(logr.exp() - logr - 1, -10.0, 10.0)
    if name == "corrected_k3":
        return torch.clamp(torch.exp(lp - old), 0.0, 2.0) * (logr.exp() - 1 - logr)
    raise ValueError(f"unknown kl_fn {name!r}")


def entropy_terms(lp: torch.Tensor) -> torch.Tensor:
    """Per-token entropy estimate from the sampled token: value -lp, gradient -sg(lp) * grad(lp).

    Tinker returns only the sampled token's logprob, not the vocabulary's distribution, so the entropy
    H = -E[log p] is estimated from the sample, and its gradient by the score function:
    grad H = -E[log p * grad log p].
    """
    sg = lp.detach()
    return -sg - sg * (lp - sg)


# ---------------------------------------------------------------- the step


def _pg_scales(plan: LossPlan, seqs: Sequence[Seq]) -> list[float]:
    # rec aggregates its own way, whatever loss_agg_mode says (Trinity's masked_mean, or per sequence)
    if plan.policy_loss != "rec":
        return [s.scale for s in seqs]
    mode = "seq-mean-token-mean" if plan.policy_args["clip_mode"] == "gspo-one-side" else "token-mean"
    return agg_scales(mode, [int(s.mask.sum()) for s in seqs])


def dpo_terms(plan: LossPlan, seqs: Sequence[Seq], logprobs: Sequence[torch.Tensor]
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO over pairs (chosen, rejected, chosen, ...): the mean over pairs of
    -logsigmoid(beta z) (1 - label_smoothing) - logsigmoid(-beta z) label_smoothing,
    z = (sum lp_c - sum ref_c) - (sum lp_r - sum ref_r), as Trinity's dpo loss."""
    beta = float(plan.policy_args["beta"])
    smoothing = float(plan.policy_args["label_smoothing"])
    ratios = []
    for seq, full in zip(seqs, logprobs, strict=True):
        lp = full[seq.start: seq.start + len(seq.old)].float()
        ref = seq.ref if seq.ref is not None else torch.zeros_like(lp)
        ratios.append(((lp - ref) * seq.mask).sum())
    chosen, rejected = torch.stack(ratios[0::2]), torch.stack(ratios[1::2])
    z = chosen - rejected
    losses = (-torch.nn.functional.logsigmoid(beta * z) * (1 - smoothing)
              - torch.nn.functional.logsigmoid(-beta * z) * smoothing)
    loss = losses.mean()
    metrics = {
        "actor/dpo_loss": float(loss.detach()), "actor/pg_loss": float(loss.detach()),
        "actor/chosen_reward": beta * float(chosen.detach().mean()),
        "actor/rejected_reward": beta * float(rejected.detach().mean()),
        "actor/accuracy_mean": float((chosen.detach() > rejected.detach()).float().mean()),
    }
    return loss, metrics


def mix_terms(plan: LossPlan, seqs: Sequence[Seq], logprobs: Sequence[torch.Tensor], step: int = 0
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """MIX: (1 - mu) x PPO-clip over the rollouts + mu x cross-entropy over the expert data, each aggregated
    over its own part (grpo_loss_agg_mode / sft_loss_agg_mode, else loss_agg_mode), as Trinity's mix loss.
    mix_chord (CHORD): mu follows its schedule at train step `step` (policy_losses.mu_at), and with
    enable_phi_function the expert tokens' cross-entropy is weighted by p (1 - p) (sft_phi)."""
    args = plan.policy_args
    chord = plan.policy_loss == "mix_chord"
    mu = mu_at(args, step) if chord else float(args["mu"])
    expert_fn, expert_name = (_sft_phi, "sft_phi_loss") if chord and args["enable_phi_function"] else (_sft, "sft_loss")
    # Trinity's mix builds its ppo loss from the clip ranges alone: the rest are PPOPolicyLossFn's defaults
    ppo_args = {"clip_ratio_c": 3.0, "enable_sequence_masking": False, "delta_sequence_masking": 0.1,
                "fallback_to_policy_gradient": False, "clip_range": args["clip_range"],
                "clip_range_low": args["clip_range_low"], "clip_range_high": args["clip_range_high"]}
    parts = {False: [], True: []}
    for seq, full in zip(seqs, logprobs, strict=True):
        parts[seq.expert].append((seq, full[seq.start: seq.start + len(seq.old)].float()))
    total = torch.zeros(())
    metrics: dict[str, float] = {"actor/mu": mu} if chord else {}
    for expert, items in parts.items():
        if not items:
            continue
        mode = (args["sft_loss_agg_mode"] if expert else args["grpo_loss_agg_mode"]) or plan.agg_mode
        scales = agg_scales(mode, [int(s.mask.sum()) for s, _ in items])
        term = torch.zeros(())
        clipped = tokens = 0.0
        for (seq, lp), scale in zip(items, scales, strict=True):
            loss_t, clip_t = (expert_fn if expert else _ppo)(lp, seq.old, seq.adv, seq.mask, ppo_args)
            term = term + scale * (loss_t * seq.mask).sum()
            tokens += float(seq.mask.sum())
            if clip_t is not None:
                clipped += float((clip_t.float() * seq.mask).sum())
        if expert:
            total = total + mu * term
            metrics["actor/sft_loss"] = metrics[f"actor/expert/{expert_name}"] = float(term.detach())
        else:
            total = total + (1 - mu) * term
            metrics["actor/pg_loss"] = metrics["actor/usual/pg_loss"] = float(term.detach())
            metrics["actor/pg_clipfrac"] = clipped / tokens if tokens else 0.0
    return total, metrics


def _policy_terms(plan: LossPlan, seqs: Sequence[Seq], lps: Sequence[torch.Tensor]
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """A per-token policy loss aggregated over the step, with its clip fraction and approximate KL."""
    fn = POLICY_TERMS.get(plan.policy_loss) or plan.loss.term
    if fn is None:
        raise ValueError(f"policy loss {plan.policy_loss!r} has no torch term (algorithms.terms.POLICY_TERMS, or "
                         "PolicyLoss.term)")
    pg = torch.zeros(())
    clipped = tokens = ppo_kl = 0.0
    for seq, lp, pg_scale in zip(seqs, lps, _pg_scales(plan, seqs), strict=True):
        m = seq.mask
        loss_t, clip_t = fn(lp, seq.old, seq.adv, m, plan.policy_args)
        pg = pg + pg_scale * (loss_t * m).sum()
        tokens += float(m.sum())
        if clip_t is not None:
            clipped += float((clip_t.float() * m).sum())
        ppo_kl += float(((seq.old - lp.detach()) * m).sum())
    metrics = {"actor/pg_loss": float(pg.detach()), "actor/ppo_kl": ppo_kl / tokens if tokens else 0.0}
    if plan.loss.needs_advantage:
        metrics["actor/pg_clipfrac"] = clipped / tokens if tokens else 0.0
    else:  # sft_loss, sft_is_loss, sft_phi_loss (Trinity's names)
        metrics[f"actor/{plan.policy_loss}_loss"] = float(pg.detach())
    return pg, metrics


def compute_terms(plan: LossPlan, seqs: Sequence[Seq], logprobs: Sequence[torch.Tensor], step: int = 0
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """The step's loss (differentiable in `logprobs`, one tensor per datum) and Trinity's actor metrics:
    pg_loss + kl_coef * kl_loss - entropy_coef * entropy_loss. `step` is the stage's train step (1-based),
    which mix_chord's mu schedule reads."""
    lps = [full[seq.start: seq.start + len(seq.old)].float() for seq, full in zip(seqs, logprobs, strict=True)]
    if plan.is_dpo:
        total, metrics = dpo_terms(plan, seqs, logprobs)
    elif plan.is_mix:
        total, metrics = mix_terms(plan, seqs, logprobs, step)
    else:
        total, metrics = _policy_terms(plan, seqs, lps)
    kl = ent = torch.zeros(())
    for seq, lp in zip(seqs, lps, strict=True):
        if seq.expert:  # the KL and entropy terms are over the rollouts (entropy_loss_fn mix)
            continue
        if plan.uses_reference and seq.ref is not None:
            # dpo's replies were not sampled: their old logprobs are the policy's own at the step (one
            # update per batch, as in veRL), which only corrected_k3 reads
            old = lp.detach() if plan.is_dpo else seq.old
            kl = kl + seq.scale * (kl_terms(plan.kl_fn, lp, seq.ref, old) * seq.mask).sum()
        if plan.entropy_coef:
            ent = ent + seq.scale * (entropy_terms(lp) * seq.mask).sum()
    total = total + plan.kl_coef * kl - plan.entropy_coef * ent
    if plan.uses_reference:
        metrics["actor/kl_loss"] = float(kl.detach())
        metrics["actor/kl_coef"] = plan.kl_coef
    if plan.entropy_coef:
        metrics["actor/entropy_loss"] = float(ent.detach())
    metrics["actor/final_loss"] = float(total.detach())
    return total, metrics


def step_loss(plan: LossPlan, seqs: Sequence[Seq], step: int = 0
              ) -> Callable[[list[Any], list[torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]:
    """The loss function for forward_backward_custom over datums aligned with `seqs`, at train step `step`."""

    def loss_fn(data: list[Any], logprobs_list: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return compute_terms(plan, seqs, logprobs_list, step)

    return loss_fn


def step_metrics(plan: LossPlan, seqs: Sequence[Seq], logprobs: Sequence[Any], step: int = 0) -> dict[str, float]:
    """Trinity's actor metrics from the logprobs a built-in forward_backward returned."""
    with torch.no_grad():
        tensors = [torch.as_tensor(lp, dtype=torch.float32) for lp in logprobs]
        _, metrics = compute_terms(plan, seqs, tensors, step)
    return metrics
