"""DP-Recon (:mod:`fedrec.dpease.factors`, :mod:`fedrec.families.recon`): the device's
reconstruction against a slow reference, the release's budget in the ledger as
``fedrec audit`` recomputes it, the user vector never in an upload, and Flower's Grid
giving exactly the in-process release, ledger and metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from clients import device as device_module
from clients.app import app as simulation_app
from clients.records import to_record
from fedrec import protocol
from fedrec.config import RunConfig, parse_run_config
from fedrec.data import Interactions
from fedrec.deploy.device import DeviceFiles, DeviceState, save_state
from fedrec.deploy.fleet import split_fleet
from fedrec.dpease.factors import ITEM_FACTORS, ReconRelease, factor_operator, fit_recon, item_factors, reconstruct
from fedrec.dpease.fit import EaseRelease
from fedrec.dpease.run import count_share, phase_noise
from fedrec.dpease.statistics import COUNTS, GRAM
from fedrec.evaluation.metrics import METRIC_NAMES
from fedrec.experiments.results import MODEL, RESULTS, read_arrays
from fedrec.experiments.run import FixedChannels, run_family
from fedrec.families import family_of
from fedrec.families.recon import DP_RECON, DpReconFamily
from fedrec.federation.device import simulated_population
from fedrec.privacy.accountant import calibrate_releases
from fedrec.privacy.audit import OK, audit_run
from fedrec.privacy.ledger import LEDGER, read_entries
from server.statistics import GridStatistics
from tests.deploy.test_secagg import InlineGrid

USERS = 12


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _config(tmp_path: Path, **extra: Any) -> RunConfig:
    return parse_run_config(
        {
            "model": "dp-recon", "dataset": "synthetic", "synthetic-users": USERS, "synthetic-items": 120,
            "synthetic-interactions": 10, "num-eval-negatives": 10, "seed": 4, "epsilon": 100.0,
            "ease-item-threshold": 0.5, "recon-dim": 4, "ledger-key": str(tmp_path / "keys" / "ledger.pem"), **extra,
        }
    )


def _releases(run_dir: Path) -> list[dict[str, Any]]:
    return [e for e in read_entries(run_dir / LEDGER).entries if e.get("kind") == "release"]


def test_reconstruction_is_the_ridge_solution_of_each_device_alone() -> None:
    rng = np.random.default_rng(0)
    factors, history = rng.normal(size=(30, 5)), (rng.random((7, 30)) < 0.2).astype(float)
    fast = reconstruct(factors, history, ridge_=0.7)
    for row, x in enumerate(history):  # slow reference: least squares on the ridge-augmented system
        stacked = np.vstack([factors, np.sqrt(0.7) * np.eye(5)])
        expected = np.linalg.lstsq(stacked, np.concatenate([x, np.zeros(5)]), rcond=None)[0]
        np.testing.assert_allclose(fast[row], expected, atol=1e-10)
    # reconstructing one device never reads another's history
    np.testing.assert_allclose(reconstruct(factors, history[3], ridge_=0.7)[0], fast[3], atol=1e-12)
    np.testing.assert_allclose(history @ factor_operator(factors, ridge_=0.7), fast @ factors.T, atol=1e-10)


def test_item_factors_are_the_gram_best_low_rank_part_without_noise_and_floored_with_it() -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((50, 12)) < 0.3).astype(float)
    gram = x.T @ x
    factors = item_factors(gram, noise_std=0.0, eigen_floor=0.5, dim=3)
    values, vectors = np.linalg.eigh(gram)
    best = (vectors[:, -3:] * values[-3:]) @ vectors[:, -3:].T  # Eckart-Young
    np.testing.assert_allclose(factors @ factors.T, best, atol=1e-9)
    assert item_factors(gram, noise_std=0.0, eigen_floor=0.5, dim=99).shape == (12, 12)
    floored = item_factors(-np.eye(4), noise_std=1.0, eigen_floor=0.5, dim=4)  # every eigenvalue raised to 0.5 * 1 * 2
    np.testing.assert_allclose(np.linalg.norm(floored, axis=0), np.ones(4))


def test_scores_are_dp_ease_plus_the_reconstructed_factor_score_and_weight_zero_is_dp_ease() -> None:
    rng = np.random.default_rng(2)
    top = np.array([5, 1, 7, 3])
    weights = rng.normal(size=(4, 4))
    np.fill_diagonal(weights, 0.0)
    ease = EaseRelease(top_items=top, weights=weights, prior=np.linspace(0.0, 0.01, 10), score_decay=1.0)
    gram = rng.normal(size=(4, 4))
    gram = gram @ gram.T
    history = np.array([5, 3, 8])
    plain = fit_recon(ease, gram, noise_std=0.1, eigen_floor=0.5, dim=2, shrink=1.0, weight=0.0)
    np.testing.assert_array_equal(plain.score_items(history), ease.score_items(history))
    model = fit_recon(ease, gram, noise_std=0.1, eigen_floor=0.5, dim=2, shrink=1.0, weight=0.5)
    assert model.mix > 0 and model.factors.shape == (4, 2)
    x = ease.history(history)
    u = model.user_vectors(x[None, :])[0]  # what the device solves and keeps
    expected = ease.prior.astype(np.float64).copy()
    expected[top] += x[top] @ weights + model.mix * model.factors @ u
    np.testing.assert_allclose(model.score_items(history), expected, atol=1e-6)
    np.testing.assert_allclose(x[top] @ model.item_item() + ease.prior[top], expected[top], atol=1e-6)
    back = ReconRelease.from_arrays(model.to_arrays())  # the arrays a device downloads
    np.testing.assert_allclose(back.score_items(history), model.score_items(history), atol=1e-5)
    empty = fit_recon(EaseRelease(top_items=np.empty(0, dtype=np.int64), weights=np.zeros((0, 0)), prior=ease.prior),
                      gram, noise_std=0.1, eigen_floor=0.5, dim=2, shrink=1.0, weight=0.5)
    np.testing.assert_array_equal(empty.score_items(history), ease.prior)  # no co-occurrence release: the prior


def test_the_budget_split_between_the_two_releases_is_in_the_ledger_and_recomputed_by_audit(tmp_path: Path) -> None:
    config = _config(tmp_path, epsilon=8.0)
    split = simulated_population(config).split
    channels = FixedChannels(config, n_items=split.n_items, simulated=True)
    results = run_family(config, channels, out_dir=tmp_path / "run", engine="inprocess")
    releases = _releases(tmp_path / "run")
    share = count_share(config, split.n_items)
    expected = calibrate_releases(target_epsilon=8.0, delta=config.privacy.delta, shares=(share, 1 - share),
                                  accountant=config.privacy.accountant)
    assert [e["noise_multiplier"] for e in releases] == pytest.approx(list(expected), rel=1e-12)
    assert tuple(e["noise_multiplier"] for e in releases) == phase_noise(config, n_items=split.n_items)
    report = audit_run(tmp_path / "run")
    assert report.code == OK and report.releases == 2
    assert results["epsilon"] == report.epsilon_prv and 0.95 * 8.0 < report.epsilon_prv <= 8.0
    assert results["model"] == "dp-recon" and (tmp_path / "run" / RESULTS).exists()
    assert ITEM_FACTORS in read_arrays(tmp_path / "run" / MODEL)


def _statistics_message(config: RunConfig, phase: str, request: dict[str, np.ndarray]) -> Message:
    record = ConfigRecord(
        {protocol.RUN_CONFIG: protocol.encode_run_config(config.to_flat()), protocol.SERVER_ROUND: 1, protocol.PHASE: phase}
    )
    return Message(RecordDict({protocol.ARRAYS: to_record(request), protocol.CONFIG: record}),
                   dst_node_id=10, message_type=protocol.STATISTICS, group_id="1")


@pytest.mark.usefixtures("flower_task_identity")
def test_the_user_vector_never_leaves_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ml100k: Interactions,
) -> None:
    config = _config(tmp_path)
    assert DP_RECON.uploads == frozenset({COUNTS, GRAM}) and not DP_RECON.private_state
    split = simulated_population(config).split
    data = split.client(0)
    grid = GridStatistics(_simulated_grid(), config, n_items=split.n_items, expected_nodes=USERS, patience=1)
    run = DP_RECON.run(config, FixedChannels(config, n_items=split.n_items, simulated=True, statistics_transport=grid),
                       run_dir=tmp_path / "grid", on_step=None, resume=False)
    model = ReconRelease.from_arrays(run.release)
    assert model.factors.shape[1] == 4
    # what the devices sent: one declared statistic per reply, no array of the user vector's size
    assert grid.upload_contents == {"arrays:arrays": ["gram_upper"]}
    assert all(u["bytes_per_device"] > 4 * split.n_items for u in grid.uploads[:1])
    # an evaluation reply is the metrics alone
    assert set(DP_RECON.device_evaluate(data, release=run.release, which="val", config=config)) == set(METRIC_NAMES)
    # a device that tried to send its reconstructed vector beside its statistic is stopped by the outbox guard
    honest = DpReconFamily.device_statistic

    def leaky(self: DpReconFamily, own: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        x = np.zeros(own.n_items)
        x[own.train_items] = 1.0
        vector = reconstruct(np.random.default_rng(0).normal(size=(own.n_items, 4)), x, ridge_=1.0)[0]  # (d,)
        return {**honest(self, own, **kwargs), "user_vector": vector.astype(np.float32)}

    monkeypatch.setattr(DpReconFamily, "device_statistic", leaky)
    device = split_fleet(ml100k, tmp_path / "devices", devices=1, rating_threshold=0.0, rng=np.random.default_rng(3))[0]
    save_state(DeviceFiles.beside(device.data_path), DeviceState(device_seed=100))
    real = parse_run_config({"model": "dp-recon", "ledger-key": str(tmp_path / "k.pem")})
    context = Context(run_id=1, node_id=10, node_config={"data-path": str(device.data_path)}, state=RecordDict(),
                      run_config={})
    with pytest.raises(Exception, match="outbox guard: a statistics reply may carry only the clipped statistic"):
        device_module.app(message=_statistics_message(real, "counts", {}), context=context)


def _simulated_grid() -> InlineGrid:
    return InlineGrid({1000 - 7 * k: {"partition-id": k} for k in range(USERS)}, app=simulation_app)


@pytest.mark.usefixtures("flower_task_identity")
def test_grid_gives_exactly_the_in_process_release_ledger_and_metrics(tmp_path: Path) -> None:
    config = _config(tmp_path)
    split = simulated_population(config).split
    family = family_of(config)
    outcomes = {}
    for name, transport in (("local", family.simulated_devices(split, config)),
                            ("grid", GridStatistics(_simulated_grid(), config, n_items=split.n_items,
                                                    expected_nodes=USERS, patience=1, batch=5))):
        channels = FixedChannels(config, n_items=split.n_items, simulated=True, statistics_transport=transport)
        outcomes[name] = family.run(config, channels, run_dir=tmp_path / name, on_step=None, resume=False)
    local, grid = outcomes["local"], outcomes["grid"]
    assert local.fields["top_items"] > 4 and local.fields["factor_mix"] > 0  # both releases carried signal
    assert local.release.keys() == grid.release.keys()
    for name, value in local.release.items():
        np.testing.assert_array_equal(grid.release[name], value, err_msg=name)
    fields = ("mechanism", "noise_multiplier", "sample_rate", "clipping_norm", "clients")
    assert [[e[f] for f in fields] for e in _releases(tmp_path / "grid")] == [
        [e[f] for f in fields] for e in _releases(tmp_path / "local")]
    assert grid.test == pytest.approx(local.test, abs=1e-12) and grid.privacy["epsilon"] == local.privacy["epsilon"]
    assert grid.fields["validation"] == pytest.approx(local.fields["validation"], abs=1e-12)
    for local_row, grid_row in zip(local.test_per_client, grid.test_per_client, strict=True):
        assert grid_row == pytest.approx(local_row, abs=1e-12)


@pytest.mark.slow
def test_simulate_with_the_flower_engine_gives_the_in_process_model(data_dir: Path, tmp_path: Path) -> None:
    """`fedrec simulate --engine flower` (Flower's simulation runtime, devices in other
    processes) releases the same arrays, ledger epsilon and test metrics as the in-process engine."""
    from typer.testing import CliRunner

    from fedrec.cli import app

    runner = CliRunner()
    settings = ["--set", "model=dp-recon", "--set", "max-users=40", "--set", "epsilon=50", "--set", f"data-dir={data_dir}",
                "--set", f"ledger-key={tmp_path / 'key.pem'}"]
    runs = {}
    for engine in ("flower", "inprocess"):
        out = tmp_path / engine
        result = runner.invoke(app, ["simulate", "--out", str(out), "--engine", engine, *settings], env={"COLUMNS": "400"})
        assert result.exit_code == 0, (result.output, repr(result.exception))
        runs[engine] = read_json(out / RESULTS)
    assert runs["flower"]["engine"] == "flower" and runs["flower"]["clients"] == 40
    assert runs["inprocess"]["factor_mix"] > 0  # the factors take part in the scores compared
    for key in ("epsilon", "rounds", "top_items", "factor_dim", *METRIC_NAMES):
        assert runs["flower"][key] == pytest.approx(runs["inprocess"][key], abs=1e-12), key
    flower, local = read_arrays(tmp_path / "flower" / MODEL), read_arrays(tmp_path / "inprocess" / MODEL)
    assert flower.keys() == local.keys()
    for name in local:
        np.testing.assert_array_equal(flower[name], local[name], err_msg=name)
    assert audit_run(tmp_path / "flower").code == OK
