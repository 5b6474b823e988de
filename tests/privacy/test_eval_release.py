"""Evaluation metrics as a DP release (issue 15, part 2): the Gaussian sum of per-user
metrics, its ledger entries, the budget stop, and the simulation's statement."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedrec.errors import PrivacyError
from fedrec.evaluation.metrics import METRIC_NAMES
from fedrec.federation.device import simulated_population
from fedrec.federation.rounds import InProcessTransport, run_federated
from fedrec.privacy.accountant import epsilon
from fedrec.privacy.audit import OK, audit_run
from fedrec.privacy.eval_release import (
    MECHANISM,
    NOT_PRIVATE,
    PRIVATE,
    clipped_metrics,
    noisy_mean,
    release_metrics,
    sensitivity,
)
from fedrec.privacy.ledger import LEDGER
from fedrec.privacy.report import audit_document
from fedrec.privacy.report_html import render_html
from fedrec.privacy.session import PrivacySession


def test_each_users_metrics_are_clipped_to_the_unit_interval() -> None:
    replies = [{"a": 1.7, "b": -0.2}, {"a": math.nan}, {"a": 0.25, "b": 1.0}]
    np.testing.assert_array_equal(clipped_metrics(replies, ["a", "b"]), [[1.0, 0.0], [0.0, 0.0], [0.25, 1.0]])
    assert sensitivity(4) == 2.0  # one user moves the sum by at most sqrt(d) in L2


def test_the_noisy_mean_is_unbiased_with_the_stated_spread() -> None:
    rng = np.random.default_rng(0)
    metrics = rng.uniform(size=(50, 4))
    draws = np.stack([noisy_mean(metrics, noise_multiplier=3.0, expected_users=60, rng=rng) for _ in range(4000)])
    exact = metrics.sum(axis=0) / 60  # divided by the users asked, not those who replied
    std = 3.0 * 2.0 / 60
    np.testing.assert_allclose(draws.mean(axis=0), exact, atol=4 * std / np.sqrt(4000))
    np.testing.assert_allclose(draws.std(axis=0), std, rtol=0.06)


@pytest.mark.parametrize("z, n", [(0.0, 10), (-1.0, 10), (1.0, 0)])
def test_the_mechanism_refuses_no_noise_or_no_users(z: float, n: int) -> None:
    with pytest.raises(PrivacyError):
        noisy_mean(np.zeros((3, 2)), noise_multiplier=z, expected_users=n, rng=np.random.default_rng(0))
    with pytest.raises(PrivacyError, match="clipped"):
        noisy_mean(np.full((3, 2), 2.0), noise_multiplier=1.0, expected_users=3, rng=np.random.default_rng(0))


def session(run_dir: Path, budget: float) -> PrivacySession:
    return PrivacySession(
        run_dir=run_dir, key=Ed25519PrivateKey.generate(), accountant="prv", delta=1e-5, budget=budget, population=100,
        sample_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, config_hash="c" * 64, evaluation=PRIVATE,
    )


def test_a_release_is_recorded_before_it_is_computed_and_composes(tmp_path: Path) -> None:
    s = session(tmp_path, budget=50.0)
    s.record_round(1, clients=10)
    seen = []

    def ask() -> list[dict[str, float]]:
        seen.append(len((tmp_path / LEDGER).read_bytes().splitlines()))
        return [{"hr@10": 1.0, "ndcg@10": 0.5}, {"hr@10": 0.0, "ndcg@10": 0.0}]

    out = release_metrics(s, ask, names=["hr@10", "ndcg@10"], purpose="evaluation: val", noise_multiplier=8.0,
                          expected_users=3, rng=np.random.default_rng(1))
    assert out is not None and set(out) == {"hr@10", "ndcg@10"}
    entries = [json.loads(line) for line in (tmp_path / LEDGER).read_bytes().splitlines()]
    release = entries[-1]
    assert release["kind"] == "release" and release["mechanism"] == MECHANISM and release["purpose"] == "evaluation: val"
    assert (release["noise_multiplier"], release["sample_rate"], release["clipping_norm"], release["clients"]) == (8.0, 1.0, math.sqrt(2), 2)
    assert entries[0]["evaluation"] == PRIVATE
    s.close(stopped_by_budget=False)
    report = audit_run(tmp_path)
    assert report.code == OK and report.releases == 1
    assert report.epsilon_prv == pytest.approx(epsilon(((1.0, 0.1, 1), (8.0, 1.0, 1)), delta=1e-5, accountant="prv"))


def test_an_evaluation_over_budget_asks_no_device_and_writes_nothing(tmp_path: Path) -> None:
    s = session(tmp_path, budget=1.0)
    before = (tmp_path / LEDGER).read_bytes()

    def ask() -> list[dict[str, float]]:
        raise AssertionError("devices were asked for metrics that cannot be released")

    assert release_metrics(s, ask, names=["hr@10"], purpose="evaluation: test", noise_multiplier=0.5,
                           expected_users=10, rng=np.random.default_rng(0)) is None
    assert (tmp_path / LEDGER).read_bytes() == before


class DeviceFleet(InProcessTransport):
    """In-process devices standing in for a real fleet: their metrics must be private."""

    private_evaluation = True


def run(config, transport_class, run_dir: Path):
    split = simulated_population(config).split
    return run_federated(config, transport_class(config, split.n_users), model=config.model.build(split.n_items), run_dir=run_dir)


def test_a_simulation_says_its_evaluation_is_not_private(tiny_config, tmp_path: Path) -> None:
    run(tiny_config, InProcessTransport, tmp_path)
    entries = [json.loads(line) for line in (tmp_path / LEDGER).read_bytes().splitlines()]
    assert entries[0]["evaluation"] == NOT_PRIVATE and not [e for e in entries if e["kind"] == "release"]
    doc = audit_document(tmp_path, prv_points=0)
    assert doc["evaluation"] == {"private": False, "statement": NOT_PRIVATE, "releases": [], "metrics": []}
    assert '<p id="evaluation" class="bad">evaluation not private (simulation)</p>' in render_html(doc)


def test_devices_release_every_evaluation_through_the_ledger(tiny_config, tmp_path: Path) -> None:
    _, history, test = run(tiny_config, DeviceFleet, tmp_path)  # eval-every 1, 2 rounds: val r1, val r2, test r2
    entries = [json.loads(line) for line in (tmp_path / LEDGER).read_bytes().splitlines()]
    releases = [e for e in entries if e["kind"] == "release"]
    assert entries[0]["evaluation"] == PRIVATE and entries[-1]["kind"] == "close"
    assert [r["purpose"] for r in releases] == [
        "evaluation: val metrics after round 1", "evaluation: val metrics after round 2", "evaluation: test metrics after round 2"]
    assert all(r["clipping_norm"] == math.sqrt(len(METRIC_NAMES)) and r["sample_rate"] == 1.0 for r in releases)
    report = audit_run(tmp_path)
    # z was calibrated to leave room for every planned evaluation: none was refused
    assert report.code == OK and report.releases == 3 and not history.stopped_by_budget
    assert set(test) == set(METRIC_NAMES) and all(math.isfinite(v) for v in test.values())
    doc = audit_document(tmp_path, prv_points=0)
    assert doc["evaluation"]["private"] is True and doc["evaluation"]["releases"] == [1, 2, 3]
    assert doc["epsilon"]["rounds_only"]["prv"] < doc["epsilon"]["prv"]


def test_a_run_whose_evaluation_would_exceed_the_budget_stops_before_releasing_it(tiny_config, tmp_path: Path) -> None:
    # z = 1 for training at q = 4/6; the evaluation's z = 0.3 costs more than the budget has left
    config = replace(tiny_config, privacy=replace(tiny_config.privacy, noise_multiplier=1.0, epsilon=6.0, eval_noise_multiplier=0.3))
    _, history, test = run(config, DeviceFleet, tmp_path)
    report = audit_run(tmp_path)
    assert report.code == OK and report.stopped_by_budget and history.stopped_by_budget
    assert report.releases == 0 and all(math.isnan(v) for v in test.values())
    assert report.epsilon_prv <= 6.0


def test_training_noise_leaves_room_for_the_planned_evaluations() -> None:
    from fedrec.privacy.eval_release import calibrate_with_evaluations, planned_evaluations

    assert planned_evaluations(rounds=10, eval_every=3) == 3 + 2 and planned_evaluations(rounds=10, eval_every=0) == 2
    kwargs = {"target_epsilon": 4.0, "delta": 1e-5, "sample_rate": 0.1, "rounds": 20, "accountant": "rdp"}
    z = calibrate_with_evaluations(**kwargs, eval_noise_multiplier=20.0, evaluations=5)
    releases = (20.0, 1.0, 5)
    assert epsilon(((z, 0.1, 20), releases), delta=1e-5, accountant="rdp") <= 0.99 * 4.0
    assert epsilon(((z * 0.97, 0.1, 20), releases), delta=1e-5, accountant="rdp") > 0.99 * 4.0  # not much more noise than needed
    with pytest.raises(PrivacyError, match="eval-noise-multiplier"):
        calibrate_with_evaluations(**kwargs, eval_noise_multiplier=0.2, evaluations=5)
