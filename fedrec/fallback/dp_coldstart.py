"""Cold start with the DP-EASE release of the training users (``coldstart-eval --collaborative dp-ease``).

The training users (never the held-out ones) run DP-EASE with its own signed ledger
under the evaluation's folder; the cold-start scorers then read only the run's released
``model.npz`` (:class:`fedrec.fallback.collaborative.ReleasedEase`). The re-solve ridge
and the blend weights are chosen on the validation users, one stage at a time as
:func:`fedrec.fallback.evaluation.tune_blend` does: the prior (the release's, or counts
from the row sums of the recovered Gram) at n = 0, the ridge and the prior weight for
DP-EASE fold-in, then the content weight on top of them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import CALIBRATE, DPMode, ModelFamily, RunConfig, parse_run_config
from fedrec.data.interactions import Interactions
from fedrec.data.split import leave_one_out
from fedrec.dpease.fit import content_target, public_item_content
from fedrec.fallback.collaborative import CollaborativeBlend, ReleasedEase, ReleaseSettings, blend_scores
from fedrec.fallback.content import ContentRecommender
from fedrec.fallback.evaluation import WEIGHT_GRID, ColdStartUser, Scorer, evaluate

logger = logging.getLogger(__name__)

RELEASE_DIR = "dp-ease"  # the DP-EASE run (ledger, model.npz) inside the evaluation's folder
RIDGE_GRID = (0.0, 1.0, 3.0, 10.0, 30.0)  # extra ridge, in mean diagonals of the recovered Gram
PRIOR_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # w_p, with w_e = 1 - w_p
CONTENT_GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)  # w_c added to the chosen (w_e, w_p)


def release_config(base: RunConfig | None, *, epsilon: float, delta: float, seed: int) -> RunConfig:
    """The DP-EASE run's settings: ``base``'s (its privacy keys included) with the model,
    user-level DP and the budget set."""
    flat: dict[str, Any] = dict(base.to_flat()) if base is not None else {}
    flat.update({"model": ModelFamily.DP_EASE, "dp": DPMode.USER, "epsilon": epsilon, "delta": delta, "seed": seed, "noise-multiplier": CALIBRATE})
    return parse_run_config(flat)


def run_training_release(
    data: Interactions, train_users: np.ndarray, *, config: RunConfig, run_dir: Path
) -> dict[str, Any]:
    """DP-EASE over ``train_users`` only; writes the run (ledger, model.npz, results.json)
    to ``run_dir`` and returns its results."""
    from fedrec.deploy.catalog import run_catalog
    from fedrec.dpease.report import run_ease_and_report
    from fedrec.dpease.run import InProcessStatistics

    population = data.subset_users(train_users)
    split = leave_one_out(population, rng=np.random.default_rng([config.seed, 2]), num_eval_negatives=config.data.num_eval_negatives,
                          mode=config.data.split)
    transport = InProcessStatistics(split, clipping_norm=config.privacy.clipping_norm)
    return run_ease_and_report(config, run_dir, engine="inprocess", transport=transport,
                               catalog=run_catalog(config))


def release_settings(config: RunConfig, top_items: np.ndarray) -> ReleaseSettings:
    """The public settings the run's fit used (:func:`fedrec.dpease.fit.fit_release`):
    its prior weight and content target, from its config and the item metadata alone."""
    content = public_item_content(config)
    target = None if content is None else config.ease.content_weight * content_target(content[top_items])
    return ReleaseSettings(prior_weight=config.ease.prior_weight, target=target)


def run_content_target(run_dir: Path, top_items: np.ndarray) -> np.ndarray | None:
    """The content target a finished DP-EASE run shrank its weights towards (None: plain
    EASE), from its ``run_config.json`` and the public item metadata alone."""
    from fedrec.federation.checkpoint import read_run_config

    flat, _ = read_run_config(run_dir)
    return release_settings(parse_run_config(flat), top_items).target


@dataclass(frozen=True)
class CollaborativeChoice:
    gram_prior: bool  # the prior from the recovered Gram's row sums instead of the release's
    extra_ridge: float
    fold_in: CollaborativeBlend  # DP-EASE with its prior (w_c = 0)
    with_content: CollaborativeBlend  # the same plus content
    content_prior: CollaborativeBlend  # content and the DP prior, no EASE (today's blend, private prior)
    grid: list[dict[str, float]] = field(default_factory=list)  # every point tried on validation


def blend_scorer(release: ReleasedEase, blend: CollaborativeBlend, content: ContentRecommender | None) -> Scorer:
    prior = release.prior_scores()

    def score(user: ColdStartUser, n: int) -> np.ndarray:
        query = user.query(n)
        text = content.content_scores(query) if content is not None and blend.content_weight else None
        return blend_scores(ease=release.ease_scores(query), prior=prior, content=text, blend=blend)

    return score


Cache = dict[tuple[int, int], np.ndarray]  # (user index, n) -> (n_items,) scores


def _cached(release: ReleasedEase, users: Sequence[ColdStartUser], revealed: Sequence[int]) -> Cache:
    return {(u.index, n): release.ease_scores(u.query(n)) for u in users for n in revealed}


def _value(
    blend: CollaborativeBlend, *, ease: Cache | None, prior: np.ndarray, text: Cache | None,
    users: Sequence[ColdStartUser], revealed: Sequence[int], metric: str,
) -> float:
    """``metric`` of ``blend`` on ``users``, averaged over ``revealed``, from cached scores."""
    zeros = np.zeros_like(prior)

    def scorer(user: ColdStartUser, n: int) -> np.ndarray:
        key = (user.index, n)
        return blend_scores(ease=zeros if ease is None else ease[key], prior=prior,
                            content=None if text is None else text[key], blend=blend)

    return float(np.mean([evaluate(scorer, users, n)[metric] for n in revealed]))


def tune_collaborative(
    arrays: dict[str, np.ndarray], users: Sequence[ColdStartUser], *, content: ContentRecommender | None,
    reveal: Sequence[int], metric: str = "full_ndcg@10", settings: ReleaseSettings | None = None,
) -> CollaborativeChoice:
    """Choose the prior (at n = 0; the Gram prior only with ``settings``), then the ridge
    and ``w_p``, then ``w_c``, that maximise ``metric`` averaged over the n > 0 in
    ``reveal`` on ``users`` (the validation users: the caller never passes test users);
    and, apart, the prior weight of content + DP prior without EASE."""
    revealed = [n for n in reveal if n > 0] or [0]
    grid: list[dict[str, float]] = []
    best_prior = (-1.0, False)
    for gram_prior in (False, True) if settings is not None else (False,):
        prior = ReleasedEase.from_arrays(arrays, settings=settings, gram_prior=gram_prior).prior_scores()
        value = _value(CollaborativeBlend(ease_weight=0.0, prior_weight=1.0), ease=None, prior=prior, text=None,
                       users=users, revealed=[0], metric=metric)
        grid.append({"gram_prior": float(gram_prior), "reveal": 0, metric: value})
        if value > best_prior[0]:
            best_prior = (value, gram_prior)
    gram_prior = best_prior[1]

    def release(ridge: float) -> ReleasedEase:
        return ReleasedEase.from_arrays(arrays, extra_ridge=ridge, settings=settings, gram_prior=gram_prior)

    best: tuple[float, float, float] = (-1.0, 0.0, 0.0)  # (value, ridge, w_p)
    prior = release(0.0).prior_scores()
    for ridge in RIDGE_GRID:
        ease = _cached(release(ridge), users, revealed)
        for w_p in PRIOR_GRID:
            blend = CollaborativeBlend(ease_weight=1.0 - w_p, prior_weight=w_p)
            value = _value(blend, ease=ease, prior=prior, text=None, users=users, revealed=revealed, metric=metric)
            grid.append({"extra_ridge": ridge, "prior_weight": w_p, "content_weight": 0.0, metric: value})
            if value > best[0]:
                best = (value, ridge, w_p)
    _, ridge, w_p = best
    fold_in = CollaborativeBlend(ease_weight=1.0 - w_p, prior_weight=w_p)
    with_content, content_prior = fold_in, CollaborativeBlend(ease_weight=0.0, prior_weight=1.0)
    if content is not None:
        ease = _cached(release(ridge), users, revealed)
        text = {(u.index, n): content.content_scores(u.query(n)) for u in users for n in revealed}
        best_c = (-1.0, 0.0)
        for w_c in CONTENT_GRID:
            blend = CollaborativeBlend(ease_weight=1.0 - w_p, prior_weight=w_p, content_weight=w_c)
            value = _value(blend, ease=ease, prior=prior, text=text, users=users, revealed=revealed, metric=metric)
            grid.append({"extra_ridge": ridge, "prior_weight": w_p, "content_weight": w_c, metric: value})
            if value > best_c[0]:
                best_c = (value, w_c)
        with_content = CollaborativeBlend(ease_weight=1.0 - w_p, prior_weight=w_p, content_weight=best_c[1])
        best_p = (-1.0, 1.0)
        for w in WEIGHT_GRID:  # today's content blend, with the DP prior in place of exact counts
            blend = CollaborativeBlend(ease_weight=0.0, prior_weight=w, content_weight=1.0 - w)
            value = _value(blend, ease=None, prior=prior, text=text, users=users, revealed=revealed, metric=metric)
            grid.append({"extra_ridge": math.nan, "prior_weight": w, "content_weight": 1.0 - w, metric: value})
            if value > best_p[0]:
                best_p = (value, w)
        content_prior = CollaborativeBlend(ease_weight=0.0, prior_weight=best_p[1], content_weight=1.0 - best_p[1])
    logger.info("DP-EASE cold start tuned on %d validation users: Gram prior %s, extra ridge %g, prior weight %.1f, content weight %.2f",
                len(users), gram_prior, ridge, w_p, with_content.content_weight)
    return CollaborativeChoice(gram_prior=gram_prior, extra_ridge=ridge, fold_in=fold_in, with_content=with_content, content_prior=content_prior, grid=grid)
