"""A short run through Flower's real simulation runtime (Ray, virtual SuperNodes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.evaluation.metrics import METRIC_NAMES

REQUIRED = {"dataset", "model", *METRIC_NAMES, "rounds", "clients_per_round", "seed", "seconds"}


@pytest.mark.slow
def test_cli_simulate_on_flower_runtime(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["simulate", "--data", str(data_dir), "--out", str(out), "--engine", "flower",
         "--set", "model=neumf", "--set", "max-users=4", "--set", "num-rounds=2", "--set", "clients-per-round=4",
         "--set", "eval-every=1", "--set", "gmf-dim=8", "--set", "mlp-layers=16,8",
         # q = 1 here; Opacus' PRV once spun for minutes on it inside this runtime, RDP is exact and fast
         "--set", "accountant=rdp"],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert REQUIRED <= results.keys()
    assert results["engine"] == "flower" and results["clients"] == 4 and results["rounds"] == 2
    assert results["rejected_updates"] == 0
    assert results["epsilon"] <= results["budget"] and results["accountant"] == "rdp"
    # every round aggregated real client updates, and every evaluation heard all 4 devices
    assert [e["round"] for e in results["curve"]] == [1.0, 2.0]
    assert all(0.0 <= results[m] <= 1.0 for m in METRIC_NAMES)
    assert (out / "curves.png").stat().st_size > 1000


def test_cli_rejects_bad_settings_with_one_clear_line(data_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["simulate", "--data", str(data_dir), "--out", str(tmp_path / "x"), "--set", "num-rounds=-1", "--set", "colour=red"])
    assert result.exit_code == 2
    assert "num-rounds: -1 must be > 0" in result.output and "unknown key(s) colour" in result.output
    assert not (tmp_path / "x" / "results.json").exists()


def test_cli_missing_data_dir_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)
    result = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "FEDREC_DATA_DIR" in result.output


@pytest.mark.slow
def test_cli_simulate_dp_ease_on_flower_runtime_matches_in_process(data_dir: Path, tmp_path: Path) -> None:
    """DP-EASE's two releases through Flower's simulation runtime: the same model as the
    in-process engine (same seed, same noise), and a ledger that ``fedrec audit`` verifies."""
    settings = ["--set", "model=dp-ease", "--set", "max-users=20", "--set", f"ledger-key={tmp_path / 'key.pem'}"]
    runs = {}
    for engine in ("flower", "inprocess"):
        out = tmp_path / engine
        result = CliRunner().invoke(app, ["simulate", "--data", str(data_dir), "--out", str(out), "--engine", engine, *settings])
        assert result.exit_code == 0, result.output
        runs[engine] = json.loads((out / "results.json").read_text())
    flower = runs["flower"]
    assert REQUIRED <= flower.keys() and flower["engine"] == "flower" and flower["clients"] == 20
    assert [r["aggregated"] for r in flower["round_log"]] == [20.0, 20.0] and flower["rejected_updates"] == 0
    assert 0.9 * flower["budget"] < flower["epsilon"] <= flower["budget"]
    for key in ("epsilon", "top_items", *METRIC_NAMES):
        assert flower[key] == runs["inprocess"][key], key
    flower_model, local_model = np.load(tmp_path / "flower" / "model.npz"), np.load(tmp_path / "inprocess" / "model.npz")
    assert set(flower_model) == set(local_model)
    for name in flower_model:
        np.testing.assert_array_equal(flower_model[name], local_model[name], err_msg=name)
    audit = CliRunner().invoke(app, ["audit", str(tmp_path / "flower")])
    assert audit.exit_code == 0, audit.output
