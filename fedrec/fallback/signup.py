"""Held-out users who answer the sign-up questions: what stated preferences are worth offline.

The protocol of :mod:`fedrec.fallback.evaluation` (held-out users who never train, the
same targets for every n) gains simulated sign-up answers, derived from each held-out
user's own revealed items only, never from their targets:

- ``genres``: the genres of their first ``genre_items`` items (the genres a new user
  would tick), no liked item; the same at every n;
- ``likes``: their first n items as liked items;
- ``genres + likes``: both.

Each variant is scored with :class:`fedrec.fallback.preferences.PreferenceRecommender`
and compared with popularity (exact counts of the training users) user by user: the
paired difference of full-ranking NDCG@10 and its standard error. Its weights (Steck's
``lam``, the liked items' share and weight, the list's structure and, when a DP-EASE
release of the training users is given, the extra ridge of its re-solve, its share of
the liked-item similarity and the weight of its fold-in score) are chosen on the
validation users only (:func:`tune_preferences`). The release is read, never trained on the held-out users: the
liked-item similarity (and so the ``liked`` neighbourhood of the stated-preference
checks) is then the blend of content cosine and the release's item-item weights that
the service uses with ``serve-fallback --release``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from fedrec.evaluation.metrics import K
from fedrec.fallback.catalog import Catalog
from fedrec.fallback.collaborative import ReleasedEase
from fedrec.fallback.evaluation import METRICS, ColdStartUser, Scorer, user_scores
from fedrec.fallback.preferences import (
    GENRE_SHARE,
    LIKED_OVERLAP,
    PreferenceConfig,
    PreferenceRecommender,
    StatedChecks,
    stated_checks,
)
from fedrec.fallback.profile import Query

logger = logging.getLogger(__name__)

GENRES, LIKES, BOTH = "genres", "likes", "genres + likes"
VARIANTS = (GENRES, LIKES, BOTH)
GENRE_ITEMS = 3  # a new user's stated genres: those of their first three items
DEPTH = K  # the list a user sees, then every other item by relevance: a full ranking
CALIBRATION_GRID = (0.6, 0.65, 0.7, 0.75, 0.8)  # Steck's lam
RELEVANCE_GRID = ((0.0, 0.0), (0.25, 0.0))  # (liked_weight, ease_weight): the liked items in the relevance
RELEASE_RELEVANCE_GRID = ((0.0, 0.0), (0.25, 0.0), (1.0, 0.0), (0.0, 0.5), (0.0, 1.0))  # the same with a release
RELEASE_GRID = (0.5, 0.8, 1.0)  # the release's share of the liked-item similarity (with a release)
RIDGE_GRID = (0.0, 10.0, 30.0)  # extra ridge of the release's re-solve, in mean diagonals (with a release)
SHARE_GRID = (0.1, 0.25, 0.5, 1.0)  # the liked items' share of the target, relative to the genres'
FIRST_STAGE = {"calibration_weight": 0.7, "liked_share": 0.25}  # where the list's structure is chosen
CHECK_PAIRS = 30  # random pairs of liked items in the catalogue check
PRIMARY = "full_ndcg@10"


def stated_genres(catalog: Catalog, items: np.ndarray) -> tuple[int, ...]:
    """Genre columns carried by any of ``items``, in column order."""
    if items.shape[0] == 0 or catalog.genres.shape[1] == 0:
        return ()
    return tuple(int(g) for g in np.flatnonzero(catalog.genres[items].sum(axis=0) > 0))


def signup_query(user: ColdStartUser, n: int, variant: str, catalog: Catalog, *, genre_items: int = GENRE_ITEMS) -> Query:
    """The answers a held-out user gives with ``n`` revealed items: read from
    ``user.sequence[:max(n, genre_items)]`` only (never from their targets)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown sign-up variant {variant!r}; one of {', '.join(VARIANTS)}")
    revealed = user.sequence[: max(n, genre_items if variant != LIKES else 0)].copy()
    genres = stated_genres(catalog, revealed[:genre_items]) if variant in (GENRES, BOTH) else ()
    given = revealed[:n] if variant in (LIKES, BOTH) else np.empty(0, dtype=np.int64)
    return Query(given=np.asarray(given, dtype=np.int64), genres=genres, demographics=user.demographics)


def signup_scorer(recommender: PreferenceRecommender, variant: str, *, genre_items: int = GENRE_ITEMS) -> Scorer:
    """(user, n) -> (n_items,) a full ranking: the greedy list ``DEPTH`` deep, then relevance."""
    return lambda user, n: recommender.ranking_scores(
        signup_query(user, n, variant, recommender.catalog, genre_items=genre_items), k=DEPTH
    )


