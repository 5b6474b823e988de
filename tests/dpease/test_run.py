"""A DP-EASE run end to end: ledger and audit, no-noise equivalence with central EASE,
the budget stop, and the simulated release matching the per-device run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opacus.accountants import PRVAccountant

from fedrec.config import RunConfig, parse_run_config
from fedrec.deploy.catalog import run_catalog
from fedrec.dpease.central import simulate_release
from fedrec.dpease.fit import EaseRelease, ease_lambda, select_top_items
from fedrec.dpease.report import run_ease_and_report
from fedrec.dpease.run import InProcessStatistics, device_evaluate, phase_noise, run_dp_ease
from fedrec.errors import FedrecError, PrivacyError
from fedrec.experiments.results import MODEL, read_arrays
from fedrec.federation.device import simulated_population
from fedrec.models.ease import ease_weights
from fedrec.privacy.audit import OK, audit_run
from fedrec.privacy.eval_release import NOT_PRIVATE, PRIVATE
from fedrec.privacy.ledger import LEDGER, read_entries


def _config(tmp_path: Path, **extra: Any) -> RunConfig:
    return parse_run_config(
        {
            "model": "dp-ease", "dataset": "synthetic", "synthetic-users": 150, "synthetic-items": 200,
            "synthetic-interactions": 12, "num-eval-negatives": 20, "seed": 1, "ledger-key": str(tmp_path / "keys" / "ledger.pem"), **extra,
        }
    )


def _transport(config: RunConfig) -> InProcessStatistics:
    return InProcessStatistics(simulated_population(config).split, clipping_norm=config.privacy.clipping_norm)


def test_both_releases_are_in_the_ledger_and_the_audit_recomputes_epsilon(tmp_path: Path) -> None:
    config = _config(tmp_path, epsilon=4.0)
    out = tmp_path / "run"
    results = run_ease_and_report(config, out, engine="inprocess")
    report = audit_run(out)
    assert report.code == OK, report.problems
    assert (report.rounds, report.releases, report.closed) == (0, 2, True)
    z1, z2 = results["noise_multipliers"]
    direct = PRVAccountant()
    direct.history = [(z1, 1.0, 1), (z2, 1.0, 1)]
    expected = direct.get_epsilon(delta=1e-5, eps_error=0.01)
    assert report.epsilon_prv == pytest.approx(expected, rel=1e-9)
    assert results["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert 0.95 * 4.0 < report.epsilon_prv <= 4.0
    releases = [e for e in read_entries(out / LEDGER).entries if e.get("kind") == "release"]
    assert [e["mechanism"] for e in releases] == ["gaussian-sum/item-counts", "gaussian-sum/item-cooccurrence-upper"]
    assert all(e["sample_rate"] == 1.0 and e["clients"] == results["clients"] for e in releases)
    assert set(json.loads((out / "results.json").read_text())) >= {"hr@10", "full_ndcg@10", "validation", "top_items"}
    # the paired comparison with popularity: model minus popularity per user, whose mean
    # is the difference of the two means the table prints (the devices' own metrics)
    paired, popularity = results["versus_popularity"], results["references"]["popularity"]["test"]
    for name in ("ndcg@10", "full_ndcg@10", "hr@10"):
        assert paired[name]["difference"] == pytest.approx(results[name] - popularity[name], abs=1e-12)
        assert 0 < paired[name]["standard_error"] < 0.5


def test_without_noise_the_federated_release_is_central_ease_on_the_same_items(tmp_path: Path) -> None:
    config = _config(tmp_path, dp="off", **{"ease-pair-decay": 1.0})
    transport = _transport(config)
    release, history, _, _ = run_dp_ease(config, transport, catalog=run_catalog(config), run_dir=tmp_path / "run")
    assert math.isinf(history.privacy["epsilon"])  # type: ignore[arg-type]
    # central reference: per-user normalised 0/1 histories, computed directly
    split = transport.split
    x = np.zeros((split.n_users, split.n_items))
    for u in range(split.n_users):
        x[u, split.train_of(u)] = 1.0
    n = x.sum(axis=1)
    counts = (x / np.sqrt(np.maximum(n, 1))[:, None]).sum(axis=0)
    top = select_top_items(counts, noise_std=0.0, threshold=0.0, max_items=config.ease.max_items)
    np.testing.assert_array_equal(release.top_items, top)
    xk = x[:, top]
    m = xk.sum(axis=1)
    weight = np.where(m > 0, 1 / np.sqrt(np.maximum(m * (m + 1) / 2, 1)), 0.0)
    gram = (xk * weight[:, None]).T @ xk
    lam = ease_lambda(gram, noise_std=0.0, noise_scale=config.ease.lambda_noise, base_scale=config.ease.lambda_base)
    np.testing.assert_allclose(release.weights, ease_weights(gram, lam), atol=1e-5)


def test_pair_decay_weighs_each_pair_by_its_distance_in_time(tmp_path: Path) -> None:
    """The co-occurrence release with ``ease-pair-decay`` < 1, recomputed directly from the
    users' time-ordered histories: pair (i, j) weighs decay ** |t_i - t_j| (last
    occurrences), each user's packed upper triangle scaled to norm C."""
    decay = 0.8
    config = _config(tmp_path, dp="off", **{"ease-pair-decay": decay, "clipping-norm": 1.5})
    transport = _transport(config)
    release, _, _, _ = run_dp_ease(config, transport, catalog=run_catalog(config), run_dir=tmp_path / "run")
    split, top = transport.split, release.top_items
    k = top.shape[0]
    gram = np.zeros((k, k))
    for u in range(split.n_users):
        last: dict[int, int] = {}
        for t, item in enumerate(split.train_of(u)):
            last[int(item)] = t
        mine = [(int(np.flatnonzero(top == i)[0]), t) for i, t in last.items() if i in set(top.tolist())]
        m = np.zeros((k, k))
        for a, ta in mine:
            for b, tb in mine:
                m[a, b] = decay ** abs(ta - tb)
        upper = m[np.triu_indices(k)]
        if upper.any():
            gram += m * 1.5 / np.linalg.norm(upper)
    lam = ease_lambda(gram, noise_std=0.0, noise_scale=config.ease.lambda_noise, base_scale=config.ease.lambda_base)
    np.testing.assert_allclose(release.weights, ease_weights(gram, lam), atol=1e-4)


