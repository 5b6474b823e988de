"""Cold start from the public DP-EASE release: no one's interactions, only released arrays.

A DP-EASE run (:mod:`fedrec.dpease`) publishes the top items ``K``, the EASE weights
``B`` over them and a popularity prior computed from the noisy item counts. All three
are outputs of the run's DP releases, so anything computed from them alone is
post-processing and costs no privacy (Dwork and Roth 2014, Prop. 2.1). A new user who
reveals a few liked items gets

    score = w_e * ease(x) / max|ease(x)| + w_p * prior / max|prior| + w_c * content(x)

where ``ease(x) = x_K B`` over the items in ``K`` (zero elsewhere), the prior is the
release's DP popularity prior and ``content`` the content recommender's cosine
(:mod:`fedrec.fallback.content`). The weights are tuned on validation users only
(:func:`fedrec.fallback.evaluation.tune_collaborative`).

The released ``B`` was fitted for users with whole histories. A user with one to five
items is better served by a more strongly regularised model, which can be re-solved from
``B`` itself: with ``P = (G + lam I)^-1`` and ``B = I - P D^-1`` (``D = diag P``, Steck
2019, Eq. 8), ``G + lam I = D^-1 (I - B)^-1``, and the symmetry of ``G`` gives the
ratios ``D_j / D_i = B_ji / B_ij``. ``extra_ridge`` adds that many mean diagonals of the
recovered matrix before solving EASE again (:func:`refit_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.errors import FedrecError
from fedrec.experiments.results import MODEL, read_arrays
from fedrec.fallback.profile import Query
from fedrec.models.ease import ease_weights

TOP_ITEMS, WEIGHTS, PRIOR = "top_items", "weights", "prior"  # names in a DP-EASE run's model.npz


def recovered_gram(weights: np.ndarray) -> np.ndarray:
    """``G + lam I`` up to one positive factor, from EASE weights ``B`` alone.

    ``(I - B)^-1 = D (G + lam I)``; the diagonal ``D`` follows from the symmetry of
    ``G``: ``log D_j - log D_i = log |B_ji / B_ij|`` for every pair with both weights
    nonzero, solved in least squares (a graph-Laplacian system, its constant fixed by
    ``sum log D = 0``), which also averages out the float32 rounding of the release.
    """
    b = np.asarray(weights, dtype=np.float64)
    k = b.shape[0]
    if k == 0:
        return np.zeros((0, 0))
    inverse = np.linalg.inv(np.eye(k) - b)  # D (G + lam I)
    magnitude = np.abs(b)
    usable = (magnitude > 0) & (magnitude.T > 0)
    safe = np.where(usable, magnitude, 1.0)
    ratios = np.where(usable, np.log(safe.T) - np.log(safe), 0.0)  # (K, K): log D_j - log D_i at [i, j]
    laplacian = np.diag(usable.sum(axis=0).astype(np.float64)) - usable  # (K, K)
    log_d = np.linalg.solve(laplacian + 1.0 / k, ratios.sum(axis=0))  # (K,); + 1/K fixes the constant
    gram = inverse / np.exp(log_d - log_d.max())[:, None]
    return (gram + gram.T) / 2


def refit_weights(weights: np.ndarray, *, extra_ridge: float) -> np.ndarray:
    """EASE weights re-solved from released weights with ``extra_ridge`` more mean
    diagonals of ridge (0: the released weights, as float64)."""
    b = np.asarray(weights, dtype=np.float64)
    if extra_ridge < 0:
        raise FedrecError(f"extra ridge must be >= 0, got {extra_ridge}")
    if extra_ridge == 0 or b.shape[0] == 0:
        return b.copy()
    gram = recovered_gram(b)
    return ease_weights(gram, extra_ridge * float(np.trace(gram)) / b.shape[0])


def _unit(scores: np.ndarray) -> np.ndarray:
    top = float(np.max(np.abs(scores))) if scores.shape[0] else 0.0
    return scores / top if top > 0 else scores


@dataclass(frozen=True)
class ReleasedEase:
    """The public DP-EASE arrays the fallback scores with: nothing else is kept."""

    top_items: np.ndarray  # (K,) item indices
    weights: np.ndarray  # (K, K) EASE weights over top_items (possibly re-solved)
    prior: np.ndarray  # (n_items,) the release's DP popularity prior

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, extra_ridge: float = 0.0) -> ReleasedEase:
        missing = sorted({TOP_ITEMS, WEIGHTS, PRIOR} - set(arrays))
        if missing:
            raise FedrecError(f"not a DP-EASE release (missing {', '.join(missing)}): give the model.npz of a model = dp-ease run")
        top = np.asarray(arrays[TOP_ITEMS], dtype=np.int64)
        weights = np.asarray(arrays[WEIGHTS], dtype=np.float64)
        if weights.shape != (top.shape[0], top.shape[0]):
            raise FedrecError(f"DP-EASE weights of shape {weights.shape} do not match {top.shape[0]} top items")
        return cls(top_items=top, weights=refit_weights(weights, extra_ridge=extra_ridge),
                   prior=np.asarray(arrays[PRIOR], dtype=np.float64))

    @classmethod
    def from_run(cls, run_dir: Path, *, extra_ridge: float = 0.0) -> ReleasedEase:
        path = run_dir / MODEL
        if not path.exists():
            raise FedrecError(f"{path} not found: run fedrec simulate with model = dp-ease first")
        return cls.from_arrays(read_arrays(path), extra_ridge=extra_ridge)

    @property
    def n_items(self) -> int:
        return int(self.prior.shape[0])

    def ease_scores(self, query: Query) -> np.ndarray:
        """(n_items,) ``x_K B`` for the query's liked items; zeros outside K or without items."""
        out = np.zeros(self.n_items, dtype=np.float64)
        if self.top_items.shape[0] == 0 or query.given.shape[0] == 0:
            return out
        inside = np.isin(self.top_items, query.given)  # (K,) the user's 0/1 vector over K
        out[self.top_items] = self.weights[inside].sum(axis=0)
        return out

    def prior_scores(self) -> np.ndarray:
        """(n_items,) the DP popularity prior scaled to at most 1 in magnitude."""
        return _unit(self.prior)


@dataclass(frozen=True)
class CollaborativeBlend:
    """Weights of the three signals (``w_e``, ``w_p``, ``w_c`` in the module docstring)."""

    ease_weight: float = 1.0
    prior_weight: float = 0.0
    content_weight: float = 0.0

    def __post_init__(self) -> None:
        values = (self.ease_weight, self.prior_weight, self.content_weight)
        if min(values) < 0 or sum(values) <= 0:
            raise FedrecError(f"blend weights {values} must be >= 0 and not all 0")


def blend_scores(*, ease: np.ndarray, prior: np.ndarray, content: np.ndarray | None, blend: CollaborativeBlend) -> np.ndarray:
    """(n_items,) the blend of one user's (unscaled) ease scores, the unit prior and the content cosine.

    Without liked items the ease term is zero, so the prior and content rank.
    """
    out = blend.ease_weight * _unit(ease) + blend.prior_weight * prior
    if content is not None and blend.content_weight:
        out = out + blend.content_weight * content
    return out
