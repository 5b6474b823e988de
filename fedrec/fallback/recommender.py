"""The one recommender contract every model meets, and the top-k selection they share.

Like implicit's ``RecommenderBase``: each model only says how it scores items for a
:class:`~fedrec.fallback.profile.Query`; :func:`top_k` picks the list the same way for
all of them (given items removed, unique, sorted by score, ties by item index so the
answer is deterministic).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedrec.fallback.popularity import PopularityPrior
from fedrec.fallback.profile import Query


@dataclass(frozen=True)
class Recommendation:
    item: int  # item index
    score: float
    reason: str
    contributions: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)  # what made the score, where known


class Recommender(Protocol):
    def scores(self, query: Query) -> np.ndarray:
        """(n_items,) higher is better."""
        ...

    def recommend(self, query: Query, *, k: int) -> list[Recommendation]: ...


def top_k(scores: np.ndarray, *, k: int, exclude: np.ndarray) -> np.ndarray:
    """Indices of the ``k`` best items not in ``exclude``, best first.

    Ties are broken by the lower item index; NaN scores rank last. ``argpartition``
    keeps this O(n) for a catalogue of any size.
    """
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    masked = np.where(np.isnan(scores), -np.inf, scores).astype(np.float64, copy=True)
    allowed = np.ones(masked.shape[0], dtype=bool)
    allowed[exclude] = False
    candidates = np.flatnonzero(allowed)
    if candidates.shape[0] > k:
        # the k-th best score; everything at least as good is a candidate (keeps ties)
        kth = np.partition(masked[candidates], -k)[-k]
        candidates = candidates[masked[candidates] >= kth]
    order = np.lexsort((candidates, -masked[candidates]))
    return candidates[order][:k]


class PopularityRecommender:
    """Popularity prior alone (demographic groups if the query has them)."""

    def __init__(self, prior: PopularityPrior) -> None:
        self.prior = prior

    def scores(self, query: Query) -> np.ndarray:
        return self.prior.scores(query.demographics)

    def recommend(self, query: Query, *, k: int) -> list[Recommendation]:
        scores = self.scores(query)
        who = query.demographics.describe()
        reason = f"popular with users like you ({who})" if who else "popular with many users"
        return [Recommendation(int(i), float(scores[i]), reason) for i in top_k(scores, k=k, exclude=query.given)]
