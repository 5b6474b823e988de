"""The reference run: popularity, item-kNN and centralized NeuMF on one split."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedrec.config import RunConfig
from fedrec.data.sources import write_run_ids
from fedrec.evaluation.scoring import evaluate_scorer
from fedrec.experiments.baselines import ItemKNN, Popularity
from fedrec.experiments.results import CURVES, RESULTS, plot_curves, write_json
from fedrec.federation.device import simulated_population
from fedrec.training.central import train_centralized


def run_baselines(
    config: RunConfig, out_dir: Path, *, on_epoch: Callable[[int, dict[str, float]], None] | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    split = simulated_population(config).split
    models: dict[str, dict[str, float]] = {
        "popularity": evaluate_scorer(Popularity(split).score, split),
        "item-knn": evaluate_scorer(ItemKNN(split).score, split),
    }
    central = train_centralized(
        split, model=config.model.build(split.n_items), train=config.train.build(),
        epochs=config.federation.central_epochs, seed=config.seed, on_epoch=on_epoch,
    )
    models[f"central {config.model.model}"] = central.test
    seconds = time.perf_counter() - started
    central_name = f"central {config.model.model}"
    results: dict[str, Any] = {
        "dataset": config.data.dataset,
        "model": central_name,
        **central.test,
        "rounds": None,
        "clients_per_round": None,
        "epochs": config.federation.central_epochs,
        "best_epoch": central.best_epoch,
        "models": models,
        "users": split.n_users,
        "seed": config.seed,
        "seconds": seconds,
        "config": config.to_flat(),
        "config_hash": config.digest(),
        "curve": central.curve,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(
        out_dir / CURVES, central.curve, x="epoch", title=f"{central_name} on {config.data.dataset}",
        references={f"{name} (test): {m}": models[name][m] for name in ("popularity", "item-knn") for m in ("hr@10", "ndcg@10")},
    )
    write_run_ids(config.data, seed=config.seed, out_dir=out_dir)
    write_json(out_dir / RESULTS, results)
    return results
