"""Run a fedrec config on Flower's simulation runtime, in this process."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from clients.app import app as client_app
from fedrec.config import RunConfig
from fedrec.experiments.results import RESULTS
from fedrec.federation.device import simulated_population
from fedrec.privacy.device_odometers import SimulatedOdometers
from server.app import RoundCallback, build_server_app

logger = logging.getLogger(__name__)


def backend_config(ray_address: str = "") -> dict[str, Any]:
    """Flower's Ray backend settings: a private Ray instance on this machine's cores, or
    (with ``ray_address``, e.g. ``"auto"`` or ``"10.0.0.5:6379"``) an existing Ray
    cluster, whose resources then decide how many devices train at once."""
    init: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
    if ray_address:
        init["address"] = ray_address  # a running cluster: its own CPUs, no dashboard settings
    else:  # "local": always a fresh instance, even where a `ray start` left its address behind
        init.update(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False)
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init}


def run(
    config: RunConfig, out_dir: Path, on_round: RoundCallback | None = None, *, ray_address: str = "", resume: bool = False,
    odometers: SimulatedOdometers | None = None,
) -> Path:
    """One virtual SuperNode per user; returns the path of results.json. ``odometers``:
    the simulated devices keep privacy odometers (:func:`fedrec.experiments.run.run_family`).

    ``resume``: continue the crashed run in ``out_dir``. The simulated devices' private
    vectors lived in the dead process (real devices keep theirs in their state file),
    so they start afresh; the shared model, sampler, noise and ledger continue.
    """
    n_clients = simulated_population(config).split.n_users
    backend = backend_config(ray_address)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=build_server_app(config, out_dir, on_round, resume=resume, odometers=odometers),
            client_app=client_app,
            num_supernodes=n_clients,
            backend_config=backend,  # type: ignore[arg-type]
        )
    results = out_dir / RESULTS
    if not results.is_file():
        raise RuntimeError(f"the Flower simulation ended without writing {results}; see the log above")
    return results