def per_user(scorer: Scorer, users: Sequence[ColdStartUser], n: int) -> dict[str, np.ndarray]:
    """Each user's metrics (arrays over ``users``), for paired comparisons."""
    rows = [user_scores(scorer(u, n), u) for u in users]
    return {m: np.array([r[m] for r in rows]) for m in METRICS}


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of ``a - b`` over users and its standard error (sample std / sqrt(users))."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.shape[0] < 2:
        return float(diff.mean()) if diff.shape[0] else math.nan, math.nan
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.shape[0]))


def popularity_scorer(catalog: Catalog) -> Scorer:
    """Plain popularity of the training users (the ``popularity`` row of coldstart-eval)."""
    return lambda user, n: catalog.popularity.scores(user.demographics, smoothing=math.inf)


@dataclass(frozen=True)
class SignupChoice:
    config: PreferenceConfig
    checks: StatedChecks
    grid: list[dict[str, float]] = field(default_factory=list)  # every point tried, with its validation value


Best = tuple[tuple[float, float], PreferenceConfig, StatedChecks]  # ((worst n, mean over n), config, checks)


class Releases:
    """A DP-EASE release re-solved with each extra ridge asked for (cached): what the recommender reads."""

    def __init__(self, release: ReleasedEase | None, target: np.ndarray | None = None) -> None:
        self.release, self.target = release, target
        self._solved: dict[float, ReleasedEase] = {}

    def __call__(self, ridge: float) -> ReleasedEase | None:
        if self.release is None:
            return None
        if ridge not in self._solved:
            self._solved[ridge] = self.release.refit(ridge, target=self.target)
        return self._solved[ridge]


def tune_preferences(
    catalog: Catalog, users: Sequence[ColdStartUser], *, reveal: Sequence[int], base: PreferenceConfig,
    release: ReleasedEase | None = None, release_target: np.ndarray | None = None, genre_items: int = GENRE_ITEMS,
    seed: int = 0,
) -> SignupChoice:
    """The weights that maximise full NDCG@10 of ``genres + likes`` at its worst n in
    ``reveal`` (then its mean over ``reveal``: the target is popularity's level at every n), on ``users`` (validation users: the caller never passes test users), among
    the settings under which single statements are honoured on the catalogue
    (:func:`fedrec.fallback.preferences.stated_checks`: a stated genre fills at least half
    of the top 10, two liked items at least three of its places).

    In two stages: first the list's structure at ``FIRST_STAGE`` (several stated genres as
    one aspect or one each, an aspect's credit shared or not and, with ``release``, the
    extra ridge of its re-solve and its share of the liked-item similarity); then Steck's
    ``lam``, the weights of the liked items in the relevance (their similarity, and with a
    release its fold-in score ``x_K B``) and the liked items' share of the target (only
    where the catalogue has genres: without them the liked items are the whole target)."""
    grid: list[dict[str, float]] = []
    releases = Releases(release, release_target)
    fallback: list[tuple[int, PreferenceConfig, StatedChecks]] = []

    def search(probes: Sequence[PreferenceConfig], shares: Sequence[float], stage: int) -> Best | None:
        best: Best | None = None
        for probe in probes:
            recommender = PreferenceRecommender(catalog, probe, release=releases(probe.release_ridge))
            checks = stated_checks(recommender, pairs=CHECK_PAIRS, rng=np.random.default_rng([seed, 43]))
            strength = min(checks.genre_min_share - GENRE_SHARE, checks.liked_min_overlap - LIKED_OVERLAP)
            if not fallback or strength > fallback[0][0]:
                fallback[:] = [(strength, probe, checks)]
            for share in shares:
                config = replace(probe, liked_share=share)
                value, worst = math.nan, math.nan
                if checks.honoured:
                    scorer = signup_scorer(PreferenceRecommender(catalog, config, release=recommender.release), BOTH,
                                           genre_items=genre_items)
                    values = [float(per_user(scorer, users, n)[PRIMARY].mean()) for n in reveal]
                    value, worst = float(np.mean(values)), min(values)
                    if best is None or (worst, value) > best[0]:
                        best = ((worst, value), config, checks)
                grid.append({"stage": stage, **_knobs(config, release is not None), "genre_min_share": checks.genre_min_share,
                             "liked_min_overlap": checks.liked_min_overlap, PRIMARY: value, f"worst {PRIMARY}": worst})
        return best

    has_genres = catalog.genres.shape[1] > 0 and bool(catalog.genres.any())
    start = replace(base, **FIRST_STAGE)
    first = search([
        replace(start, genres_together=together, shared_credit=shared, release_ridge=ridge, release_weight=mix)
        for together in ((False, True) if has_genres else (False,)) for shared in (False, True)
        for ridge in (RIDGE_GRID if release is not None else (base.release_ridge,))
        for mix in (RELEASE_GRID if release is not None else (base.release_weight,))
    ], (start.liked_share,), 1)
    shape = first[1] if first is not None else fallback[0][1]
    best = search([
        replace(shape, calibration_weight=lam, liked_weight=liked, ease_weight=ease)
        for lam in CALIBRATION_GRID for liked, ease in (RELEASE_RELEVANCE_GRID if release is not None else RELEVANCE_GRID)
    ], SHARE_GRID if has_genres else (shape.liked_share,), 2)
    if best is None:  # no setting honours single statements on this catalogue: the one that comes closest
        logger.warning("no setting honours single statements on this catalogue; closest: %s", fallback[0][2])
        best = ((math.nan, math.nan), fallback[0][1], fallback[0][2])
    _, config, checks = best
    logger.info("sign-up answers tuned on %d validation users: %s", len(users), _knobs(config, release is not None))
    return SignupChoice(config=config, checks=checks, grid=grid)


