"""One federated run from config to artefacts, whatever the model family and transport.

:func:`run_family` is the one pipeline: it prepares the run folder, hands the family
(:mod:`fedrec.families`) the engine's channels to the devices, and writes what the
family released (``model.npz``), ``results.json`` (:func:`run_results`, the one results
writer) and ``curves.png``, beside popularity and EASE on the same split when the
population is simulated.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.sources import write_run_ids
from fedrec.deploy.catalog import run_catalog
from fedrec.errors import FedrecError
from fedrec.evaluation.metrics import METRIC_NAMES
from fedrec.evaluation.scoring import paired_difference
from fedrec.experiments.references import cheap_references
from fedrec.experiments.results import CURVES, MODEL, RESULTS, plot_curves, plot_release, write_arrays, write_json
from fedrec.families import family_of
from fedrec.federation.checkpoint import write_run_config
from fedrec.federation.device import simulated_population
from fedrec.models import ModelConfig, shared_spec
from fedrec.privacy.device_odometers import NO_CONTRIBUTOR, NoContributor, OdometerChannels, SimulatedOdometers
from fedrec.privacy.readable import readable_run, released_lines

if TYPE_CHECKING:
    from fedrec.deploy.catalog import Catalog
    from fedrec.families.contract import RunOutcome, StatisticsTransport
    from fedrec.federation.rounds import Transport

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


@dataclass
class FixedChannels:
    """Channels made of transports already built (a caller that holds its own); the
    statistics transport defaults to the simulated devices of ``config``, the catalogue
    of a simulated population to its data set's (:func:`fedrec.deploy.catalog.simulated_catalog`)."""

    config: RunConfig
    n_items: int
    simulated: bool
    transport: Transport | None = None
    statistics_transport: StatisticsTransport | None = None
    catalog: Catalog | None = None
    opened: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.simulated and self.catalog is None:
            self.catalog = run_catalog(self.config)

    def rounds(self) -> Transport:
        if self.transport is None:
            raise FedrecError(f"model {self.config.model.model} trains by rounds: give it a round transport")
        self.opened.append(self.transport)
        return self.transport

    def statistics(self) -> StatisticsTransport:
        if self.statistics_transport is None:
            self.statistics_transport = family_of(self.config).simulated_devices(
                simulated_population(self.config).split, self.config
            )
        self.opened.append(self.statistics_transport)
        return self.statistics_transport


def run_results(config: RunConfig, outcome: RunOutcome, *, engine: str, seconds: float) -> dict[str, Any]:
    """The one ``results.json`` of a run, every family alike: what was run, the test
    metrics, privacy as spent, then the family's own keys, the config and the logs."""
    return {
        "dataset": config.data.dataset,
        "model": config.model.model,
        "engine": engine,
        **outcome.test,
        "rounds": outcome.steps,  # rounds or releases: each one application of the mechanism to the population
        "rounds_planned": outcome.steps_planned,
        "clients": outcome.clients,
        "clients_per_round": outcome.clients_per_step,
        "sample_rate": outcome.sample_rate,
        "seed": config.seed,
        "seconds": seconds,
        "seconds_per_round": seconds / max(outcome.steps, 1),
        **outcome.privacy,
        "rejected_updates": outcome.rejected,
        **outcome.fields,
        "config": config.to_flat(),
        "config_hash": config.digest(),
        "curve": outcome.curve,
        "round_log": outcome.step_log,
    }