def test_a_device_scores_its_recent_items_more(tmp_path: Path) -> None:
    """``ease-score-decay``: the k-th most recent item of the history weighs decay ** k,
    a repeated item counts once at its last position, and the decay travels with the
    released arrays."""
    release = EaseRelease(top_items=np.array([0, 1, 2]), weights=np.eye(3)[:, ::-1].copy(), prior=np.zeros(4), score_decay=0.5)
    np.testing.assert_allclose(release.history(np.array([2, 0, 1, 0])), [1.0, 0.5, 0.125, 0.0])
    np.testing.assert_allclose(release.score_items(np.array([2, 0, 1, 0])), [0.125, 0.5, 1.0, 0.0])
    assert EaseRelease.from_arrays(release.to_arrays()).score_decay == 0.5
    old = {k: v for k, v in release.to_arrays().items() if k != "score_decay"}  # a release from before the decay
    assert EaseRelease.from_arrays(old).score_decay == 1.0


def test_the_simulated_release_is_the_per_device_release(tmp_path: Path) -> None:
    config = _config(tmp_path, epsilon=8.0)
    out = tmp_path / "run"
    run_ease_and_report(config, out, engine="inprocess")
    released = EaseRelease.from_arrays(read_arrays(out / MODEL))
    simulated = simulate_release(config, simulated_population(config).split)
    np.testing.assert_array_equal(released.top_items, simulated.top_items)
    np.testing.assert_allclose(released.weights, simulated.weights, atol=1e-5)
    np.testing.assert_allclose(released.prior, simulated.prior, atol=1e-5)


