"""The popularity prior, optionally conditioned on the user's demographic groups.

For each demographic attribute the user gives (age group, gender, occupation), the
item shares within that group are shrunk towards the global shares with ``smoothing``
pseudo-interactions (an additive / Dirichlet prior, as in Bayesian smoothing of
counts); the prior is the mean of those shares. With no demographics, or with
infinite smoothing, it is plain popularity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedrec.data.interactions import UserMetadata
from fedrec.fallback.profile import Demographics, age_group


@dataclass(frozen=True)
class PopularityPrior:
    """Interaction counts per item, overall and per demographic group."""

    counts: np.ndarray  # (n_items,) float64
    group_counts: dict[str, dict[str, np.ndarray]]  # attribute -> group -> (n_items,)
    smoothing: float = 200.0  # pseudo-interactions pulling a group towards the global shares

    @classmethod
    def fit(
        cls, *, users: np.ndarray, items: np.ndarray, n_items: int, user_meta: UserMetadata | None,
        smoothing: float = 200.0,
    ) -> PopularityPrior:
        """Count ``(users[k], items[k])`` interactions; ``user_meta`` is indexed by the same user index."""
        counts = np.bincount(items, minlength=n_items).astype(np.float64)
        groups: dict[str, dict[str, np.ndarray]] = {}
        if user_meta is not None:
            labels: dict[str, list[str] | None] = {
                "age": None if user_meta.age is None else [age_group(float(a)) for a in user_meta.age],
                "gender": None if user_meta.gender is None else list(user_meta.gender),
                "occupation": None if user_meta.occupation is None else list(user_meta.occupation),
            }
            for attribute, per_user in labels.items():
                if per_user is None:
                    continue
                by_group: dict[str, np.ndarray] = {}
                for label in sorted(set(per_user)):
                    members = np.array([lab == label for lab in per_user])
                    by_group[label] = np.bincount(items[members[users]], minlength=n_items).astype(np.float64)
                groups[attribute] = by_group
        return cls(counts=counts, group_counts=groups, smoothing=smoothing)

    @property
    def n_items(self) -> int:
        return int(self.counts.shape[0])

    def values(self, attribute: str) -> tuple[str, ...]:
        """Known groups of ``attribute`` (empty if the data set lacks it)."""
        return tuple(self.group_counts.get(attribute, {}))

    def shares(self, demographics: Demographics, *, smoothing: float | None = None) -> np.ndarray:
        """(n_items,) estimated probability that the user's next interaction is each item."""
        m = self.smoothing if smoothing is None else smoothing
        total = self.counts.sum()
        base = self.counts / total if total > 0 else np.full(self.n_items, 1.0 / max(self.n_items, 1))
        parts = []
        for attribute, label in demographics.groups().items():
            group = self.group_counts.get(attribute, {}).get(label)
            if group is None or math.isinf(m):
                continue
            parts.append((group + m * base) / (group.sum() + m))
        return np.mean(parts, axis=0) if parts else base

    def scores(self, demographics: Demographics, *, smoothing: float | None = None) -> np.ndarray:
        """(n_items,) prior in [0, 1]: log-scaled expected counts, 1 for the top item.

        The log keeps the long tail distinguishable when the prior is blended with a
        cosine similarity (raw shares put all but a few items near 0).
        """
        expected = self.shares(demographics, smoothing=smoothing) * max(self.counts.sum(), 1.0)
        scaled = np.log1p(expected)
        top = scaled.max()
        return scaled / top if top > 0 else scaled
