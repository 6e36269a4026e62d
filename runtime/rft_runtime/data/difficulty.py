"""Per-task pass-rate estimates for the difficulty_based selector (Trinity-RFT 0.6's BOTS estimator).

Each task's pass rate is a Beta(alpha, beta) belief. Every observed batch updates all of them:

    alpha <- (1 - lamb) alpha + lamb + (1 - rho) s + rho p m
    beta  <- (1 - lamb) beta  + lamb + (1 - rho) f + rho (1 - p) m

where s and f are the observed successes and failures out of m tries (zero for tasks not in the batch),
and p is a pseudo pass rate interpolated from two reference pass rates per task (its two features): the
model's capability is placed between the weaker and the stronger reference by a coefficient fitted on the
observed tasks (smoothed over batches), so tasks never sampled still move with the model. Observed tasks
use their observed rate as p. With adaptive_rho the pseudo counts' weight halves whenever the
interpolation misses the observed rates by 0.25 or more on average.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class PassRateEstimator:
    """Beta estimates of every task's pass rate, interpolated from two reference pass rates per task."""

    def __init__(self, features: np.ndarray, m: int = 16, lamb: float = 0.2, rho: float = 0.2,
                 adaptive_rho: bool = False, cap_discount: float = 0.9):
        if features.ndim != 2 or features.shape[1] != 2:
            raise ValueError(f"the estimator needs two reference pass rates per task, got shape {features.shape}")
        self.features = features.astype(float)
        self.n = len(features)
        self.m, self.lamb, self.rho = int(m), float(lamb), float(rho)
        self.adaptive_rho = bool(adaptive_rho)
        self.cap_discount = float(cap_discount)
        self.capability: float | None = None
        self.alphas = np.ones(self.n)
        self.betas = np.ones(self.n)

    def update(self, indices: list[int], pass_rates: list[float]) -> None:
        """Fold one batch's observed pass rates (of the tasks at `indices`) into every estimate."""
        idx = np.asarray(indices, dtype=int)
        rates = np.asarray(pass_rates, dtype=float)
        weak, strong = self.features[idx].mean(axis=0)
        estimate = (rates.mean() - weak) / (strong - weak + 1e-6)
        self.capability = estimate if self.capability is None else (
            self.cap_discount * self.capability + (1 - self.cap_discount) * estimate)
        successes = np.zeros(self.n)
        failures = np.zeros(self.n)
        successes[idx] = rates * self.m
        failures[idx] = (1 - rates) * self.m
        pseudo = np.clip((self.features[:, 1] - self.features[:, 0]) * self.capability + self.features[:, 0], 0, 1)
        if self.adaptive_rho and np.mean(np.abs(pseudo[idx] - rates)) >= 0.25:
            self.rho *= 0.5
        pseudo[idx] = rates
        self.alphas = ((1 - self.lamb) * self.alphas + self.lamb + (1 - self.rho) * successes
                       + self.rho * pseudo * self.m)
        self.betas = ((1 - self.lamb) * self.betas + self.lamb + (1 - self.rho) * failures
                      + self.rho * (1 - pseudo) * self.m)

    def predict(self, rng: Any = None, sample: bool = False) -> np.ndarray:
        """Every task's pass rate: the Beta mean, or one draw from each Beta (sample)."""
        if sample:
            return (rng or np.random.default_rng()).beta(self.alphas, self.betas)
        return self.alphas / (self.alphas + self.betas)
