"""`fedrec plan`: its numbers are the ones the run computes, its epsilon is the one the
ledger records, defaults never exceed the budget, and it writes nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import parse_run_config
from fedrec.dpease.fit import noise_edge, signal_directions
from fedrec.dpease.report import run_ease_and_report
from fedrec.dpease.run import phase_noise
from fedrec.experiments.plan import PREVIEW, PUBLIC, plan_run, predicted_ratio, retained_structure, spike_detectable
from fedrec.federation.device import simulated_population
from fedrec.models import shared_spec
from fedrec.privacy.accountant import calibrate_noise, epsilon
from fedrec.privacy.audit import OK, audit_run
from fedrec.privacy.ledger import LEDGER, read_entries

EXAMPLE = Path(__file__).resolve().parent / "data" / "example"
runner = CliRunner()


def _example(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": "dp-ease", "dataset": "ratings.csv", "data-dir": str(EXAMPLE), "item-file": "books.csv",
        "rating-threshold": 3.5, "num-eval-negatives": 20, "ledger-key": str(tmp_path / "keys" / "ledger.pem"), **extra,
    }


def test_dp_ease_numbers_are_phase_noise_and_the_accountant() -> None:
    config = parse_run_config({"model": "dp-ease", "epsilon": 2.0, "clipping-norm": 3.0})
    plan = plan_run(config, users=500, items=800)
    z1, z2 = phase_noise(config)
    counts, gram = plan.releases
    assert (counts.noise_multiplier, gram.noise_multiplier) == (z1, z2)
    assert plan.epsilon == epsilon(((z1, 1.0, 1), (z2, 1.0, 1)), delta=1e-5, accountant="prv")
    assert plan.epsilon_rdp == epsilon(((z1, 1.0, 1), (z2, 1.0, 1)), delta=1e-5, accountant="rdp")
    assert counts.values == 800 and gram.values == 800 * 801 // 2  # K capped by the catalogue (max-items 1500)
    assert counts.noise_std == pytest.approx(3.0 * z1)
    assert counts.noise_norm == pytest.approx(math.sqrt(800) * 3.0 * z1)
    assert counts.signal_bound == pytest.approx(500 * 3.0)
    assert counts.noise_to_signal_bound == pytest.approx(math.sqrt(800) * z1 / 500)
    assert plan.source == PUBLIC and plan.top_items is None


def test_neural_numbers_are_the_calibration_of_q_and_rounds() -> None:
    config = parse_run_config({"model": "neumf", "epsilon": 4.0, "clients-per-round": 50, "num-rounds": 30})
    plan = plan_run(config, users=1000, items=300)
    (rounds,) = plan.releases
    z = calibrate_noise(target_epsilon=4.0, delta=1e-5, sample_rate=0.05, rounds=30, accountant="prv")
    assert (rounds.noise_multiplier, rounds.sample_rate, rounds.steps) == (z, 0.05, 30)
    assert plan.epsilon == epsilon(((z, 0.05, 30),), delta=1e-5, accountant="prv")
    d = sum(int(np.prod(s)) for s in shared_spec(config.model.build(300)).values())
    assert rounds.values == d and rounds.signal_bound == pytest.approx(50 * 2.0)
    assert rounds.noise_to_signal_bound == pytest.approx(math.sqrt(d) * z * 2.0 / 100)
    assert ("mostly noise" in plan.verdict) == (rounds.noise_to_signal_bound >= 1)


def test_planned_epsilon_and_noise_are_what_the_run_records(tmp_path: Path) -> None:
    config = parse_run_config(_example(tmp_path, epsilon=4.0))
    plan = plan_run(config, split=simulated_population(config).split)
    assert plan.source == PREVIEW and plan.population == 200 and plan.items == 300
    results = run_ease_and_report(config, tmp_path / "run", engine="inprocess")
    assert results["epsilon"] == plan.epsilon
    assert results["noise_multipliers"] == [r.noise_multiplier for r in plan.releases]
    report = audit_run(tmp_path / "run")
    assert report.code == OK and report.epsilon_prv == pytest.approx(plan.epsilon, rel=1e-9)
    recorded = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in read_entries(tmp_path / "run" / LEDGER).entries
                if e.get("kind") == "release"]
    assert tuple(recorded) == plan.history


@pytest.mark.parametrize("model", ["dp-ease", "neumf"])
@pytest.mark.parametrize("users", [40, 943, 50_000])
def test_defaults_for_a_new_population_never_exceed_the_budget(model: str, users: int) -> None:
    for target in (0.5, 2.0, 8.0):
        plan = plan_run(parse_run_config({"model": model, "epsilon": target}), users=users, items=2000)
        assert plan.epsilon <= target
        assert plan.epsilon > 0.9 * target  # and the budget is used, not wasted


def test_spike_prediction_agrees_with_the_noise_edge_rule() -> None:
    """A rank-one Gram with a spike well above (below) sigma sqrt(K) keeps (loses) its
    direction under symmetric noise, as fit.signal_directions sees it."""
    rng = np.random.default_rng(0)
    k, sigma = 300, 1.0
    v = rng.normal(size=k)
    v /= np.linalg.norm(v)
    for theta, expected in ((2.0 * sigma * math.sqrt(k), True), (0.7 * sigma * math.sqrt(k), False)):
        assert bool(spike_detectable(np.array([theta]), noise_std=sigma, k=k)[0]) is expected
        noise = rng.normal(0.0, sigma, size=(k, k))
        noisy = theta * np.outer(v, v) + np.triu(noise) + np.triu(noise, 1).T
        assert (signal_directions(noisy, noise_std=sigma) > 0) is expected
        assert bool(np.linalg.eigvalsh(noisy)[-1] > noise_edge(sigma, k)) is expected


def test_a_tiny_population_falls_back_to_the_prior() -> None:
    plan = plan_run(parse_run_config({"model": "dp-ease", "epsilon": 0.5}), users=5, items=100)
    assert plan.top_items_bound == 0 and "falls back to the DP popularity prior" in plan.verdict


def test_no_dp_plan_is_infinite_and_json_stays_plain() -> None:
    plan = plan_run(parse_run_config({"model": "dp-ease", "dp": "off"}), users=100, items=50)
    assert math.isinf(plan.epsilon) and plan.verdict.startswith("no DP")
    doc = json.loads(json.dumps(plan.to_json(), allow_nan=False))
    assert doc["epsilon"] is None


def test_cli_plan_spends_nothing_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = runner.invoke(app, ["plan", "--users", "943", "--items", "1682", "--set", "model=dp-ease", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["population"] == 943 and doc["source"] == PUBLIC and len(doc["releases"]) == 2
    args = ["plan", "--data", str(EXAMPLE), "--set", "dataset=ratings.csv", "--set", "item-file=books.csv",
            "--set", "model=dp-ease", "--set", "epsilon=4"]
    result = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "verdict:" in result.output and "non-private preview" in result.output
    assert list(tmp_path.iterdir()) == []  # no ledger, no key, no results
    bad = runner.invoke(app, ["plan", "--users", "10"])
    assert bad.exit_code == 2 and "--items" in bad.output


def test_plan_table_is_readable_at_80_columns() -> None:
    from rich.console import Console

    from fedrec.cli import _plan_tables
    from fedrec.config import parse_run_config
    from fedrec.experiments.plan import plan_run

    console = Console(width=80, record=True, color_system=None)
    console.print(_plan_tables(plan_run(parse_run_config({"model": "dp-ease"}), users=943, items=1682)))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for label in ("noise multiplier z", "sample rate q", "noise std zC", "signal bound nC", "noise/signal >= (bound)",
                  "entry SNR", "item counts"):
        assert label in text


def test_plan_says_the_evaluations_noise_and_the_devices_it_needs_for_a_hundredth() -> None:
    # the demo's settings: 10 devices, 5 rounds, eval-every 0 -> the final validation and test releases
    demo = {"model": "neumf", "clients-per-round": 10, "num-rounds": 5, "eval-every": 0, "epsilon": 50.0, "accountant": "rdp"}
    plan = plan_run(parse_run_config(demo), users=10, items=300)
    ev = plan.evaluation
    assert ev is not None and (ev.releases, ev.metrics, ev.noise_multiplier, ev.devices) == (2, 5, 20.0, 10)
    assert ev.noise_std == pytest.approx(20 * math.sqrt(5) / 10) and not ev.informative
    assert ev.devices_for_target == 4473  # ceil(20 sqrt(5) / 0.01)
    assert ev.epsilon_alone == epsilon(((20.0, 1.0, 2),), delta=1e-5, accountant="rdp")
    assert any("sigma 0.01 needs at least 4473 devices" in note and "not informative" in note for note in plan.notes)
    # eval-every 2 over 5 rounds: rounds 2 and 4, then the final validation and test; eval-users asks 5000 of 9000
    many = plan_run(parse_run_config({**demo, "eval-every": 2, "eval-users": 5000, "eval-noise-multiplier": 5.0}),
                    users=9000, items=300)
    assert many.evaluation is not None and (many.evaluation.releases, many.evaluation.devices) == (4, 5000)
    assert many.evaluation.informative and many.evaluation.devices_for_target == 1119  # ceil(5 sqrt(5) / 0.01)
    ease = plan_run(parse_run_config({"model": "dp-ease", "epsilon": 8.0}), users=943, items=300)
    assert ease.evaluation is not None and ease.evaluation.releases == 2
    doc = json.loads(json.dumps(ease.to_json(), allow_nan=False))
    assert doc["evaluation"]["devices_for_target"] == 4473 and doc["evaluation"]["noise_std"] == pytest.approx(20 * math.sqrt(5) / 943)
    assert plan_run(parse_run_config({"model": "dp-ease", "dp": "off"}), users=100, items=50).evaluation is None


def test_predicted_ratio_on_hand_computed_spectra() -> None:
    # the largest eigenvalue (10, popularity) is left out; bar = noise^2 k = 1 * 4 = 4:
    # 3^2 = 9 keeps 9 - 4 = 5, 1^2 = 1 keeps nothing; energy 9 + 1 = 10 -> retained 0.5
    theta = np.array([1.0, 10.0, 3.0])
    assert retained_structure(theta, noise_std=1.0, k=4) == pytest.approx(0.5)
    assert predicted_ratio(theta, noise_std=1.0, k=4, floor=0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    # noise 0.5, k 4: bar 1; 9 -> 8, 1 -> 0 (not above the bar): 0.8
    assert retained_structure(theta, noise_std=0.5, k=4) == pytest.approx(0.8)
    assert predicted_ratio(theta, noise_std=0.0, k=4, floor=0.3) == 1.0  # no noise: the noiseless model
    assert predicted_ratio(theta, noise_std=10.0, k=4, floor=0.3) == pytest.approx(0.3)  # all lost: popularity's share
    assert retained_structure(np.array([5.0]), noise_std=1.0, k=4) == 0.0  # popularity alone: no structure beyond it


def test_a_data_plan_says_how_much_structure_the_noise_keeps(tmp_path: Path) -> None:
    config = parse_run_config({"model": "dp-ease", "dataset": "synthetic", "synthetic-users": 400, "synthetic-items": 200,
                               "synthetic-interactions": 12, "epsilon": 8.0})
    split = simulated_population(config).split
    plan = plan_run(config, split=split)
    assert plan.retained_structure is not None and 0.0 <= plan.retained_structure <= 1.0
    assert any("structure beyond popularity" in note for note in plan.notes)
