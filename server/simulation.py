"""Run a fedrec config on Flower's simulation runtime, in this process."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from flwr.simulation import run_simulation

from clients.app import app as client_app
from fedrec.client import simulated_population
from fedrec.config import RunConfig
from fedrec.results import RESULTS
from server.app import RoundCallback, build_server_app

logger = logging.getLogger(__name__)


def run(config: RunConfig, out_dir: Path, on_round: RoundCallback | None = None) -> Path:
    """One virtual SuperNode per user; returns the path of results.json."""
    n_clients = simulated_population(config).split.n_users
    cores = os.cpu_count() or 1
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cores, "include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=build_server_app(config, out_dir, on_round),
            client_app=client_app,
            num_supernodes=n_clients,
            backend_config=backend,  # type: ignore[arg-type]
        )
    results = out_dir / RESULTS
    if not results.is_file():
        raise RuntimeError(f"the Flower simulation ended without writing {results}; see the log above")
    return results
