"""Synthetic interaction data with the shape of real recommendation logs, at any scale.

What makes real data hard and what makes it learnable, in a few parameters:

* item popularity is a power law (Zipf with exponent ``item_skew``): a few items are
  in many histories, most in few;
* user activity is heavy-tailed (log-normal with mean ``mean_interactions``): most
  users have a short history, a few a long one;
* choices follow latent factors: user u picks items with probability proportional to
  ``popularity_i * exp(affinity * <p_u, q_i>)`` (without replacement), so a
  collaborative-filtering model can recover structure beyond popularity.

A user's ``k`` items are a sample without replacement, drawn sequentially (each next
item with probability proportional to its weight among those not yet drawn). For most
users this is done by drawing with replacement from the user's distribution (inverse
CDF) and keeping the first ``k`` distinct items: each new distinct item then has exactly
the sequential probability. Users with long histories (more than an eighth of the
catalogue), for whom repeats would be many, use the Gumbel-top-k trick (Kool et al.
2019: the k largest of ``log weight + Gumbel noise``), the same distribution. Users are
handled in chunks (similar lengths together) so memory stays bounded for millions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.data.interactions import Interactions
from fedrec.errors import DataError

SYNTHETIC = "synthetic"
MIN_HISTORY = 3  # what a leave-one-out split needs
SCORES_PER_CHUNK = 1 << 24  # (user, item) scores held at once
LONG_HISTORY = 8  # a history longer than n_items / this is drawn by Gumbel-top-k


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
    picked: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * n
    by_length = np.argsort(lengths, kind="stable")
    long_from = int(np.searchsorted(lengths[by_length], m // LONG_HISTORY, side="right"))
    chunk = max(1, SCORES_PER_CHUNK // m)
    for start in range(0, long_from, chunk):
        rows = by_length[start : min(long_from, start + chunk)]
        for row, drawn in zip(rows, _by_inverse_cdf(log_pop, users[rows], items, lengths[rows], spec.affinity, rng)):
            picked[row] = drawn
    for start in range(long_from, n, chunk):
        rows = by_length[start : start + chunk]
        for row, drawn in zip(rows, _by_gumbel_top_k(log_pop, users[rows], items, lengths[rows], spec.affinity, rng)):
            picked[row] = drawn
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


def _log_weights(log_pop: np.ndarray, users: np.ndarray, items: np.ndarray, affinity: float) -> np.ndarray:
    """(c, m) log choice weights ``log popularity + affinity <p_u, q_i>``."""
    return log_pop + affinity * users @ items.T


def _by_gumbel_top_k(
    log_pop: np.ndarray, users: np.ndarray, items: np.ndarray, lengths: np.ndarray, affinity: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Each user's ``length`` items: the largest of log weight + Gumbel noise, best first."""
    keys = _log_weights(log_pop, users, items, affinity) + rng.gumbel(size=(users.shape[0], log_pop.shape[0]))
    longest = int(lengths.max())
    top = np.argpartition(-keys, longest - 1, axis=1)[:, :longest]  # unordered top-`longest`
    order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
    ranked = np.take_along_axis(top, order, axis=1)  # (c, longest), best first
    return [row[:length] for row, length in zip(ranked, lengths)]


def _by_inverse_cdf(
    log_pop: np.ndarray, users: np.ndarray, items: np.ndarray, lengths: np.ndarray, affinity: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Each user's ``length`` items: draws with replacement from the user's weights,
    the first ``length`` distinct ones in draw order (a sequential sample without
    replacement). Users short of distinct items draw as many again, appended to their draws."""
    import torch  # batched cumulative sums and searches; imported where used (the data layer loads without it)

    weights = torch.from_numpy(users @ items.T).mul_(affinity).add_(torch.from_numpy(log_pop)).exp_()  # in place
    cdf = torch.cumsum(weights, dim=1)  # (c, m) float64; the log weights are small: no overflow
    del weights
    c, m = cdf.shape
    need = lengths.astype(np.int64)
    out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * c
    todo = np.arange(c)
    uniforms = rng.random((c, int(np.ceil(1.25 * lengths.max())) + 8))
    while True:
        mine = cdf if todo.shape[0] == c else cdf[torch.from_numpy(todo)]
        drawn = torch.searchsorted(mine, torch.from_numpy(uniforms) * mine[:, -1:], right=True).clamp_(max=m - 1)
        firsts, count = _first_distinct(drawn)
        done = (count.numpy() >= need[todo])
        for row, values in zip(todo[done], firsts[torch.from_numpy(done)].numpy()):
            out[row] = values[: need[row]]
        if done.all():
            break
        todo = todo[~done]
        uniforms = np.concatenate([uniforms[~done], rng.random((todo.shape[0], uniforms.shape[1]))], axis=1)  # twice the draws
    return out


def _first_distinct(drawn: Any) -> tuple[Any, Any]:
    """Per row of draws: the distinct values in order of first appearance (left-aligned,
    padded with -1) and how many there are."""
    import torch

    t, d = drawn.shape
    position = torch.arange(d).expand(t, d)
    order = torch.sort(drawn * d + position, dim=1).indices  # by value, then by position
    ordered = torch.gather(drawn, 1, order)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first_position = torch.where(first, order, torch.full_like(order, d))  # position of each value's first draw
    arrival = torch.sort(first_position, dim=1).values  # first draws in draw order, then d (padding)
    count = first.sum(dim=1)
    values = torch.gather(drawn, 1, arrival.clamp(max=d - 1))
    values = torch.where(arrival < d, values, torch.full_like(values, -1))
    return values, count
