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
recovered matrix before solving EASE again (:func:`refit_weights`). Where the run shrank
EASE towards a public content target ``T`` (:func:`fedrec.dpease.fit.ease_weights_towards`),
``I - B = P (lam (I - T) + diag(mu))`` and the same symmetry gives ``mu`` and the Gram
exactly, in units of ``lam``.

**A prior from the Gram.** Phase 1 weighs each user's items by ``C / sqrt(n_u)``, so the
release's prior ranks items by a sum that favours light users. Each row of the
co-occurrence upload sums to ``C m / sqrt(m (m + 1) / 2) ~ sqrt(2) C`` per item the user
has in ``K``, so the row sums of the recovered Gram estimate plain item counts over
``K`` (:func:`gram_counts`).
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


def recovered_gram(weights: np.ndarray, *, target: np.ndarray | None = None) -> np.ndarray:
    """``G + lam I`` up to one positive factor, from EASE weights ``B`` alone.

    ``(I - B)^-1 = D (G + lam I)``; the diagonal ``D`` follows from the symmetry of
    ``G``: ``log D_j - log D_i = log |B_ji / B_ij|`` for every pair with both weights
    nonzero, solved in least squares (a graph-Laplacian system, its constant fixed by
    ``sum log D = 0``), which also averages out the float32 rounding of the release.

    With the (K, K) ``target`` the weights were shrunk towards, the result is exactly
    ``(G + lam I) / lam`` (:func:`_recovered_towards`).
    """
    b = np.asarray(weights, dtype=np.float64)
    k = b.shape[0]
    if k == 0:
        return np.zeros((0, 0))
    if target is not None:
        return _recovered_towards(b, np.asarray(target, dtype=np.float64))
    inverse = np.linalg.inv(np.eye(k) - b)  # D (G + lam I)
    magnitude = np.abs(b)
    usable = (magnitude > 0) & (magnitude.T > 0)
    safe = np.where(usable, magnitude, 1.0)
    ratios = np.where(usable, np.log(safe.T) - np.log(safe), 0.0)  # (K, K): log D_j - log D_i at [i, j]
    laplacian = np.diag(usable.sum(axis=0).astype(np.float64)) - usable  # (K, K)
    log_d = np.linalg.solve(laplacian + 1.0 / k, ratios.sum(axis=0))  # (K,); + 1/K fixes the constant
    gram = inverse / np.exp(log_d - log_d.max())[:, None]
    return (gram + gram.T) / 2


