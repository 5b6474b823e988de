"""A DP-EASE run from config to artefacts: results.json, model.npz, curves.png and,
with DP on, the signed ledger that ``fedrec audit`` verifies."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.sources import write_run_ids
from fedrec.dpease.population import PopulationStatistics
from fedrec.dpease.run import StatisticsTransport, run_dp_ease
from fedrec.errors import FedrecError
from fedrec.evaluation.metrics import METRIC_NAMES
from fedrec.evaluation.scoring import paired_difference
from fedrec.experiments.references import cheap_references
from fedrec.experiments.results import CURVES, MODEL, RESULTS, plot_curves, write_arrays, write_json
from fedrec.federation.checkpoint import write_run_config
from fedrec.federation.device import simulated_population


def run_ease_and_report(
    config: RunConfig, out_dir: Path, *, engine: str, transport: StatisticsTransport | None = None,
    on_phase: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / RESULTS).exists():
        raise FedrecError(f"{out_dir} holds a finished run ({RESULTS} exists): choose a new --out")
    simulated = transport is None  # a deployment's server holds no data set
    if transport is None:
        # simulated honest devices: their uploads summed in vectorised chunks, the same floats
        transport = PopulationStatistics(simulated_population(config).split, clipping_norm=config.privacy.clipping_norm)
    write_run_config(out_dir, config.to_flat(), engine=engine, config_hash=config.digest())
    if simulated:
        write_run_ids(config.data, seed=config.seed, out_dir=out_dir)  # index -> the data set's own ids
    release, history, val, test = run_dp_ease(config, transport, run_dir=out_dir, on_phase=on_phase)
    write_arrays(out_dir / MODEL, release.to_arrays())
    seconds = time.perf_counter() - started
    results: dict[str, Any] = {
        "dataset": config.data.dataset,
        "model": config.model.model,
        "engine": engine,
        **test,
        "validation": val,
        "rounds": len(history.phases),  # releases: each is one Gaussian sum over every device
        "rounds_planned": 2,
        "clients": len(transport.clients()),
        "clients_per_round": float(len(transport.clients())),
        "sample_rate": 1.0,
        "top_items": history.top_items,
        "seed": config.seed,
        "seconds": seconds,
        "seconds_per_round": seconds / max(len(history.phases), 1),
        **history.privacy,
        "rejected_updates": history.rejected,
        "config": config.to_flat(),
        "config_hash": config.digest(),
        "curve": [{"round": float(len(history.phases)), **val}],
        "round_log": history.phases,
    }
    # popularity and EASE on the same split, printed beside the private model (simulations only)
    split = simulated_population(config).split if simulated else None
    sample = np.asarray(history.evaluated, dtype=np.int64) if split is not None and len(history.evaluated) < split.n_users else None
    refs = cheap_references(split, knn=False, users=sample) if split is not None else {}
    if refs:
        results["references"] = {name: ref.to_json() for name, ref in refs.items()}
        # the devices' own test metrics against popularity's, user by user (both in split order)
        model = {name: np.array([row[name] for row in history.test_per_client]) for name in METRIC_NAMES}
        results["versus_popularity"] = paired_difference(model, refs["popularity"].test_per_user)
    plot_curves(
        out_dir / CURVES, results["curve"],
        references={f"{name} (val): {m}": ref.val[m] for name, ref in refs.items() for m in ("hr@10", "ndcg@10")},
        title=f"dp-ease on {config.data.dataset}: {results['clients']} clients, K={history.top_items}, "
        f"epsilon {history.privacy['epsilon']:.3g}",
    )
    write_json(out_dir / RESULTS, results)
    return results
