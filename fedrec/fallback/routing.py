"""Who serves a user: the content fallback, the on-device federated model, or a blend.

A user with fewer than ``min_interactions`` interactions, or with no trained private
embedding, gets the fallback; from ``full_interactions`` on, the federated model alone.
In between, the federated model's weight grows linearly with the interaction count.
Scores of the two models live on different scales, so they are blended as rank
percentiles (each in [0, 1]), not raw scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.errors import ConfigError
from fedrec.fallback.profile import Query
from fedrec.fallback.recommender import Recommendation, Recommender, top_k

FALLBACK, BLEND, FEDERATED = "fallback", "blend", "federated"


@dataclass(frozen=True)
class RoutingConfig:
    min_interactions: int = 5  # K: fewer -> fallback only
    full_interactions: int = 20  # from here on -> federated only

    def __post_init__(self) -> None:
        problems = []
        if self.min_interactions < 0:
            problems.append("min-interactions must be >= 0")
        if self.full_interactions < self.min_interactions:
            problems.append("full-interactions must be >= min-interactions")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class Route:
    source: str  # FALLBACK, BLEND or FEDERATED
    federated_weight: float  # 0 for FALLBACK, 1 for FEDERATED


def route(*, n_interactions: int, has_embedding: bool, config: RoutingConfig) -> Route:
    """Decide who serves a user with ``n_interactions`` on the device."""
    if not has_embedding or n_interactions < config.min_interactions:
        return Route(FALLBACK, 0.0)
    if n_interactions >= config.full_interactions:
        return Route(FEDERATED, 1.0)
    span = config.full_interactions - config.min_interactions
    # n = K gives a small but non-zero federated weight: the embedding exists and has been trained
    weight = (n_interactions - config.min_interactions + 1) / (span + 1)
    return Route(BLEND, float(weight))


def rank_percentiles(scores: np.ndarray) -> np.ndarray:
    """(n,) scores -> (n,) in [0, 1]: 1 for the best item, 0 for the worst; ties share a value."""
    n = scores.shape[0]
    if n <= 1:
        return np.ones(n, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n)
    # ties get the mean of their ranks, so the blend does not depend on item order
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse] / (n - 1)


def blend_scores(*, fallback: np.ndarray, federated: np.ndarray, federated_weight: float) -> np.ndarray:
    """(1 - a) * percentile(fallback) + a * percentile(federated), a = ``federated_weight``."""
    if not 0.0 <= federated_weight <= 1.0:
        raise ValueError("federated_weight must be in [0, 1]")
    return (1.0 - federated_weight) * rank_percentiles(fallback) + federated_weight * rank_percentiles(federated)


class RoutedRecommender:
    """Serves one user by :func:`route`: fallback, federated, or their blend."""

    def __init__(
        self, *, fallback: Recommender, federated: Recommender | None, n_interactions: int, config: RoutingConfig
    ) -> None:
        self.fallback = fallback
        self.federated = federated
        self.route = route(n_interactions=n_interactions, has_embedding=federated is not None, config=config)

    def scores(self, query: Query) -> np.ndarray:
        if self.federated is None or self.route.source == FALLBACK:
            return self.fallback.scores(query)
        if self.route.source == FEDERATED:
            return self.federated.scores(query)
        return blend_scores(
            fallback=self.fallback.scores(query), federated=self.federated.scores(query),
            federated_weight=self.route.federated_weight,
        )

    def recommend(self, query: Query, *, k: int) -> list[Recommendation]:
        if self.federated is None or self.route.source == FALLBACK:
            return self.fallback.recommend(query, k=k)
        scores = self.scores(query)
        reason = (
            "predicted by your on-device model" if self.route.source == FEDERATED
            else f"your on-device model ({self.route.federated_weight:.0%}) and content similarity"
        )
        return [Recommendation(int(i), float(scores[i]), reason) for i in top_k(scores, k=k, exclude=query.given)]