def run_family(
    config: RunConfig,
    channels: Any,
    *,
    out_dir: Path,
    engine: str,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    resume: bool = False,
    references: bool = True,
    odometers: SimulatedOdometers | None = None,
) -> dict[str, Any]:
    """Run ``config``'s family over ``channels`` (:class:`fedrec.families.contract.Channels`);
    write ``model.npz``, ``results.json`` and ``curves.png`` into ``out_dir``.

    ``resume`` continues the crashed run in ``out_dir`` from its last checkpoint (a
    family with rounds). ``references``: when the population is simulated, also fit
    popularity and EASE on the same split (``results["references"]``) so the private
    model is always shown beside what users would otherwise get. ``odometers``: the
    simulated devices keep privacy odometers and refuse a plan beyond their own budget
    (``results["devices_refused"]``). A job that every device refused writes
    ``no_contributor.json`` instead of results and raises :class:`NoContributor`.
    """
    started = time.perf_counter()
    if odometers is not None:
        if not config.privacy.enabled:
            raise FedrecError("a job with dp = off has no privacy plan a device can check, so every device with a "
                              "budget of its own (--device-epsilon) would refuse it: drop --device-epsilon or set dp = user")
        channels = OdometerChannels(channels, odometers)
    family = family_of(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / RESULTS).exists():
        then = "nothing to resume" if resume else "choose a new --out"
        raise FedrecError(f"{out_dir} holds a finished run ({RESULTS} exists): {then}")
    if not resume:
        write_run_config(out_dir, config.to_flat(), engine=engine, config_hash=config.digest())
    if channels.simulated:  # the index -> own-id maps, so outputs can name the data set's own users and items
        write_run_ids(config.data, seed=config.seed, out_dir=out_dir)
    # The data set, split and model built so far live as long as the run: keep Python's
    # cyclic GC from rescanning them in every full collection (a noticeable pause each);
    # unfrozen afterwards, so that a process running many runs can still collect them.
    gc.freeze()
    try:
        outcome = family.run(config, channels, run_dir=out_dir, on_step=on_round, resume=resume)
    except NoContributor as err:  # every device's own budget refused the job's plan: nothing was released
        write_json(out_dir / NO_CONTRIBUTOR, err.to_json())
        raise
    finally:
        gc.unfreeze()
    write_arrays(out_dir / MODEL, outcome.release)
    results = run_results(config, outcome, engine=engine, seconds=time.perf_counter() - started)
    results["split"] = (simulated_population(config).split_mode if channels.simulated else config.data.split).value
    split = simulated_population(config).split if channels.simulated and references else None
    sample = outcome.evaluated if split is not None and 0 < len(outcome.evaluated) < split.n_users else None
    refs = cheap_references(split, knn=False, users=None if sample is None else np.asarray(sample, dtype=np.int64)) if split else {}
    if refs:
        results["references"] = {name: ref.to_json() for name, ref in refs.items()}
        if outcome.test_per_client:  # the devices' own test metrics against popularity's, user by user
            model = {name: np.array([row[name] for row in outcome.test_per_client]) for name in METRIC_NAMES}
            results["versus_popularity"] = paired_difference(model, refs["popularity"].test_per_user)
    results = readable_run(results, out_dir)  # DP-released metrics: clamped to [0, 1], with their noise
    if outcome.one_shot and outcome.test_per_client:  # a release: the model beside the references, with error bars
        per_user = {config.model.model: {m: np.array([r[m] for r in outcome.test_per_client]) for m in METRIC_NAMES}}
        per_user.update({name: ref.test_per_user for name, ref in refs.items()})
        plot_release(out_dir / CURVES, per_user, title=outcome.title)
    else:
        plot_curves(
            out_dir / CURVES, results["curve"], losses=outcome.step_log if outcome.losses else (),
            references={f"{name} (val): {m}": ref.val[m] for name, ref in refs.items() for m in ("hr@10", "ndcg@10")},
            title=outcome.title,
        )
    write_json(out_dir / RESULTS, results)
    for line in released_lines(results) or [f"test hr@10 {results['hr@10']:.4f} ndcg@10 {results['ndcg@10']:.4f}"]:
        logger.info("%s", line)
    logger.info("finished in %.1f s", results["seconds"])
    return results


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
    """:func:`run_family` over a round transport already built. ``n_items`` is the
    catalogue size when the server has no data (a deployment); otherwise it comes from
    the simulated population."""
    simulated = n_items is None
    channels = FixedChannels(
        config, n_items=simulated_population(config).split.n_items if n_items is None else n_items,
        simulated=simulated, transport=transport,
    )
    return run_family(config, channels, out_dir=out_dir, engine=engine, on_round=on_round, resume=resume, references=references)
