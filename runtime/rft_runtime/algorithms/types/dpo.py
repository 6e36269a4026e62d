"""DPO: chosen/rejected pairs from a dataset (mode train), relative to the reference (base) model."""

from __future__ import annotations

from typing import Any

from rft_runtime.algorithms.base import Algorithm, register


@register
class DPO(Algorithm):
    name = "dpo"
    data = "dpo"
    policy_loss_fn = "dpo"
    # Trinity's: a k2 KL loss beside the dpo loss (kl_coef 0.001 unless kl_loss_fn_args says otherwise);
    # here, as for every algorithm, the KL term is trained when kl_loss_fn or kl_coef asks for it
    kl_loss_fn = "k2"

    @classmethod
    def warnings(cls, cfg: Any, plan: Any) -> list[str]:
        """Trinity trains a KL term with dpo even when told none."""
        if cfg.algorithm.kl_loss_fn == "none":
            return ["algorithm.kl_loss_fn none: Trinity replaces it with k2 on dpo (a KL loss with kl_coef "
                    "0.001, or kl_loss_fn_args.kl_coef); here none trains the dpo loss alone"]
        return []
