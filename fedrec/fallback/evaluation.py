"""Cold-start evaluation on users who never take part in training.

A seeded, disjoint 10% of the users is held out (test) and another 10% is kept for
tuning (validation); neither contributes to popularity counts or to federated training.
Each held-out user reveals their chronologically first n = 0, 1, 3, 5 interactions as
liked items; every interaction after the first ``max(n)`` is a target (the same targets
for every n, so the rows are comparable). Each target is ranked (a) against every item
the user never interacted with (full ranking) and (b) against 99 such items sampled
once per user (He et al. 2017, Sec. 4.1); HR@10 and NDCG@10 are averaged over a user's
targets, then over users. Blend weights are tuned on the validation users only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedrec.data.interactions import Interactions
from fedrec.data.split import sample_negatives
from fedrec.evaluation.metrics import K, hit_at, ndcg_at, rank_of
from fedrec.fallback.catalog import Catalog
from fedrec.fallback.content import BlendConfig, ContentRecommender
from fedrec.fallback.profile import Demographics, Query

logger = logging.getLogger(__name__)

METRICS = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10")
WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(21))
SMOOTHING_GRID = (10.0, 50.0, 200.0, 1000.0, 5000.0, math.inf)


@dataclass(frozen=True)
class ColdStartUser:
    """One held-out user: their interactions in time order, targets, negatives, demographics."""

    index: int  # user index in the data set
    sequence: np.ndarray  # (n,) item indices, chronological
    targets: np.ndarray  # (T,) the interactions after the first max(reveal)
    negatives: np.ndarray  # (num_negatives,) items never interacted with
    demographics: Demographics

    def query(self, n: int) -> Query:
        return Query(given=self.sequence[:n].copy(), demographics=self.demographics)


@dataclass(frozen=True)
class UserSplit:
    train: np.ndarray  # user indices that may train and be counted
    validation: np.ndarray
    test: np.ndarray


def split_users(
    data: Interactions, *, holdout_fraction: float, min_interactions: int, rng: np.random.Generator
) -> UserSplit:
    """Disjoint test and validation users (each ``holdout_fraction`` of all users) and the rest.

    Only users with at least ``min_interactions`` can be held out (they need targets).
    """
    counts = np.bincount(data.users, minlength=data.n_users)
    eligible = rng.permutation(np.flatnonzero(counts >= min_interactions))
    size = max(1, round(holdout_fraction * data.n_users))
    if 2 * size >= eligible.shape[0]:
        raise ValueError(f"only {eligible.shape[0]} users with {min_interactions}+ interactions: too few to hold out 2 x {size}")
    test, validation = np.sort(eligible[:size]), np.sort(eligible[size : 2 * size])
    train = np.setdiff1d(np.arange(data.n_users), np.concatenate([test, validation]))
    return UserSplit(train=train, validation=validation, test=test)


def demographics_of(data: Interactions, user: int) -> Demographics:
    meta = data.user_meta
    if meta is None:
        return Demographics()
    return Demographics(
        age=None if meta.age is None else int(meta.age[user]),
        gender=None if meta.gender is None else meta.gender[user],
        occupation=None if meta.occupation is None else meta.occupation[user],
    )


def cold_users(
    data: Interactions, users: np.ndarray, *, max_reveal: int, num_negatives: int, rng: np.random.Generator
) -> list[ColdStartUser]:
    """Time-ordered sequences (ties broken at random), targets and sampled negatives."""
    tie_break = rng.random(len(data))
    # without a time column row order means nothing (often sorted by item id): a random order per user
    order = np.lexsort((tie_break, data.timestamps, data.users) if data.timed else (tie_break, data.users))
    sorted_users, sorted_items = data.users[order], data.items[order]
    starts = np.searchsorted(sorted_users, np.arange(data.n_users + 1))
    out = []
    for u in users:
        seq = sorted_items[starts[u] : starts[u + 1]]
        seen = np.unique(seq)
        out.append(
            ColdStartUser(
                index=int(u), sequence=seq, targets=seq[max_reveal:],
                negatives=sample_negatives(n_items=data.n_items, excluded=seen, count=num_negatives, rng=rng),
                demographics=demographics_of(data, int(u)),
            )
        )
    return out


def user_scores(scores: np.ndarray, user: ColdStartUser) -> dict[str, float]:
    """One user's metrics from one (n_items,) score vector, averaged over their targets."""
    pos = scores[user.targets]  # (T,)
    unseen = np.ones(scores.shape[0], dtype=bool)
    unseen[user.sequence] = False
    full = rank_of(pos, np.broadcast_to(scores[unseen], (pos.shape[0], int(unseen.sum()))))
    sampled = rank_of(pos, np.broadcast_to(scores[user.negatives], (pos.shape[0], user.negatives.shape[0])))
    return {
        "hr@10": float(hit_at(sampled, K).mean()), "ndcg@10": float(ndcg_at(sampled, K).mean()),
        "full_hr@10": float(hit_at(full, K).mean()), "full_ndcg@10": float(ndcg_at(full, K).mean()),
    }


