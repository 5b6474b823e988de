"""The in-process simulation engine: the same device and server functions as the
Flower apps, called directly (no messages, no actors)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from fedrec.client import simulated_population
from fedrec.config import RunConfig
from fedrec.experiment import run_and_report
from fedrec.results import RESULTS
from fedrec.runner import InProcessTransport


def run(config: RunConfig, out_dir: Path, on_round: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    torch.set_num_threads(1)  # many tiny models: threading costs more than it gains
    transport = InProcessTransport(config, simulated_population(config).split.n_users)
    run_and_report(config, transport, out_dir=out_dir, engine="inprocess", on_round=on_round)
    return out_dir / RESULTS
