"""The reference run: popularity, item-kNN, EASE and a centralized neural model on one split.

:func:`cheap_references` is also what ``fedrec simulate`` prints beside the private
model, on the same split: every reference is fitted on the training items, chosen on
validation users, and scored once on test users.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrec.config import CentralModel, RunConfig
from fedrec.data.sources import write_run_ids
from fedrec.data.split import LeaveOneOutSplit
from fedrec.evaluation.scoring import evaluate_scorer, per_user_scores
from fedrec.experiments.baselines import ItemKNN, Popularity, ease_items, fit_ease
from fedrec.experiments.results import CURVES, RESULTS, plot_curves, write_json
from fedrec.federation.device import simulated_population
from fedrec.training.central import train_centralized
from fedrec.training.mf import MFConfig, train_mf

logger = logging.getLogger(__name__)

# EASE inverts an (items x items) or (users x users) matrix: cubic time, quadratic memory.
# Past these many items (or the cost bound of fedrec.experiments.baselines.ease_items) it
# is fitted on the most frequent items only, which the results say.
EASE_MAX_ITEMS = 20_000
# item-kNN holds a dense (items x items) similarity
KNN_MAX_ITEMS = 10_000
LEFT_OUT = "left_out"  # results.json: reference name -> why it was not run


@dataclass(frozen=True)
class Reference:
    """One reference model's metrics on the split, and what it cost."""

    test: dict[str, float]
    val: dict[str, float]
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)  # chosen hyper-parameters and what was tried
    test_per_user: dict[str, np.ndarray] = field(default_factory=dict)  # split order; ``test`` is their mean

    def to_json(self) -> dict[str, Any]:
        return {"test": self.test, "val": self.val, "seconds": self.seconds, **self.detail}


def _scored(score: Callable[[Any], Any], split: LeaveOneOutSplit, started: float, **detail: Any) -> Reference:
    test = per_user_scores(score, split, which="test")
    return Reference(
        test={name: float(np.mean(values)) for name, values in test.items()}, val=evaluate_scorer(score, split, which="val"),
        seconds=time.perf_counter() - started, detail=detail, test_per_user=test,
    )


