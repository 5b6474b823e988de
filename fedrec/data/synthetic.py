"""Synthetic interaction data with the shape of real recommendation logs, at any scale.

What makes real data hard and what makes it learnable, in a few parameters:

* item popularity is a power law (Zipf with exponent ``item_skew``): a few items are
  in many histories, most in few;
* user activity is heavy-tailed (log-normal with mean ``mean_interactions``): most
  users have a short history, a few a long one;
* choices follow latent factors: user u picks items with probability proportional to
  ``popularity_i * exp(affinity * <p_u, q_i>)`` (without replacement), so a
  collaborative-filtering model can recover structure beyond popularity.

Sampling uses the Gumbel-top-k trick (Kool et al. 2019): the k largest of
``log weight + Gumbel noise`` are a sample without replacement, in chunks of users so
memory stays bounded for millions of users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.data.interactions import Interactions
from fedrec.errors import DataError

SYNTHETIC = "synthetic"
MIN_HISTORY = 3  # what a leave-one-out split needs
SCORES_PER_CHUNK = 1 << 24  # (user, item) scores held at once


@dataclass(frozen=True)
class SyntheticSpec:
    n_users: int = 10_000
    n_items: int = 2_000
    mean_interactions: float = 20.0
    dim: int = 8  # rank of the latent structure
    item_skew: float = 0.8  # Zipf exponent of item popularity
    activity_sigma: float = 1.0  # log-normal spread of history lengths
    affinity: float = 2.0  # taste vs. popularity; 2.0 gives popularity and item-kNN about ML-100K's HR@10 (docs/engines.md)

    def problems(self) -> list[str]:
        out = []
        if self.n_users < 1:
            out.append("synthetic-users must be >= 1")
        if self.n_items < 2 * MIN_HISTORY + 100:
            out.append(f"synthetic-items must be >= {2 * MIN_HISTORY + 100} (room for 99 evaluation negatives)")
        if not MIN_HISTORY <= self.mean_interactions <= self.n_items / 4:
            out.append(f"synthetic-interactions must be in [{MIN_HISTORY}, synthetic-items / 4]")
        return out


def generate(spec: SyntheticSpec, *, rng: np.random.Generator) -> Interactions:
    """Draw a data set; the same spec and generator state give the same data."""
    problems = spec.problems()
    if problems:
        raise DataError("; ".join(problems))
    n, m = spec.n_users, spec.n_items
    log_pop = -spec.item_skew * np.log1p(np.arange(m, dtype=np.float64))[rng.permutation(m)]  # (m,)
    users = rng.standard_normal((n, spec.dim)) / spec.dim**0.25  # (n, dim); <p_u, q_i> has unit variance
    items = rng.standard_normal((m, spec.dim)) / spec.dim**0.25  # (m, dim)
    # log-normal lengths with the requested mean, at least MIN_HISTORY, at most m / 2
    mu = np.log(spec.mean_interactions) - spec.activity_sigma**2 / 2
    lengths = np.clip(np.rint(rng.lognormal(mu, spec.activity_sigma, size=n)), MIN_HISTORY, m // 2).astype(np.int64)
    chunk = max(1, SCORES_PER_CHUNK // m)
    picked: list[np.ndarray] = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        keys = log_pop + spec.affinity * users[start:stop] @ items.T + rng.gumbel(size=(stop - start, m))  # (c, m)
        longest = int(lengths[start:stop].max())
        top = np.argpartition(-keys, longest - 1, axis=1)[:, :longest]  # unordered top-`longest`
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        ranked = np.take_along_axis(top, order, axis=1)  # (c, longest), best first
        for row, length in zip(ranked, lengths[start:stop]):
            picked.append(row[:length])
    user_index = np.repeat(np.arange(n, dtype=np.int64), lengths)
    item_index = np.concatenate(picked).astype(np.int64)
    # Time order is random within a user: the held-out items are a random pick of theirs.
    timestamps = np.asarray(rng.integers(0, 1 << 40, size=item_index.shape[0], dtype=np.int64))
    return Interactions(
        name=f"{SYNTHETIC}-{n}x{m}",
        users=user_index,
        items=item_index,
        ratings=np.ones(item_index.shape[0], dtype=np.float32),
        timestamps=timestamps,
        user_ids=np.arange(n, dtype=np.int64),
        item_ids=np.arange(m, dtype=np.int64),
    )