def _recovered_towards(b: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(G + lam I) / lam`` from weights ``B = I - P (lam (I - T) + diag(mu))`` (EASE
    shrunk towards ``T``, :func:`fedrec.dpease.fit.ease_weights_towards`).

    With ``Q = (I - B)^-1``, ``G + lam I = A Q`` for ``A = lam (I - T) + diag(mu)``; at
    ``lam = 1`` the symmetry of ``A Q`` is linear in ``mu``: ``mu_i Q_ij - mu_j Q_ji =
    R_ji - R_ij`` with ``R = (I - T) Q``, for every pair, solved in least squares.
    """
    k = b.shape[0]
    q = np.linalg.inv(np.eye(k) - b)  # (K, K)
    r = (np.eye(k) - target) @ q  # (K, K)
    normal = -(q * q.T)  # normal equations of the pair equations: off-diagonal -Q_ij Q_ji
    np.fill_diagonal(normal, (q**2).sum(axis=1) - np.diag(q) ** 2)  # sum over j != i of Q_ij^2
    mu = np.linalg.solve(normal, (q * (r.T - r)).sum(axis=1))  # (K,)
    gram = (np.eye(k) - target + np.diag(mu)) @ q
    return (gram + gram.T) / 2


def refit_weights(weights: np.ndarray, *, extra_ridge: float, target: np.ndarray | None = None) -> np.ndarray:
    """EASE weights re-solved from released weights with ``extra_ridge`` more mean
    diagonals of ridge (0: the released weights, as float64); ``target``: the content
    target the release was shrunk towards (the re-solve is plain EASE)."""
    b = np.asarray(weights, dtype=np.float64)
    if extra_ridge < 0:
        raise FedrecError(f"extra ridge must be >= 0, got {extra_ridge}")
    if extra_ridge == 0 or b.shape[0] == 0:
        return b.copy()
    gram = recovered_gram(b, target=target)
    return ease_weights(gram, extra_ridge * float(np.trace(gram)) / b.shape[0])


def gram_counts(weights: np.ndarray, *, counts: np.ndarray, top_items: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """(n_items,) item counts: the row sums of the recovered Gram on ``top_items``, fitted
    (least squares through 0) to the scale of ``counts``; ``counts`` elsewhere.

    A user with ``m`` items in ``K`` adds about ``sqrt(2) C`` to each of their items' row
    sums whatever ``m`` (module docstring), so the row sums rank by plain counts. Without
    ``target`` the recovered matrix is ``G + lam I`` with ``lam`` unknown: the row sums
    carry one common offset, which keeps their order.
    """
    out = np.asarray(counts, dtype=np.float64).copy()
    if top_items.shape[0] == 0:
        return out
    sums = recovered_gram(weights, target=target).sum(axis=1)  # (K,)
    scale = float(sums @ out[top_items]) / max(float(sums @ sums), 1e-300)
    out[top_items] = scale * sums
    return out


def _unit(scores: np.ndarray) -> np.ndarray:
    top = float(np.max(np.abs(scores))) if scores.shape[0] else 0.0
    return scores / top if top > 0 else scores


@dataclass(frozen=True)
class ReleaseSettings:
    """What the fit used besides the arrays, all public: the run's ``ease-prior-weight``
    and the (K, K) content target it shrank EASE towards (None: plain EASE)."""

    prior_weight: float
    target: np.ndarray | None = None


@dataclass(frozen=True)
class ReleasedEase:
    """The public DP-EASE arrays the fallback scores with: nothing else is kept."""

    top_items: np.ndarray  # (K,) item indices
    weights: np.ndarray  # (K, K) EASE weights over top_items (possibly re-solved)
    prior: np.ndarray  # (n_items,) the release's DP popularity prior, or the Gram-count prior

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], *, extra_ridge: float = 0.0, settings: ReleaseSettings | None = None,
        gram_prior: bool = False,
    ) -> ReleasedEase:
        """The release, its weights re-solved with ``extra_ridge``; with ``gram_prior`` the
        prior is ``prior_weight * asinh(count)`` of :func:`gram_counts` (counts in units of
        the phase-1 noise std, read back from the release's prior) instead of the release's."""
        missing = sorted({TOP_ITEMS, WEIGHTS, PRIOR} - set(arrays))
        if missing:
            raise FedrecError(f"not a DP-EASE release (missing {', '.join(missing)}): give the model.npz of a model = dp-ease run")
        top = np.asarray(arrays[TOP_ITEMS], dtype=np.int64)
        weights = np.asarray(arrays[WEIGHTS], dtype=np.float64)
        if weights.shape != (top.shape[0], top.shape[0]):
            raise FedrecError(f"DP-EASE weights of shape {weights.shape} do not match {top.shape[0]} top items")
        target = None if settings is None else settings.target
        prior = np.asarray(arrays[PRIOR], dtype=np.float64)
        if gram_prior:
            if settings is None or not settings.prior_weight > 0:
                raise FedrecError("the Gram prior needs the run's ease-prior-weight (> 0): pass ReleaseSettings")
            counts = np.sinh(prior / settings.prior_weight)  # (n_items,) the noisy counts / their noise std
            prior = settings.prior_weight * np.arcsinh(gram_counts(weights, counts=counts, top_items=top, target=target))
        return cls(top_items=top, weights=refit_weights(weights, extra_ridge=extra_ridge, target=target), prior=prior)

    @classmethod
    def from_run(cls, run_dir: Path, *, extra_ridge: float = 0.0) -> ReleasedEase:
        path = run_dir / MODEL
        if not path.exists():
            raise FedrecError(f"{path} not found: run fedrec simulate with model = dp-ease first")
        return cls.from_arrays(read_arrays(path), extra_ridge=extra_ridge)

    @property
    def n_items(self) -> int:
        return int(self.prior.shape[0])

    def refit(self, extra_ridge: float, *, target: np.ndarray | None = None) -> ReleasedEase:
        """The same release with its weights re-solved with ``extra_ridge`` more ridge
        (:func:`refit_weights`; give the released weights, and the content ``target`` the run shrank them towards)."""
        return ReleasedEase(top_items=self.top_items, prior=self.prior,
                            weights=refit_weights(self.weights, extra_ridge=extra_ridge, target=target))

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