def cheap_references(
    split: LeaveOneOutSplit, *, knn: bool = True, ease_max_items: int = EASE_MAX_ITEMS, users: np.ndarray | None = None,
) -> dict[str, Reference]:
    """Popularity, item-kNN (when ``knn`` and the catalogue has at most
    :data:`KNN_MAX_ITEMS` items) and EASE (l2 chosen on validation users).

    EASE is fitted on the whole catalogue when that fits its cost bound
    (:func:`fedrec.experiments.baselines.ease_items`), else on the most frequent items,
    every other item ranked below them by popularity; its ``detail`` then says
    ``items_fitted`` of ``catalogue``. Use :func:`left_out` for why a reference is absent.

    Every reference is fitted on all of the split's training items and scored on every
    user, or on ``users`` (split indices, in that order) only: a large population's
    evaluation sample.
    """
    refs: dict[str, Reference] = {}
    judged = split if users is None else split.subset(users)

    def on_judged(score: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        return score if users is None else (lambda u: score(users[u]))

    started = time.perf_counter()
    refs["popularity"] = _scored(on_judged(Popularity(split).score), judged, started)
    if knn and split.n_items <= KNN_MAX_ITEMS:
        started = time.perf_counter()
        refs["item-knn"] = _scored(on_judged(ItemKNN(split).score), judged, started, k=50)
    started = time.perf_counter()
    items = ease_items(split, max_items=ease_max_items, users=None if users is None else int(users.shape[0]))
    if items is not None:
        logger.warning(
            "EASE fitted on the %d most frequent of %d items (the rest ranked below them by popularity): "
            "the full catalogue is past its cost bound", items.shape[0], split.n_items,
        )
    ease, tried = fit_ease(split, items=items, users=users)
    restricted = {} if items is None else {"items_fitted": int(items.shape[0]), "catalogue": int(split.n_items)}
    refs["ease"] = _scored(
        on_judged(ease.score), judged, started, l2=ease.l2, val_ndcg_by_l2={str(k): v for k, v in tried.items()},
        **restricted,
    )
    return refs


def left_out(split: LeaveOneOutSplit, *, knn: bool) -> dict[str, str]:
    """The references :func:`cheap_references` leaves out for ``split``, each with why."""
    if knn and split.n_items > KNN_MAX_ITEMS:
        return {"item-knn": f"{split.n_items} items is more than {KNN_MAX_ITEMS} (a dense items x items similarity)"}
    return {}


@dataclass(frozen=True)
class CentralRun:
    name: str
    test: dict[str, float]
    best_epoch: int
    max_epochs: int
    curve: list[dict[str, float]]


def _central_mf(split: LeaveOneOutSplit, config: RunConfig, on_epoch: Callable[[int, dict[str, float]], None] | None) -> CentralRun:
    mf = MFConfig()
    result = train_mf(split, config=mf, generator=torch.Generator().manual_seed(config.seed), on_eval=on_epoch)
    return CentralRun("central mf", result.test, result.best_epoch, mf.max_epochs, result.curve)


def _central_tower(
    split: LeaveOneOutSplit, config: RunConfig, on_epoch: Callable[[int, dict[str, float]], None] | None
) -> CentralRun:
    epochs = config.federation.central_epochs
    result = train_centralized(
        split, model=config.model.build(split.n_items), train=config.train.build(),
        epochs=epochs, seed=config.seed, on_epoch=on_epoch,
    )
    return CentralRun(f"central {config.model.model}", result.test, result.best_epoch, epochs, result.curve)


CENTRAL_MODELS: dict[CentralModel, Callable[..., CentralRun]] = {CentralModel.MF: _central_mf, CentralModel.NEUMF: _central_tower}


def central_max_epochs(config: RunConfig) -> int:
    """Most epochs the configured central model can run (for a progress bar)."""
    return MFConfig().max_epochs if config.federation.central_model is CentralModel.MF else config.federation.central_epochs


def run_baselines(
    config: RunConfig, out_dir: Path, *, on_epoch: Callable[[int, dict[str, float]], None] | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    split = simulated_population(config).split
    refs = cheap_references(split)
    missing = left_out(split, knn=True)
    central_started = time.perf_counter()
    central = CENTRAL_MODELS[config.federation.central_model](split, config, on_epoch)
    central_seconds = time.perf_counter() - central_started
    models: dict[str, dict[str, float]] = {name: ref.test for name, ref in refs.items()}
    models[central.name] = central.test
    references = {name: ref.to_json() for name, ref in refs.items()}
    references[central.name] = {
        "test": central.test, "val": max(central.curve, key=lambda e: e["ndcg@10"]) if central.curve else {},
        "seconds": central_seconds, "best_epoch": central.best_epoch,
    }
    seconds = time.perf_counter() - started
    results: dict[str, Any] = {
        "dataset": config.data.dataset,
        "model": central.name,
        **central.test,
        "rounds": None,
        "clients_per_round": None,
        "epochs": central.max_epochs,
        "best_epoch": central.best_epoch,
        "models": models,
        "references": references,
        "users": split.n_users,
        "seed": config.seed,
        "seconds": seconds,
        "split": simulated_population(config).split_mode.value,
        "config": config.to_flat(),
        "config_hash": config.digest(),
        "curve": central.curve,
    }
    if missing:
        results[LEFT_OUT] = missing
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(
        out_dir / CURVES, central.curve, x="epoch", title=f"{central.name} on {config.data.dataset}",
        references={f"{name} (val): {m}": ref.val[m] for name, ref in refs.items() for m in ("hr@10", "ndcg@10")},
    )
    write_run_ids(config.data, seed=config.seed, out_dir=out_dir)
    write_json(out_dir / RESULTS, results)
    return results
