"""Reference recommenders in the same harness: popularity and item-kNN (cosine).

Both are fitted on the training items of a :class:`LeaveOneOutSplit` only.
"""

from __future__ import annotations

import numpy as np

from fedrec.data.split import LeaveOneOutSplit


def user_item_matrix(split: LeaveOneOutSplit) -> np.ndarray:
    """Dense (n_users, n_items) 0/1 matrix of training interactions."""
    users, items = split.train_pairs()
    matrix = np.zeros((split.n_users, split.n_items), dtype=np.float32)
    matrix[users, items] = 1.0
    return matrix


class Popularity:
    """Scores each item by how many training users interacted with it."""

    def __init__(self, split: LeaveOneOutSplit) -> None:
        _, items = split.train_pairs()
        self.counts = np.bincount(items, minlength=split.n_items).astype(np.float64)

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (users.shape[0], self.counts.shape[0])).copy()


class ItemKNN:
    """Item-based CF (Sarwar et al. 2001): score(u, i) = sum of cosine(i, j) over the
    user's items j, with each item's similarities cut to its ``k`` nearest neighbours."""

    def __init__(self, split: LeaveOneOutSplit, *, k: int = 50) -> None:
        self.user_items = user_item_matrix(split)  # (U, I)
        norms = np.sqrt(self.user_items.sum(axis=0)) + 1e-12  # (I,)
        sim = (self.user_items.T @ self.user_items) / np.outer(norms, norms)  # (I, I)
        np.fill_diagonal(sim, 0.0)
        if k < sim.shape[0]:
            cut = np.partition(sim, -k, axis=1)[:, -k][:, None]
            sim = np.where(sim >= cut, sim, 0.0)
        self.similarity = sim.astype(np.float32)

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.user_items[users] @ self.similarity.T
