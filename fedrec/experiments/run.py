"""One federated run from config to artefacts, whatever the transport."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.sources import write_run_ids
from fedrec.errors import FedrecError
from fedrec.experiments.references import cheap_references
from fedrec.experiments.results import CURVES, MODEL, RESULTS, plot_curves, write_arrays, write_json
from fedrec.federation.checkpoint import write_run_config
from fedrec.federation.device import simulated_population
from fedrec.federation.rounds import Transport, run_federated
from fedrec.models import ModelConfig, shared_spec
from fedrec.privacy.readable import readable_run, released_lines

logger = logging.getLogger(__name__)


def upload_summary(config: RunConfig, model: ModelConfig, rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Bytes one client uploads per round (mean over rounds), beside the dense float32 size."""
    dense = 4 * sum(int(np.prod(shape, dtype=np.int64)) for shape in shared_spec(model).values())
    sizes = [r["upload_bytes"] for r in rounds if np.isfinite(r.get("upload_bytes", float("nan")))]
    per_client = float(np.mean(sizes)) if sizes else float("nan")
    return {
        "upload_bits": config.federation.upload_bits,
        "upload_bytes_per_client": per_client,
        "upload_bytes_dense_float32": dense,
        "upload_ratio_vs_dense": per_client / dense,
    }


def run_and_report(
    config: RunConfig,
    transport: Transport,
    *,
    out_dir: Path,
    engine: str,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    n_items: int | None = None,
    resume: bool = False,
    references: bool = True,
) -> dict[str, Any]:
    """Train, evaluate, write ``results.json`` and ``curves.png`` into ``out_dir``.

    ``n_items`` is the catalogue size when the server has no data (a deployment);
    otherwise it comes from the simulated population. ``resume`` continues the crashed
    run in ``out_dir`` from its last checkpoint. ``references``: when the population is
    simulated, also fit popularity and EASE on the same split (``results["references"]``)
    so the private model is always shown beside what users would otherwise get.
    """
    started = time.perf_counter()
    simulated = n_items is None
    if n_items is None:
        n_items = simulated_population(config).split.n_items
    model = config.model.build(n_items)
    n_clients = len(transport.clients())
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume and (out_dir / RESULTS).exists():
        raise FedrecError(f"{out_dir} holds a finished run ({RESULTS} exists): nothing to resume")
    if not resume:
        write_run_config(out_dir, config.to_flat(), engine=engine, config_hash=config.digest())
    if simulated:  # the index -> own-id maps, so outputs can name the data set's own users and items
        write_run_ids(config.data, seed=config.seed, out_dir=out_dir)
    # The data set, split and model built so far live as long as the run: keep Python's
    # cyclic GC from rescanning them in every full collection (a noticeable pause each);
    # unfrozen afterwards, so that a process running many runs can still collect them.
    gc.freeze()
    try:
        shared, history, test = run_federated(config, transport, model=model, run_dir=out_dir, on_round=on_round, resume=resume)
    finally:
        gc.unfreeze()
    write_arrays(out_dir / MODEL, shared)
    seconds = time.perf_counter() - started
    results: dict[str, Any] = {
        "dataset": config.data.dataset,
        "model": config.model.model,
        "engine": engine,
        **test,
        "rounds": history.rounds_run,
        "rounds_planned": config.federation.num_rounds,
        "clients": n_clients,
        "clients_per_round": history.expected_clients,
        "sample_rate": history.sample_rate,
        "local_epochs": config.train.local_epochs,
        "seed": config.seed,
        "seconds": seconds,
        "seconds_per_round": seconds / max(history.rounds_run, 1),
        **history.privacy,
        "rejected_updates": history.rejected,
        "resumes": history.resumes,
        **upload_summary(config, model, history.rounds),
        "split": (simulated_population(config).split_mode if simulated else config.data.split).value,
        "config": config.to_flat(),
        "config_hash": config.digest(),
        "curve": history.evals,
        "round_log": history.rounds,
    }
    refs = cheap_references(simulated_population(config).split, knn=False) if simulated and references else {}
    if refs:
        results["references"] = {name: ref.to_json() for name, ref in refs.items()}
    results = readable_run(results, out_dir)  # DP-released metrics: clamped to [0, 1], with their noise
    plot_curves(
        out_dir / CURVES, results["curve"], losses=history.rounds,
        references={f"{name} (val): {m}": ref.val[m] for name, ref in refs.items() for m in ("hr@10", "ndcg@10")},
        title=f"federated {config.model.model} on {config.data.dataset}: {n_clients} clients, "
        f"{history.expected_clients:.0f}/round, epsilon {history.privacy['epsilon']:.3g}",
    )
    write_json(out_dir / RESULTS, results)
    for line in released_lines(results) or [f"test hr@10 {results['hr@10']:.4f} ndcg@10 {results['ndcg@10']:.4f}"]:
        logger.info("%s", line)
    logger.info("finished in %.1f s", seconds)
    return results
