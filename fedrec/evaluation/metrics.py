"""Ranking metrics: HR@K, NDCG@K (sampled and full ranking), Recall@K, coverage.

He et al. (2017), Sec. 4.1: the held-out item is ranked against 99 sampled
negatives; HR@K says whether it lands in the top K, NDCG@K = 1 / log2(rank + 2)
rewards a higher place. Ties are counted against the held-out item, so a model that
scores everything alike gets rank n (no credit), not a lucky draw.
"""

from __future__ import annotations

import numpy as np

K = 10
RECALL_K = 20
METRIC_NAMES = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10", "recall@20")


def rank_of(pos_scores: np.ndarray, other_scores: np.ndarray) -> np.ndarray:
    """0-based rank of each held-out item among the others.

    ``pos_scores`` (U,), ``other_scores`` (U, N) -> (U,) int. Entries of
    ``other_scores`` that are ``-inf`` (masked items) never outrank anything.
    """
    pos = pos_scores[:, None]
    masked = np.isneginf(other_scores)
    beats = (other_scores >= pos) & ~masked
    return beats.sum(axis=1)


def hit_at(ranks: np.ndarray, k: int) -> np.ndarray:
    return (ranks < k).astype(np.float64)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def user_metrics(sampled_rank: np.ndarray, full_rank: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user metric arrays from the two ranks (sampled negatives, full catalogue).

    With a single held-out item, Recall@20 equals HR@20 of the full ranking.
    """
    return {
        "hr@10": hit_at(sampled_rank, K),
        "ndcg@10": ndcg_at(sampled_rank, K),
        "full_hr@10": hit_at(full_rank, K),
        "full_ndcg@10": ndcg_at(full_rank, K),
        "recall@20": hit_at(full_rank, RECALL_K),
    }


def full_rank(scores: np.ndarray, *, target: np.ndarray, exclude: list[np.ndarray]) -> np.ndarray:
    """Rank of ``target[u]`` among all items not in ``exclude[u]``.

    ``scores`` (U, n_items); the excluded items (the user's training items and
    other held-out items) never outrank the target, nor do items scored ``-inf``.
    Counts the items at or above the target's score in each row and takes away the
    excluded ones (and the target itself): :func:`rank_of` over the masked scores,
    without copying or masking the (U, n_items) matrix.
    """
    n_users, n_items = scores.shape
    rows = np.arange(n_users)
    pos = scores[rows, target]
    at_or_above = (scores >= pos[:, None]).sum(axis=1)
    cells = [np.asarray(items, dtype=np.int64) + u * n_items for u, items in enumerate(exclude)]
    flat = np.unique(np.concatenate(cells)) if cells else np.zeros(0, dtype=np.int64)  # each excluded item once
    owner, item = flat // n_items, flat % n_items
    keep = item != target[owner]  # the target is taken away once, below
    pos[owner[~keep]] = -np.inf  # an excluded target is masked like any excluded item
    owner, item = owner[keep], item[keep]
    excluded = np.bincount(owner, weights=scores[owner, item] >= pos[owner], minlength=n_users)
    rank = at_or_above - excluded.astype(np.int64) - ~np.isnan(pos)  # the target itself (counted unless NaN)
    lowest = np.isneginf(pos)  # a target scored -inf: -inf items do not outrank it, count them out as rank_of does
    if lowest.any():
        masked = scores[lowest].astype(np.float64, copy=True)
        for row, u in enumerate(np.flatnonzero(lowest)):
            masked[row, exclude[u]] = -np.inf
            masked[row, target[u]] = -np.inf
        rank[lowest] = rank_of(pos[lowest].astype(np.float64), masked)
    return rank


def coverage(top_items: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one user's top-K list."""
    return float(np.unique(top_items).shape[0] / n_items)


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.mean(values)) for name, values in per_user.items()}