def test_a_budget_too_small_for_the_second_release_stops_before_it(tmp_path: Path) -> None:
    # z = 1.2 fixed: one release spends 3.56 at delta 1e-5 (PRV), two 5.31 > 4.5
    config = _config(tmp_path, epsilon=4.5, **{"noise-multiplier": 1.2})
    out = tmp_path / "run"
    results = run_ease_and_report(config, out, engine="inprocess")
    report = audit_run(out)
    assert report.code == OK, report.problems
    assert (report.releases, report.stopped_by_budget) == (1, True)
    assert results["stopped_by_budget"] and results["top_items"] == 0  # the popularity prior alone
    assert report.epsilon_prv <= 4.5


def test_a_budget_too_small_for_any_release_records_none(tmp_path: Path) -> None:
    config = _config(tmp_path, epsilon=3.0, **{"noise-multiplier": 1.2})  # one release alone: 3.56
    with pytest.raises(FedrecError, match="raise epsilon"):
        run_dp_ease(config, _transport(config), catalog=run_catalog(config), run_dir=tmp_path / "run")
    entries = read_entries(tmp_path / "run" / LEDGER).entries
    assert [e["kind"] for e in entries if e["kind"] in ("release", "round")] == []


class DeviceFleet(InProcessStatistics):
    """In-process devices standing in for a real fleet: their metrics must be private."""

    private_evaluation = True


def test_a_simulation_evaluates_exactly_and_says_so(tmp_path: Path) -> None:
    config = _config(tmp_path, epsilon=4.0)
    release, history, _, test = run_dp_ease(config, _transport(config),
                                            catalog=run_catalog(config), run_dir=tmp_path / "run")
    entries = read_entries(tmp_path / "run" / LEDGER).entries
    assert entries[0]["evaluation"] == NOT_PRIVATE and len([e for e in entries if e.get("kind") == "release"]) == 2
    split = simulated_population(config).split
    exact = [device_evaluate(split.client(c), release=release.to_arrays(), which="test") for c in range(split.n_users)]
    assert test["ndcg@10"] == pytest.approx(float(np.mean([m["ndcg@10"] for m in exact])), abs=1e-12)
    assert history.noise_multipliers == phase_noise(config)


def test_private_evaluation_is_two_more_releases_within_the_calibrated_budget(tmp_path: Path) -> None:
    config = _config(tmp_path, epsilon=4.0, **{"eval-noise-multiplier": 5.0})
    split = simulated_population(config).split
    _, history, val, test = run_dp_ease(config, DeviceFleet(split, clipping_norm=config.privacy.clipping_norm),
                                        catalog=run_catalog(config), run_dir=tmp_path / "run")
    entries = read_entries(tmp_path / "run" / LEDGER).entries
    releases = [e for e in entries if e.get("kind") == "release"]
    assert entries[0]["evaluation"] == PRIVATE and len(releases) == 4 and not history.stopped_by_budget
    assert [e["noise_multiplier"] for e in releases[2:]] == [5.0, 5.0]
    # the phases leave room for both evaluations: more noise than without them
    z1, z2 = history.noise_multipliers
    assert (z1, z2) == phase_noise(config, evaluations=2) and z1 > phase_noise(config)[0] and z2 > phase_noise(config)[1]
    report = audit_run(tmp_path / "run")
    direct = PRVAccountant()
    direct.history = [(z1, 1.0, 1), (z2, 1.0, 1), (5.0, 1.0, 2)]
    assert report.code == OK and report.releases == 4
    assert report.epsilon_prv == pytest.approx(direct.get_epsilon(delta=1e-5, eps_error=0.01), rel=1e-9)
    assert 0.95 * 4.0 < report.epsilon_prv <= 4.0
    assert all(math.isfinite(v) for v in (*val.values(), *test.values()))


