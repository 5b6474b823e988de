"""Choosing DP-EASE settings on validation users only.

Each candidate's release is simulated (:func:`fedrec.dpease.central.simulate_release`)
and scored on the validation item of every user; test items are never read. The
criterion is the geometric mean of sampled and full-ranking NDCG@10, so that neither
protocol is won at the other's expense (Krichene and Rendle 2020).

Looking at validation users is itself a release about the population (Papernot and
Steinke 2022): the number of candidates tried is reported beside every choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fedrec.config import RunConfig, parse_run_config
from fedrec.data.split import LeaveOneOutSplit
from fedrec.dpease.central import device_scorer, simulate_release
from fedrec.evaluation.scoring import evaluate_scorer


@dataclass(frozen=True)
class Choice:
    overrides: dict[str, Any]  # the chosen candidate
    validation: dict[str, float]  # its validation metrics
    tried: list[dict[str, Any]]  # every candidate with its validation metrics and criterion


def criterion(metrics: Mapping[str, float]) -> float:
    return math.sqrt(max(metrics["ndcg@10"], 0.0) * max(metrics["full_ndcg@10"], 0.0))


def without_test_items(split: LeaveOneOutSplit) -> LeaveOneOutSplit:
    """The split as selection sees it: each user's test item and test negatives are
    replaced by things selection may know (the user's first training item, the
    validation negatives). Validation's full ranking excludes "the other held-out item"
    (:func:`fedrec.evaluation.scoring.metrics_from_scores`); here that is a training item, which
    is excluded anyway, so the test item is ranked as any unseen item would be."""
    first_train = split.train_items[split.train_indptr[:-1]]
    return replace(split, test_item=first_train.copy(), test_negatives=split.val_negatives.copy())


def validation_metrics(config: RunConfig, split: LeaveOneOutSplit, *, draws: int = 1) -> dict[str, float]:
    """Validation metrics of ``config``'s release, averaged over ``draws`` noise draws
    (the run's own and ``draws - 1`` others, :func:`simulate_release`): the expected
    quality of the settings rather than that of one draw of the noise."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    split = without_test_items(split)
    per_draw = []
    for draw in range(draws if config.privacy.enabled else 1):  # without noise every draw is the same
        scorer = device_scorer(simulate_release(config, split, draw=draw), split)
        per_draw.append(evaluate_scorer(scorer, split, which="val"))
    return {name: float(sum(m[name] for m in per_draw) / len(per_draw)) for name in per_draw[0]}


def choose(
    base: Mapping[str, Any], split: LeaveOneOutSplit, candidates: Sequence[Mapping[str, Any]], *, draws: int = 1,
) -> Choice:
    """The candidate (flat overrides of ``base``) with the best validation criterion,
    each averaged over ``draws`` noise draws (:func:`validation_metrics`); the first one
    wins ties."""
    tried: list[dict[str, Any]] = []
    for overrides in candidates:
        metrics = validation_metrics(parse_run_config({**base, **overrides}), split, draws=draws)
        tried.append({**overrides, **{f"val_{k}": v for k, v in metrics.items()}, "criterion": criterion(metrics)})
    best = max(range(len(tried)), key=lambda k: (tried[k]["criterion"], -k))
    chosen = dict(candidates[best])
    return Choice(
        overrides=chosen,
        validation={k[4:]: v for k, v in tried[best].items() if k.startswith("val_")},
        tried=tried,
    )
