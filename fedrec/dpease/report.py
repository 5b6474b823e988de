"""A DP-EASE run from config to artefacts: results.json, model.npz, curves.png and,
with DP on, the signed ledger that ``fedrec audit`` verifies, through the one pipeline
(:func:`fedrec.experiments.run.run_family`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedrec.config import RunConfig
from fedrec.deploy.catalog import Catalog
from fedrec.dpease.run import StatisticsTransport
from fedrec.experiments.run import FixedChannels, run_family
from fedrec.federation.device import simulated_population


def run_ease_and_report(
    config: RunConfig, out_dir: Path, *, engine: str, transport: StatisticsTransport | None = None,
    on_phase: Callable[[int, dict[str, float]], None] | None = None, catalog: Catalog | None = None,
) -> dict[str, Any]:
    """:func:`run_family` over a statistics transport already built (default: the
    simulated devices of ``config``). With a transport the server holds no data set:
    ``catalog`` is the public catalogue it reads instead (the content target's source)."""
    simulated = transport is None
    n_items = simulated_population(config).split.n_items if transport is None else transport.n_items
    channels = FixedChannels(config, n_items=n_items, simulated=simulated, statistics_transport=transport,
                             catalog=catalog)
    return run_family(config, channels, out_dir=out_dir, engine=engine, on_round=on_phase)
