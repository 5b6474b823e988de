"""The content-based recommender: profile-to-item cosine, blended with popularity.

score(i) = (1 - w) * cos(p, x_i) + w * prior(i), where x_i are the unit item content
vectors, p the profile vector (the mean of the liked items' vectors plus a genre query
for the chosen genres) and prior the (demographic) popularity prior in [0, 1]. A
profile with no items and no genres has no content signal, so only the prior ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix

from fedrec.errors import ConfigError
from fedrec.fallback.catalog import Catalog
from fedrec.fallback.features import l2_rows
from fedrec.fallback.profile import Query
from fedrec.fallback.recommender import Recommendation, top_k

SPARSE_BELOW = 0.1  # density under which item vectors are scored as a sparse matrix
NOTABLE_QUANTILE = 0.9  # content similarity above this quantile of the catalogue counts as a reason


@dataclass(frozen=True)
class BlendConfig:
    """How much popularity counts (``popularity_weight`` = w above) and how demographics smooth it."""

    popularity_weight: float = 0.5
    smoothing: float = 200.0

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.popularity_weight <= 1.0:
            problems.append(f"popularity-weight {self.popularity_weight} must be in [0, 1]")
        if self.smoothing < 0:
            problems.append(f"smoothing {self.smoothing} must be >= 0")
        if problems:
            raise ConfigError(problems)


class ContentRecommender:
    """Scores items by content similarity to what the user gave, blended with popularity.

    ``blend.popularity_weight = 0`` is content only; ``1`` is the popularity prior only.
    """

    def __init__(self, catalog: Catalog, blend: BlendConfig = BlendConfig()) -> None:
        self.catalog = catalog
        self.blend = blend
        # TF-IDF item vectors are almost all zeros: a sparse product scores the catalogue much
        # faster than a dense one (benchmarks/README.md)
        vectors = catalog.vectors
        self._matrix: Any = csr_matrix(vectors) if np.count_nonzero(vectors) < SPARSE_BELOW * vectors.size else vectors

    def profile_vector(self, query: Query) -> np.ndarray | None:
        """(d,) unit vector of the profile, or None if it holds no content signal."""
        parts = []
        if query.given.shape[0]:
            parts.append(l2_rows(self.catalog.vectors[query.given].mean(axis=0, keepdims=True))[0])
        if query.genres:
            # genres are the first block of the item vectors (features.build_item_vectors)
            genre_query = np.zeros(self.catalog.vectors.shape[1], dtype=np.float32)
            genre_query[list(query.genres)] = 1.0
            parts.append(genre_query / np.linalg.norm(genre_query))
        if not parts:
            return None
        total = np.sum(parts, axis=0)
        norm = np.linalg.norm(total)
        return total / norm if norm > 0 else None

    def content_scores(self, query: Query) -> np.ndarray:
        """(n_items,) cosine similarity to the profile; zeros without a content signal."""
        p = self.profile_vector(query)
        if p is None:
            return np.zeros(self.catalog.n_items, dtype=np.float64)
        return np.asarray(self._matrix @ p, dtype=np.float64).ravel()  # (I, d) @ (d,) -> (I,)

    def scores(self, query: Query) -> np.ndarray:
        return self._combine(self.content_scores(query), query)

    def _combine(self, content: np.ndarray, query: Query) -> np.ndarray:
        w = self.blend.popularity_weight
        if w == 0.0:
            return content
        prior = self.catalog.popularity.scores(query.demographics, smoothing=self.blend.smoothing)
        return prior if w == 1.0 else (1.0 - w) * content + w * prior

    def recommend(self, query: Query, *, k: int) -> list[Recommendation]:
        content = self.content_scores(query)
        scores = self._combine(content, query)
        # an item is explained by content only if its similarity stands out for this profile;
        # otherwise it is on the list for its popularity, and the reason says so
        notable = float(np.quantile(content, NOTABLE_QUANTILE)) if np.any(content) else np.inf
        items = top_k(scores, k=k, exclude=query.given)
        return [Recommendation(int(i), float(scores[i]), self.reason(int(i), query, content[i] >= notable)) for i in items]

    def reason(self, item: int, query: Query, similar: bool = True) -> str:
        """One line a user can check: which liked item or chosen genre it follows from.

        ``similar`` says whether the item's content similarity to the profile stands out;
        if not, the reason is popularity, not a weak content match.
        """
        cat = self.catalog
        item_genres = set(np.flatnonzero(cat.genres[item]))
        matched = sorted(item_genres & set(query.genres))
        if query.given.shape[0] and similar:
            sims = cat.vectors[query.given] @ cat.vectors[item]  # (n_given,)
            closest = int(query.given[int(np.argmax(sims))])
            shared = sorted(item_genres & set(np.flatnonzero(cat.genres[closest])))
            if shared:
                names = ", ".join(cat.genre_names[g] for g in shared)
                return f"shares genres {names} with {cat.titles[closest]}"
            if not matched:
                return f"similar in title and era to {cat.titles[closest]}"
        if matched:
            return f"matches your genres {', '.join(cat.genre_names[g] for g in matched)}"
        who = query.demographics.describe()
        return f"popular with users like you ({who})" if who else "popular with many users"