def test_evaluations_that_alone_exceed_the_budget_are_refused_before_any_release(tmp_path: Path) -> None:
    config = _config(tmp_path, epsilon=1.0, **{"eval-noise-multiplier": 1.0})
    with pytest.raises(PrivacyError, match="raise eval-noise-multiplier or epsilon"):
        phase_noise(config, evaluations=2)


def test_fedrec_simulate_runs_dp_ease_and_fedrec_audit_verifies_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedrec.cli import app

    out = tmp_path / "cli-run"
    settings = {
        "model": "dp-ease", "dataset": "synthetic", "synthetic-users": 150, "synthetic-items": 200,
        "synthetic-interactions": 12, "num-eval-negatives": 20, "seed": 1, "epsilon": 4.0,
        "ledger-key": str(tmp_path / "keys" / "ledger.pem"),
    }
    args = ["simulate", "--out", str(out)] + [part for k, v in settings.items() for part in ("--set", f"{k}={v}")]
    runner = CliRunner()
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "federated dp-ease" in result.output
    assert runner.invoke(app, ["audit", str(out)]).exit_code == 0
    assert json.loads((out / "results.json").read_text())["epsilon"] <= 4.0


def test_the_count_share_follows_the_catalogue_past_the_cooccurrence_cap() -> None:
    from fedrec.dpease.run import count_share
    from fedrec.privacy.accountant import epsilon

    config = parse_run_config({"model": "dp-ease", "epsilon": 8.0, "ease-max-items": 100})
    assert count_share(config, None) == count_share(config, 150) == count_share(config, 200) == pytest.approx(0.2)
    # 1 - 2 * 100 / 1000 = 0.8 of the catalogue past twice the cap: 0.2 + 0.3 * 0.8
    assert count_share(config, 1000) == pytest.approx(0.44)
    assert count_share(config, 10**9) == pytest.approx(0.5, abs=1e-6)  # at most base + tail
    high = parse_run_config({"model": "dp-ease", "ease-count-share": 0.95, "ease-max-items": 100})
    assert count_share(high, 10**6) == pytest.approx(0.95)  # a share set above 0.9 is kept, never lowered
    # the split changes, the budget does not: both ways spend epsilon 8 by the accountant
    for n in (150, 1000):
        z1, z2 = phase_noise(config, n_items=n)
        spent = epsilon(((z1, 1.0, 1), (z2, 1.0, 1)), delta=1e-5, accountant=config.privacy.accountant)
        assert spent == pytest.approx(8.0, abs=0.02)
    assert phase_noise(config, n_items=1000)[0] < phase_noise(config, n_items=150)[0]  # less noise on the counts


@pytest.mark.parametrize("model", ["dp-ease", "dp-recon"])
def test_without_a_time_order_the_decays_are_one(tmp_path: Path, model: str) -> None:
    rng = np.random.default_rng(0)
    users, items = np.repeat(np.arange(60), 8), rng.integers(0, 150, size=480)
    keep = np.unique(users * 1000 + items, return_index=True)[1]  # one row per user and item
    rows = np.c_[users[keep], items[keep], rng.integers(1, 6, size=keep.shape[0]), rng.integers(0, 10**6, size=keep.shape[0])]
    untimed, timed = tmp_path / "untimed.csv", tmp_path / "timed.csv"
    np.savetxt(untimed, rows[:, :3], fmt="%d", delimiter=",", header="user_id,item_id,rating", comments="")
    np.savetxt(timed, rows, fmt="%d", delimiter=",", header="user_id,item_id,rating,timestamp", comments="")
    for path, ordered in ((untimed, False), (timed, True)):
        config = _config(tmp_path, model=model, dataset=str(path), epsilon=8.0, **{"ease-content-weight": 0})
        results = run_ease_and_report(config, tmp_path / path.stem, engine="inprocess")
        assert results["time_ordered"] is ordered
        decay = float(read_arrays(tmp_path / path.stem / MODEL)["score_decay"][0])
        assert decay == (config.ease.score_decay if ordered else 1.0)