Scorer = Callable[[ColdStartUser, int], np.ndarray]  # (user, n revealed) -> (n_items,) scores


def evaluate(scorer: Scorer, users: Sequence[ColdStartUser], n: int) -> dict[str, float]:
    """Mean metrics over ``users`` with ``n`` revealed items."""
    rows = [user_scores(scorer(u, n), u) for u in users]
    return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}


def _fixed(scores: dict[int, np.ndarray]) -> Scorer:
    return lambda user, n: scores[user.index]


def _linear(content: dict[tuple[int, int], np.ndarray], prior: dict[int, np.ndarray], w: float) -> Scorer:
    return lambda user, n: (1 - w) * content[(user.index, n)] + w * prior[user.index]


@dataclass(frozen=True)
class Tuned:
    blend: BlendConfig
    grid: list[dict[str, float]] = field(default_factory=list)  # every point tried, with its val score


def tune_blend(
    catalog: Catalog, users: Sequence[ColdStartUser], *, reveal: Sequence[int], metric: str = "full_ndcg@10"
) -> Tuned:
    """Pick the demographic smoothing (at n = 0) and then the popularity weight (mean over
    the n > 0 in ``reveal``) that maximise ``metric`` on the validation users."""
    base = ContentRecommender(catalog, BlendConfig(popularity_weight=1.0))
    grid: list[dict[str, float]] = []
    best_m, best_value = math.inf, -1.0
    for m in SMOOTHING_GRID:
        prior = {u.index: catalog.popularity.scores(u.demographics, smoothing=m) for u in users}
        value = evaluate(_fixed(prior), users, 0)[metric]
        grid.append({"smoothing": m, "popularity_weight": 1.0, "reveal": 0, metric: value})
        if value > best_value:
            best_m, best_value = m, value
    prior = {u.index: catalog.popularity.scores(u.demographics, smoothing=best_m) for u in users}
    revealed = [n for n in reveal if n > 0] or [0]
    content = {(u.index, n): base.content_scores(u.query(n)) for u in users for n in revealed}
    best_w, best_mean = 1.0, -1.0
    for w in WEIGHT_GRID:
        values = [
            evaluate(_linear(content, prior, w), users, n)[metric]
            for n in revealed
        ]
        grid.append({"smoothing": best_m, "popularity_weight": w, "reveal": -1, metric: float(np.mean(values))})
        if float(np.mean(values)) > best_mean:
            best_w, best_mean = w, float(np.mean(values))
    logger.info("tuned on %d validation users: popularity weight %.2f, smoothing %g", len(users), best_w, best_m)
    return Tuned(blend=BlendConfig(popularity_weight=best_w, smoothing=best_m), grid=grid)
