"""Shared fixtures. The data directory comes from $FEDREC_DATA_DIR; when unset, the
tests look for the team's shared data folder beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedrec.config import RunConfig, parse_run_config
from fedrec.data import Interactions, LeaveOneOutSplit, leave_one_out, load_movielens_100k

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("FEDREC_DATA_DIR") or str(REPO.parent / "shared" / "data")
    path = Path(value)
    if not (path / "ml-100k" / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found under {path}; set FEDREC_DATA_DIR")
    os.environ["FEDREC_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def ml100k(data_dir: Path) -> Interactions:
    return load_movielens_100k(data_dir)


@pytest.fixture(scope="session")
def ml100k_split(ml100k: Interactions) -> LeaveOneOutSplit:
    return leave_one_out(ml100k, rng=np.random.default_rng(0))


@pytest.fixture()
def tiny_config(data_dir: Path, tmp_path: Path) -> RunConfig:
    """A handful of ML-100K users and a small model: seconds per run."""
    return parse_run_config(
        {
            "model": "neumf", "data-dir": str(data_dir), "max-users": 6, "num-rounds": 2, "clients-per-round": 4,
            "eval-every": 1, "gmf-dim": 8, "mlp-layers": "16,8", "seed": 3,
            "ledger-key": str(tmp_path / "keys" / "ledger.pem"), "epsilon": 50.0,
        }
    )


@pytest.fixture()
def flower_task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the identity of the process's task (set by its runtime):
    a fixed one for tests that build and answer messages in this process."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