def _knobs(config: PreferenceConfig, released: bool) -> dict[str, float]:
    """The tuned settings of ``config`` (those of the release: NaN without one)."""
    nan = math.nan
    return {
        "calibration_weight": config.calibration_weight, "liked_share": config.liked_share, "liked_weight": config.liked_weight,
        "genres_together": float(config.genres_together), "shared_credit": float(config.shared_credit),
        "release_weight": config.release_weight if released else nan, "release_ridge": config.release_ridge if released else nan,
        "ease_weight": config.ease_weight if released else nan,
    }


def evaluate_signup(
    catalog: Catalog, users: Sequence[ColdStartUser], *, reveal: Sequence[int], config: PreferenceConfig, name: str,
    release: ReleasedEase | None = None, release_target: np.ndarray | None = None, genre_items: int = GENRE_ITEMS,
) -> list[dict[str, Any]]:
    """One row per variant and n: the metrics with sign-up answers, and popularity's on the same
    users, with the paired difference of full NDCG@10 and its standard error. ``release``
    is re-solved with ``config.release_ridge`` (``release_target``: the content target the run shrank it towards)."""
    recommender = PreferenceRecommender(catalog, config, release=Releases(release, release_target)(config.release_ridge))
    popularity = {n: per_user(popularity_scorer(catalog), users, n) for n in reveal}
    rows: list[dict[str, Any]] = []
    for variant in VARIANTS:
        scorer = signup_scorer(recommender, variant, genre_items=genre_items)
        for n in reveal:
            mine = per_user(scorer, users, n)
            diff, se = paired_difference(mine[PRIMARY], popularity[n][PRIMARY])
            rows.append({
                "method": f"{name}, {variant}", "answers": variant, "reveal": n, "users": len(users),
                **{m: float(v.mean()) for m, v in mine.items()},
                "popularity_full_ndcg@10": float(popularity[n][PRIMARY].mean()),
                "diff_vs_popularity": diff, "diff_se": se, **_knobs(config, release is not None),
            })
    return rows


def run_signup(
    catalog: Catalog, validation: Sequence[ColdStartUser], test: Sequence[ColdStartUser], *, reveal: Sequence[int],
    smoothing: float, name: str, seed: int = 0, release: ReleasedEase | None = None, release_target: np.ndarray | None = None,
) -> dict[str, Any]:
    """Tune on ``validation``, then the rows of :func:`evaluate_signup` on ``test``; the
    demographic ``smoothing`` is the one the content blend chose on the same validation users.
    ``release``: the DP-EASE release as released; ``release_target``: the content target its run shrank it towards."""
    choice = tune_preferences(catalog, validation, reveal=reveal, base=PreferenceConfig(smoothing=smoothing),
                              release=release, release_target=release_target, seed=seed)
    rows = evaluate_signup(catalog, test, reveal=reveal, config=choice.config, name=name, release=release,
                           release_target=release_target)
    return {"config": asdict(choice.config), "checks": asdict(choice.checks), "grid": choice.grid, "rows": rows}


def signup_targets(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """With answers (genres + likes) at n = 0, 1, 3: full NDCG@10 at least popularity's."""
    out: dict[str, Any] = {}
    for row in rows:
        if row["answers"] == BOTH and row["reveal"] in (0, 1, 3):
            out[f"{row['method']} n={row['reveal']}"] = {
                "diff_vs_popularity": row["diff_vs_popularity"], "diff_se": row["diff_se"],
                "met": bool(row["diff_vs_popularity"] >= 0),
            }
    return out
