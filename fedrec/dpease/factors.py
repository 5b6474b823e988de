"""DP-Recon: a factor model (GMF with an identity output layer) whose item side comes
from the DP-EASE co-occurrence release and whose user side is rebuilt on each device.

Item side (server, post-processing of the released Gram, no privacy cost; Dwork and Roth
2014, Prop. 2.1): the noisy Gram over the top items is floored as
:func:`fedrec.dpease.fit.conditioned_gram` does, and its ``d`` leading eigenpairs give
the item factors ``Q = V_d diag(lambda_d)^(1/2)`` (K, d): the rank-d factorisation of the
co-occurrence that the release supports.

User side (device, never uploaded; Singhal et al. 2021, "Federated Reconstruction",
Alg. 1): each device solves its user vector from its own history ``x`` (recency weights
over the top items) against the released factors by ridge regression,
``u = (Q^T Q + mu I)^-1 Q^T x`` (d,), and scores ``Q u``. Nothing about ``u`` leaves the
device: it is recomputed from the history whenever the device scores.

Score: the DP-EASE score plus ``mix * Q u`` on the top items, before the top-first shift
(:meth:`fedrec.dpease.fit.EaseRelease.score`), as NeuMF adds a GMF and an MLP branch.
``mix = weight * ||B||_F / ||Q (Q^T Q + mu I)^-1 Q^T||_F`` puts the two item-item
operators on one scale from the release alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedrec.dpease.fit import EaseRelease

ITEM_FACTORS, RIDGE, MIX = "item_factors", "recon_ridge", "recon_mix"  # released arrays beside DP-EASE's


def item_factors(noisy_gram: np.ndarray, *, noise_std: float, eigen_floor: float, dim: int) -> np.ndarray:
    """(K, min(dim, K)) item factors ``V_d lambda_d^(1/2)`` of the noisy symmetric Gram
    after raising every eigenvalue to ``eigen_floor * noise_std * sqrt(K)`` (without noise:
    negative rounding errors to 0), leading eigenvalue first."""
    k = noisy_gram.shape[0]
    d = min(dim, k)
    if d == 0:
        return np.zeros((k, 0))
    values, vectors = np.linalg.eigh(np.asarray(noisy_gram, dtype=np.float64))  # ascending
    floor = eigen_floor * noise_std * math.sqrt(k) if noise_std > 0 else 0.0
    values = np.maximum(values, floor)[::-1][:d]
    return vectors[:, ::-1][:, :d] * np.sqrt(values)[None, :]  # (K, d)


def ridge(noisy_gram: np.ndarray, *, noise_std: float, shrink: float) -> float:
    """The reconstruction's ridge ``mu``: ``shrink * noise_std * sqrt(K)`` (the noise's
    spectral scale, as EASE's lambda grows with it), or ``shrink`` times the Gram's mean
    diagonal without noise (the data's own scale)."""
    k = noisy_gram.shape[0]
    if noise_std > 0:
        return shrink * noise_std * math.sqrt(k)
    return shrink * max(float(np.trace(noisy_gram)) / max(k, 1), 1e-12)


def reconstruct(factors: np.ndarray, history_top: np.ndarray, *, ridge_: float) -> np.ndarray:
    """(U, d) user vectors solved on the devices from their histories over the top items
    (U, K): ``argmin_u ||x - Q u||^2 + mu ||u||^2`` for each row ``x``."""
    d = factors.shape[1]
    system = factors.T @ factors + max(ridge_, 1e-12) * np.eye(d)  # (d, d)
    return np.linalg.solve(system, factors.T @ np.atleast_2d(history_top).T).T  # (U, d)


def factor_operator(factors: np.ndarray, *, ridge_: float) -> np.ndarray:
    """(K, K) the item-item operator ``Q (Q^T Q + mu I)^-1 Q^T`` that reconstruction then
    scoring applies to a history: ``x -> Q u``."""
    d = factors.shape[1]
    system = factors.T @ factors + max(ridge_, 1e-12) * np.eye(d)
    return factors @ np.linalg.solve(system, factors.T)


def mixing(ease_weights: np.ndarray, factors: np.ndarray, *, ridge_: float, weight: float) -> float:
    """``weight * ||B||_F / ||Q (Q^T Q + mu I)^-1 Q^T||_F`` (0 where either is empty)."""
    if weight == 0 or factors.size == 0 or ease_weights.size == 0:
        return 0.0
    operator = np.linalg.norm(factor_operator(factors, ridge_=ridge_))
    return weight * float(np.linalg.norm(ease_weights)) / operator if operator > 0 else 0.0


@dataclass(frozen=True)
class ReconRelease:
    """The public DP-Recon model: the DP-EASE release plus the item factors."""

    ease: EaseRelease
    factors: np.ndarray  # (K, d) over ease.top_items
    ridge: float
    mix: float

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            **self.ease.to_arrays(), ITEM_FACTORS: self.factors.astype(np.float32),
            RIDGE: np.array([self.ridge], dtype=np.float64), MIX: np.array([self.mix], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ReconRelease:
        ease = EaseRelease.from_arrays(arrays)
        k = ease.top_items.shape[0]
        factors = np.asarray(arrays[ITEM_FACTORS], dtype=np.float64)
        factors = factors.reshape(k, factors.size // k if k else 0)  # (K, d), also where K is 0
        return cls(ease=ease, factors=factors, ridge=float(np.asarray(arrays[RIDGE]).reshape(-1)[0]),
                   mix=float(np.asarray(arrays[MIX]).reshape(-1)[0]))

    @property
    def top_items(self) -> np.ndarray:
        return self.ease.top_items

    def user_vectors(self, history: np.ndarray) -> np.ndarray:
        """(U, d) each device's own user vector from its (U, n_items) history (:meth:`history`)."""
        return reconstruct(self.factors, np.atleast_2d(history)[:, self.ease.top_items], ridge_=self.ridge)

    def score(self, history: np.ndarray) -> np.ndarray:
        """(U, n_items) scores: DP-EASE's plus ``mix * Q u`` on the top items."""
        history = np.atleast_2d(history)
        if self.mix == 0 or self.factors.size == 0:
            return self.ease.score(history)
        return self.ease.score(history, extra=self.mix * self.user_vectors(history) @ self.factors.T)

    def history(self, train_items: np.ndarray) -> np.ndarray:
        return self.ease.history(train_items)

    def score_items(self, train_items: np.ndarray) -> np.ndarray:
        """One device's scores (n_items,) from its own training items, in time order."""
        return self.score(self.history(train_items)[None, :])[0]

    def item_item(self) -> np.ndarray:
        """(K, K) the linear map from a history over the top items to their scores (the
        prior aside): ``B + mix Q (Q^T Q + mu I)^-1 Q^T``; what explanations read."""
        weights = self.ease.item_item()
        if self.mix == 0 or self.factors.size == 0:
            return weights
        return weights + self.mix * factor_operator(self.factors, ridge_=self.ridge)


def fit_recon(
    release: EaseRelease, noisy_gram: np.ndarray | None, *, noise_std: float, eigen_floor: float, dim: int,
    shrink: float, weight: float,
) -> ReconRelease:
    """The DP-Recon release from the DP-EASE one and the noisy Gram (unpacked, over
    ``release.top_items``; None or an empty release: no factors, DP-EASE alone)."""
    k = release.top_items.shape[0]
    if noisy_gram is None or k == 0:
        return ReconRelease(ease=release, factors=np.zeros((k, 0)), ridge=0.0, mix=0.0)
    factors = item_factors(noisy_gram, noise_std=noise_std, eigen_floor=eigen_floor, dim=dim)
    mu = ridge(noisy_gram, noise_std=noise_std, shrink=shrink)
    mix = mixing(np.asarray(release.weights, dtype=np.float64), factors, ridge_=mu, weight=weight)
    return ReconRelease(ease=release, factors=factors, ridge=mu, mix=mix)
