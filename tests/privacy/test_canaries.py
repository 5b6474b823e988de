"""Canary population and the end-to-end empirical audit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import RunConfig, parse_run_config
from fedrec.engine.vectorised import VectorisedTransport
from fedrec.errors import PrivacyError
from fedrec.federation.device import simulated_population
from fedrec.privacy.canaries import (
    EMPIRICAL_AUDIT,
    AuditSettings,
    Canaries,
    make_canaries,
    membership_scores,
    run_empirical_audit,
    with_canaries,
)


def _config(tmp_path: Path, **overrides: object) -> RunConfig:
    values: dict[str, object] = {
        "model": "neumf", "dataset": "synthetic", "synthetic-users": 150, "synthetic-items": 600, "synthetic-interactions": 15,
        "num-rounds": 30, "clients-per-round": 150, "server-lr": 5.0, "eval-every": 0, "gmf-dim": 8,
        "mlp-layers": "16,8", "seed": 1, "ledger-key": str(tmp_path / "keys" / "ledger.pem"),
    }
    values.update(overrides)
    return parse_run_config(values)


def test_members_join_the_population_and_non_members_do_not(tmp_path: Path) -> None:
    split = simulated_population(_config(tmp_path)).split
    canaries = make_canaries(split, count=30, items_per_canary=5, pool_size=60, rng=np.random.default_rng(0))
    joined = with_canaries(split, canaries, rng=np.random.default_rng(1))
    members = np.flatnonzero(canaries.members)
    assert joined.n_users == split.n_users + members.shape[0]
    for row, c in enumerate(members):
        data = joined.client(split.n_users + row)
        assert np.array_equal(data.train_items, canaries.items[c])
        assert not np.isin(data.test_negatives, canaries.items[c]).any()
    assert np.isin(canaries.items, canaries.pool).all()
    popularity = np.bincount(split.train_items, minlength=split.n_items)
    assert popularity[canaries.pool].max() <= np.sort(popularity)[59]  # the 60 least-rated items
    assert np.array_equal(joined.client(3).train_items, split.client(3).train_items)
    transport = VectorisedTransport(_config(tmp_path), split=joined)
    assert transport.clients() == list(range(joined.n_users))
    with pytest.raises(PrivacyError):
        make_canaries(split, count=1, items_per_canary=5, pool_size=60, rng=np.random.default_rng(0))


@pytest.fixture()
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: extra threads only contend on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_the_attack_works_without_dp_and_is_held_down_by_dp(tmp_path: Path) -> None:
    # Same seed, so the same canaries and members: only DP differs between the runs.
    settings = AuditSettings(canaries=100, items_per_canary=16, pool_size=300)
    off = run_empirical_audit(_config(tmp_path, dp="off"), out_dir=tmp_path / "off", settings=settings)
    on = run_empirical_audit(_config(tmp_path, epsilon=1.0), out_dir=tmp_path / "on", settings=settings)
    assert off["auc"] > 0.9  # measured 0.96: members' items move together, non-members' do not
    assert off["one_run_epsilon_lower_bound"] > 1.2  # measured 1.91 (at most ~3.3 with 100 canaries)
    assert on["accountant_epsilon"] == pytest.approx(1.0, rel=0.05)
    assert on["one_run_epsilon_lower_bound"] <= on["accountant_epsilon"]
    assert on["one_run_epsilon_lower_bound"] < off["one_run_epsilon_lower_bound"]
    written = json.loads((tmp_path / "on" / EMPIRICAL_AUDIT).read_text())
    assert written["canaries"] == 100 and written["dp"] is True


def test_scores_see_items_moving_together_and_ignore_shared_drift() -> None:
    rng = np.random.default_rng(0)
    n_items, d, k = 400, 12, 10
    pool = np.arange(n_items)
    items = np.stack([rng.choice(pool, size=k, replace=False) for _ in range(40)])
    members = np.arange(40) < 20
    initial = {"item_gmf.weight": rng.normal(size=(n_items, d)), "item_mlp.weight": rng.normal(size=(n_items, d))}
    moved = rng.normal(scale=0.1, size=(n_items, 2 * d)) + 5.0  # noise plus a drift every item shares
    for c in np.flatnonzero(members):
        moved[items[c]] += 0.3 * rng.normal(size=2 * d)  # a member pushes its items one way
    released = {"item_gmf.weight": initial["item_gmf.weight"] + moved[:, :d],
                "item_mlp.weight": initial["item_mlp.weight"] + moved[:, d:]}
    canaries = Canaries(items=items, held_out=np.zeros((40, 2), dtype=np.int64), members=members, pool=pool)
    scores = membership_scores(released=released, initial=initial, canaries=canaries)
    assert scores[members].min() > scores[~members].max()
    assert np.abs(scores[~members]).max() < 0.1  # the shared drift is gone (it alone would score 5^2 * 24 = 600)


def test_the_command_prints_both_bounds_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    args = ["audit-empirical", "--canaries", "20", "--items", "4", "--out", str(out), "--set", "dataset=synthetic",
            "--set", "model=neumf", "--set", "synthetic-users=60", "--set", "synthetic-items=200", "--set", "num-rounds=2", "--set", "dp=off",
            "--set", "eval-every=0", "--set", "gmf-dim=4", "--set", "mlp-layers=8,4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "one-run epsilon lower bound" in result.output
    report = json.loads((out / EMPIRICAL_AUDIT).read_text())
    assert report["canaries"] == 20 and report["dp"] is False
