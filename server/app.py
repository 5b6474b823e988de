"""The Flower ServerApp: parse the run config, run fedrec's loop over the Grid.

``flwr run .`` uses ``app`` (config from ``[tool.flwr.app.config]`` and
``--run-config``); ``fedrec simulate`` builds one with :func:`build_server_app`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.config import RunConfig, parse_run_config
from fedrec.deploy.catalog import run_catalog
from fedrec.errors import ConfigError
from fedrec.experiments.run import run_family
from fedrec.federation.device import simulated_population
from fedrec.privacy.device_odometers import SimulatedOdometers
from server.channels import GridChannels

OUT_DIR = "out-dir"  # run-config key of the results folder (not part of RunConfig)
RESUME = "resume"  # run-config key: continue the crashed run in out-dir from its checkpoint

RoundCallback = Callable[[int, dict[str, float]], None]


def serve(
    grid: Grid, config: RunConfig, out_dir: Path, on_round: RoundCallback | None = None, *, resume: bool = False,
    odometers: SimulatedOdometers | None = None,
) -> dict[str, Any]:
    split = simulated_population(config).split
    channels = GridChannels(
        grid, config, n_items=split.n_items, expected_nodes=split.n_users, simulated=True,
        catalog=run_catalog(config),
    )
    return run_family(config, channels, out_dir=out_dir, engine="flower", on_round=on_round, resume=resume,
                      odometers=odometers)


def split_out_dir(values: Mapping[str, Any]) -> tuple[dict[str, Any], Path, bool]:
    """Take the server-only keys (``out-dir``, ``resume``) out of a flat run config."""
    rest = dict(values)
    resume = str(rest.pop(RESUME, False)).lower()
    if resume not in ("true", "false", "1", "0"):
        raise ConfigError([f"{RESUME}: {resume!r} is not true/false"])
    return rest, Path(str(rest.pop(OUT_DIR, "runs/flwr-run"))).resolve(), resume in ("true", "1")


def build_server_app(
    config: RunConfig, out_dir: Path, on_round: RoundCallback | None = None, *, resume: bool = False,
    odometers: SimulatedOdometers | None = None,
) -> ServerApp:
    """A ServerApp bound to a parsed config (Flower's run_simulation takes no run config)."""
    bound = ServerApp()

    @bound.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, config, out_dir, on_round, resume=resume, odometers=odometers)

    return bound


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    values, out_dir, resume = split_out_dir(context.run_config)
    serve(grid, parse_run_config(values), out_dir, resume=resume)
