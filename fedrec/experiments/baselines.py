"""Reference recommenders in the same harness: popularity, item-kNN (cosine) and EASE.

All are fitted on the training items of a :class:`LeaveOneOutSplit` only; EASE's one
hyper-parameter is chosen on the validation users.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from fedrec.data.split import LeaveOneOutSplit
from fedrec.evaluation.scoring import evaluate_scorer

# EASE's L2 grid, in units of the mean number of training interactions per item (the mean
# diagonal of X^T X): the right L2 grows with the data, so a relative grid carries over
# to data sets of other sizes
EASE_L2_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def user_item_matrix(split: LeaveOneOutSplit, *, items: np.ndarray | None = None) -> np.ndarray:
    """Dense (n_users, n_items) 0/1 matrix of training interactions; with ``items``,
    only those columns, in that order: (n_users, len(items))."""
    users, train = split.train_pairs()
    if items is None:
        matrix = np.zeros((split.n_users, split.n_items), dtype=np.float32)
        matrix[users, train] = 1.0
        return matrix
    column = np.full(split.n_items, -1, dtype=np.int64)
    column[items] = np.arange(items.shape[0])
    keep = column[train] >= 0
    matrix = np.zeros((split.n_users, items.shape[0]), dtype=np.float32)
    matrix[users[keep], column[train[keep]]] = 1.0
    return matrix


def sparse_user_items(split: LeaveOneOutSplit, *, items: np.ndarray | None = None) -> sp.csr_matrix:
    """:func:`user_item_matrix` as a sparse CSR matrix (for populations too large to hold dense)."""
    users, train = split.train_pairs()
    width = split.n_items
    if items is not None:
        column = np.full(split.n_items, -1, dtype=np.int64)
        column[items] = np.arange(items.shape[0])
        keep = column[train] >= 0
        users, train, width = users[keep], column[train[keep]], int(items.shape[0])
    matrix = sp.csr_matrix((np.ones(users.shape[0], dtype=np.float32), (users, train)), shape=(split.n_users, width))
    matrix.data[:] = 1.0  # a repeated (user, item) pair is one 1, as in the dense matrix
    return matrix


def training_counts(split: LeaveOneOutSplit) -> np.ndarray:
    """(n_items,) how many training users each item has."""
    return np.bincount(split.train_pairs()[1], minlength=split.n_items).astype(np.float64)


class Popularity:
    """Scores each item by how many training users interacted with it."""

    def __init__(self, split: LeaveOneOutSplit) -> None:
        self.counts = training_counts(split)

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


def ease_weights(user_items: np.ndarray, *, l2: float) -> np.ndarray:
    """EASE item-item weights (Steck 2019, "Embarrassingly Shallow Autoencoders", Eq. 8).

    ``user_items`` (U, I) 0/1 -> B (I, I) with a zero diagonal, the minimiser of
    ``||X - X B||^2 + l2 ||B||^2`` subject to ``diag(B) = 0``:
    ``P = (X^T X + l2 I)^-1``, ``B_ij = -P_ij / P_jj``. Scores are ``X B``.
    """
    if l2 <= 0:
        raise ValueError(f"EASE needs l2 > 0 (got {l2}); it keeps X^T X + l2 I invertible")
    x = user_items.astype(np.float64)
    n_users, n_items = x.shape
    if n_users >= n_items:
        gram = x.T @ x  # (I, I)
        gram[np.diag_indices_from(gram)] += l2
        return _weights_from_inverse(np.linalg.inv(gram))
    # Fewer users than items: Woodbury, (X^T X + l2 I)^-1 = (I - X^T (X X^T + l2 I)^-1 X) / l2,
    # inverts a (U, U) matrix instead of an (I, I) one
    small = x @ x.T  # (U, U)
    small[np.diag_indices_from(small)] += l2
    p = -(x.T @ np.linalg.solve(small, x))  # (I, I)
    p[np.diag_indices_from(p)] += 1.0
    return _weights_from_inverse(p / l2)


def _weights_from_inverse(p: np.ndarray) -> np.ndarray:
    b = -p / np.diag(p)[None, :]  # column j divided by P_jj
    np.fill_diagonal(b, 0.0)
    return b


def ease_scores(user_items: np.ndarray, *, l2: float) -> np.ndarray:
    """``X B`` for every user, with B = :func:`ease_weights`, without forming B.

    With ``M = (X X^T + l2 I)^-1`` (users x users), Woodbury gives ``X P = M X`` and
    ``P_jj = (1 - x_j^T M x_j) / l2`` (``x_j`` column j of X); as ``B = I - P diag(P)^-1``,
    ``X B = X - (M X) diag(P)^-1``. One (U, U) solve against X: cheaper than the (I, I)
    weights whenever there are fewer users than items.
    """
    if l2 <= 0:
        raise ValueError(f"EASE needs l2 > 0 (got {l2}); it keeps X^T X + l2 I invertible")
    x = user_items.astype(np.float64)
    sparse = sp.csr_matrix(x)
    small = np.asarray((sparse @ sparse.T).toarray())  # (U, U): sparse products cost what the histories hold
    small[np.diag_indices_from(small)] += l2
    m = np.linalg.inv(small)  # (U, U), symmetric
    mx = np.asarray(sparse.T @ m).T  # (U, I) = M X = X P, as (X^T M)^T
    diag_p = (1.0 - np.asarray(sparse.multiply(mx).sum(axis=0)).ravel()) / l2  # (I,)
    return x - mx / diag_p[None, :]


class EASE:
    """Scores ``X_u B`` with the EASE weights of the training interactions.

    With fewer users than items every user's scores are computed at once
    (:func:`ease_scores`); otherwise from the item-item weights, with the histories held
    sparse and ``gram`` (``X^T X``, float64) computed once if not given. With ``items``
    (a subset of the catalogue, :func:`ease_items`), EASE is fitted on those columns only
    and every other item ranks below all of them, in order of training popularity.
    """

    def __init__(
        self, split: LeaveOneOutSplit, *, l2: float, items: np.ndarray | None = None, gram: np.ndarray | None = None,
    ) -> None:
        self.l2 = l2
        self.items = None if items is None else np.asarray(items, dtype=np.int64)
        self.n_items = split.n_items
        self.weights: np.ndarray | None = None
        self.scores: np.ndarray | None = None
        self.user_items: np.ndarray | sp.csr_matrix
        fitted = split.n_items if self.items is None else int(self.items.shape[0])
        if split.n_users < fitted:
            self.user_items = user_item_matrix(split, items=self.items)  # (U, M)
            self.scores = ease_scores(self.user_items, l2=l2).astype(np.float32)  # (U, M)
        else:
            if l2 <= 0:
                raise ValueError(f"EASE needs l2 > 0 (got {l2}); it keeps X^T X + l2 I invertible")
            self.user_items = sparse_user_items(split, items=self.items)  # (U, M)
            regularised = np.array(training_gram(self.user_items) if gram is None else gram, dtype=np.float64)
            regularised[np.diag_indices_from(regularised)] += l2
            self.weights = _weights_from_inverse(np.linalg.inv(regularised)).astype(np.float32)  # (M, M)
        counts = training_counts(split)
        self.tail = (counts / (counts.max() + 1.0)).astype(np.float32)  # in [0, 1): popularity order among the other items

    def _inner(self, users: np.ndarray) -> np.ndarray:
        if self.scores is not None:
            return self.scores[users]
        assert self.weights is not None  # one of the two is always set in __init__
        return np.asarray(self.user_items[users] @ self.weights)

    def score(self, users: np.ndarray) -> np.ndarray:
        inner = self._inner(users)  # (U, M)
        if self.items is None:
            return inner
        below = inner.min(axis=1, keepdims=True) - 2.0 if inner.shape[1] else np.zeros((inner.shape[0], 1))
        out = np.add(below.astype(np.float32), self.tail[None, :], dtype=np.float32)  # (U, n_items): under every fitted item
        out[:, self.items] = inner
        return out


def training_gram(user_items: sp.csr_matrix) -> np.ndarray:
    """``X^T X`` (float64, dense) of sparse 0/1 histories: the same integers as the dense product."""
    wide = user_items.astype(np.float64)
    return np.asarray((wide.T @ wide).toarray())


# What one EASE fit may cost on this machine: floating-point operations per l2 tried
# (an (M, M) or, by Woodbury, an (U, U) solve) and dense (users x items) cells held
EASE_MAX_FLOPS = 8e10
EASE_MAX_CELLS = 60_000_000


def ease_items(
    split: LeaveOneOutSplit, *, max_items: int, max_flops: float = EASE_MAX_FLOPS, max_cells: int = EASE_MAX_CELLS,
    users: int | None = None,
) -> np.ndarray | None:
    """The items EASE is fitted on: None (the whole catalogue) when it fits the budget,
    else the ``M`` most frequent training items, ``M`` the largest with ``M <=
    max_items``, the fit's floating-point operations within ``max_flops`` (``U^3 + U M``
    with fewer users than items: the (U, U) inverse of :func:`ease_scores`; else ``M^2 U``:
    the (M, M) inverse and the scoring) and ``U M <= max_cells`` (the dense matrices);
    ``U`` is every user where there are fewer users than items (dense histories), else
    the ``users`` scored (default: every user)."""
    u = split.n_users
    judged = u if users is None else min(users, u)  # how many users are scored

    def fits(m: int) -> bool:
        # fewer users than items: dense histories of every user; otherwise sparse ones, and
        # only the users scored (an evaluation sample) are held dense
        n = u if u < m else judged
        flops = n**3 + n * m if n < m else m * m * n  # (U, U) inverse and dense scores, or (M, M) inverse and scoring
        return m <= max_items and flops <= max_flops and n * m <= max_cells

    if fits(split.n_items):
        return None
    low, high = 1, split.n_items  # the largest m that fits, by bisection (fits is monotone in m)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    counts = training_counts(split)
    return np.argsort(-counts, kind="stable")[:low].astype(np.int64)


def ease_l2_grid(
    split: LeaveOneOutSplit, scales: Sequence[float] = EASE_L2_SCALES, *, items: np.ndarray | None = None
) -> list[float]:
    """The L2 values to try: ``scales`` times the mean training interactions per item
    (of ``items`` where EASE is fitted on those only)."""
    if items is None:
        per_item = split.train_items.shape[0] / split.n_items
    else:
        per_item = float(training_counts(split)[items].sum()) / max(items.shape[0], 1)
    return [float(round(scale * per_item, 1)) for scale in scales]


def fit_ease(
    split: LeaveOneOutSplit, *, l2s: Sequence[float] | None = None, items: np.ndarray | None = None,
    users: np.ndarray | None = None,
) -> tuple[EASE, dict[float, float]]:
    """EASE with the ``l2`` (default :func:`ease_l2_grid`) that gives the best validation
    NDCG@10 (sampled), on every user or on ``users`` (split indices) only; fitted on
    ``items`` only where given (:class:`EASE`).

    Only the validation users' held-out items are looked at; returns the model and the
    validation NDCG@10 of every ``l2`` tried. One LU inverse per ``l2``: an
    eigendecomposition shared by all of them is no faster with multi-threaded BLAS on a
    busy machine.
    """
    tried: dict[float, float] = {}
    best: EASE | None = None
    fitted = split.n_items if items is None else int(items.shape[0])
    gram = training_gram(sparse_user_items(split, items=items)) if split.n_users >= fitted else None
    judged = split if users is None else split.subset(users)
    for l2 in ease_l2_grid(split, items=items) if l2s is None else l2s:
        model = EASE(split, l2=l2, items=items, gram=gram)
        score = model.score if users is None else (lambda u, m=model: m.score(users[u]))
        tried[l2] = evaluate_scorer(score, judged, which="val")["ndcg@10"]
        if best is None or tried[l2] > tried[best.l2]:
            best = model
    if best is None:
        raise ValueError("fit_ease needs at least one l2 to try")
    return best, tried
