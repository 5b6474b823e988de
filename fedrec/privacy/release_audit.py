"""The empirical audit of a family that releases sums of per-device statistics (DP-EASE).

Canary users (:mod:`fedrec.privacy.canaries`), each with a few rarely-rated items of its
own that no other canary has, join the population with probability 1/2; the family
runs once; the attack reads only what was released. A member canary adds
``C / sqrt(k)`` to the released count of each of its ``k`` items; the auditor, who
knows the rest of the population (a simulation), subtracts its counts, so a canary's
score ``sum_j (released count_j - population count_j)`` is ``C sqrt(k)`` plus noise of
standard deviation ``z C sqrt(k)`` for a member and noise alone for a non-member: the
Gaussian mechanism's own likelihood-ratio test. The bounds are those of
:mod:`fedrec.privacy.empirical`, as for DP-FedAvg.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.split import LeaveOneOutSplit
from fedrec.errors import PrivacyError
from fedrec.privacy.canaries import EMPIRICAL_AUDIT, AuditSettings, Canaries, audit_report, with_canaries
from fedrec.privacy.empirical import audit_scores

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
# (release, results.json, the population's exact counts, items no canary touches) -> (n_items,)
# the released item counts as the attacker reads them
ReadCounts = Callable[[Arrays, dict[str, Any], np.ndarray, np.ndarray], np.ndarray]


def disjoint_canaries(
    split: LeaveOneOutSplit, *, count: int, items_per_canary: int, pool_size: int, rng: np.random.Generator,
) -> Canaries:
    """``count`` canaries over the ``pool_size`` least-rated items, no item shared by two
    canaries (a count is a sum: a shared item would mix two canaries' signals); each has
    ``k`` training items (at most ``items_per_canary``, as many as the pool allows) plus
    a validation and a test item, and joins with probability 1/2."""
    pool_size = min(pool_size, split.n_items)
    k = min(items_per_canary, pool_size // max(count, 1) - 2)
    if count < 2 or k < 1:
        raise PrivacyError(
            f"{count} canaries with disjoint items need a pool of at least {3 * max(count, 2)} items "
            f"(the catalogue has {split.n_items}): lower --canaries"
        )
    popularity = np.bincount(split.train_items, minlength=split.n_items)
    pool = np.argsort(popularity, kind="stable")[:pool_size]
    drawn = rng.permutation(pool)[: count * (k + 2)].reshape(count, k + 2)
    members = rng.random(count) < 0.5
    return Canaries(items=drawn[:, :k], held_out=drawn[:, k:], members=members, pool=np.sort(pool))


def population_counts(family: Any, split: LeaveOneOutSplit, config: RunConfig, *, phase: str) -> np.ndarray:
    """(n_items,) the exact sum of every user's count statistic in ``split`` (what the
    auditor knows of everyone but the canaries)."""
    total = np.zeros(split.n_items, dtype=np.float64)
    for c in range(split.n_users):
        statistic = family.device_statistic(split.client(c), phase=phase, request={}, config=config)
        total += next(iter(statistic.values())).astype(np.float64)
    return total


def audit_statistics_release(
    config: RunConfig, *, out_dir: Path, settings: AuditSettings, on_step: Callable[[int, dict[str, float]], None] | None,
    phase: str, released_counts: ReadCounts,
) -> dict[str, Any]:
    """Run ``config``'s family once with canaries (in process), attack the released
    counts, bound epsilon from below; write the run and ``empirical_audit.json`` into ``out_dir``."""
    from fedrec.deploy.catalog import run_catalog
    from fedrec.experiments.results import MODEL, read_arrays, write_json
    from fedrec.experiments.run import FixedChannels, run_family
    from fedrec.families import family_of
    from fedrec.federation.device import simulated_population

    started = time.perf_counter()
    family = family_of(config)
    base = simulated_population(config).split
    rng = np.random.default_rng([config.seed, 7])
    canaries = disjoint_canaries(
        base, count=settings.canaries, items_per_canary=settings.items_per_canary, pool_size=settings.pool_size, rng=rng
    )
    split = with_canaries(base, canaries, rng=rng)
    transport = family.simulated_devices(split, config)
    # simulated=False: the population is the data set plus canaries, so no references or own-id maps
    channels = FixedChannels(config, n_items=split.n_items, simulated=False, statistics_transport=transport,
                             catalog=run_catalog(config))  # the canaries' items are the data set's
    results = run_family(config, channels, out_dir=out_dir, engine="inprocess", on_round=on_step)
    known = population_counts(family, base, config, phase=phase)
    untouched = np.ones(base.n_items, dtype=bool)
    untouched[canaries.items] = untouched[canaries.held_out] = False
    counts = released_counts(read_arrays(out_dir / MODEL), results, known, untouched)
    excess = counts - known  # (n_items,) what the member canaries added, plus noise
    scores = excess[canaries.items].sum(axis=1)  # (m,)
    delta = config.privacy.delta if config.privacy.enabled else 0.0
    bounds = audit_scores(scores=scores, members=canaries.members, delta=delta, beta=settings.beta)
    report = audit_report(
        config, results, bounds, delta=delta, beta=settings.beta, items_per_canary=int(canaries.items.shape[1]),
        pool_size=int(canaries.pool.shape[0]), seconds=time.perf_counter() - started,
        attack="released item counts of each canary's own items, minus the rest of the population's",
    )
    write_json(out_dir / EMPIRICAL_AUDIT, report)
    return report
