"""DP-FedAvg jobs (NeuMF, GMF) announce their plan as DP-EASE jobs do: the rounds as
(z, q, C, rounds) in the ledger's first entry, checked by the audit, composed by the
simulated devices' odometers across successive jobs of either family on one population;
a device that refuses is never trained, even when sampled, and the results count it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opacus.accountants import RDPAccountant

from fedrec.config import RunConfig, parse_run_config
from fedrec.engine.vectorised import run
from fedrec.errors import FedrecError
from fedrec.experiments.results import RESULTS
from fedrec.privacy.audit import OK, audit_run
from fedrec.privacy.device_odometers import NO_CONTRIBUTOR, SimulatedOdometers, dp_fedavg_releases
from fedrec.privacy.job_plan import JobPlan
from fedrec.privacy.ledger import LEDGER, read_entries
from fedrec.privacy.odometer import OdometerSettings
from fedrec.privacy.population import audit_population

USERS = 40


def _config(tmp_path: Path, **extra: Any) -> RunConfig:
    return parse_run_config({
        "model": "gmf", "dataset": "synthetic", "synthetic-users": USERS, "synthetic-items": 120,
        "synthetic-interactions": 10, "num-eval-negatives": 20, "seed": 3, "num-rounds": 3, "clients-per-round": 10,
        "eval-every": 0, "gmf-dim": 8, "epsilon": 5.5, "accountant": "rdp",
        "ledger-key": str(tmp_path / "keys" / "l.pem"), **extra,
    })


def _run(config: RunConfig, out: Path, odometers: SimulatedOdometers | None = None) -> dict[str, Any]:
    return json.loads(run(config, out, odometers=odometers).read_text())  # type: ignore[no-any-return]


def _rdp(steps: list[tuple[float, float, int]]) -> float:
    """Opacus' RDP accountant imported the ordinary way (independent of fedrec)."""
    accountant = RDPAccountant()
    accountant.history = steps
    return float(accountant.get_epsilon(delta=1e-5))


def _spent(run_dir: Path) -> list[tuple[float, float, int]]:
    entries = read_entries(run_dir / LEDGER).entries
    return [(e["noise_multiplier"], e["sample_rate"], e.get("steps", 1)) for e in entries if e["kind"] in ("round", "release")]


def test_a_dp_fedavg_ledger_announces_its_rounds_first_and_the_audit_checks_them(tmp_path: Path) -> None:
    config = _config(tmp_path)
    results = _run(config, tmp_path / "run")
    entries = read_entries(tmp_path / "run" / LEDGER).entries
    assert [e["kind"] for e in entries[:3]] == ["header", "plan", "round"]
    plan = JobPlan.from_json(entries[1]["plan"])
    plan.verify()
    assert plan.run_id == entries[0]["run_id"]
    assert plan.history() == ((results["noise_multiplier"], results["sample_rate"], 3),)
    assert plan.releases[0].clipping_norm == config.privacy.clipping_norm
    report = audit_run(tmp_path / "run")
    assert report.code == OK, report.problems
    assert report.planned_steps == 3 and results["devices_refused"] == 0
    assert results["epsilon"] == pytest.approx(_rdp([(results["noise_multiplier"], results["sample_rate"], 3)]))


def test_a_fixed_z_plan_announces_only_the_rounds_the_budget_allows() -> None:
    z, q = 0.9, 0.25
    fits = [n for n in range(1, 41) if _rdp([(z, q, n)]) <= 6.0]
    releases = dp_fedavg_releases(noise_multiplier=z, sample_rate=q, clipping_norm=1.0, rounds=40, evaluations=2,
                                  eval_noise_multiplier=20.0, eval_sensitivity=5 ** 0.5, budget=6.0, delta=1e-5,
                                  accountant="rdp")
    assert [(r.noise_multiplier, r.sample_rate, r.steps) for r in releases] == [(z, q, max(fits)), (20.0, 1.0, 2)]
    # no noise (epsilon inf): every round, which a device with a finite budget refuses
    releases = dp_fedavg_releases(noise_multiplier=0.0, sample_rate=q, clipping_norm=1.0, rounds=40, evaluations=0,
                                  eval_noise_multiplier=20.0, eval_sensitivity=1.0, budget=float("inf"), delta=1e-5,
                                  accountant="rdp")
    assert [(r.noise_multiplier, r.steps) for r in releases] == [(0.0, 40)]


def test_successive_jobs_of_both_families_compose_on_the_devices_until_they_refuse(tmp_path: Path) -> None:
    """device-epsilon 7.5 (RDP): a DP-EASE job at epsilon 3, then GMF jobs at epsilon 5.5
    (q = 0.25, 3 rounds); the devices' odometers compose them and refuse the job that
    would take them above 7.5; the population audit agrees with every device's account."""
    odometers = SimulatedOdometers(OdometerSettings(epsilon=7.5, delta=1e-5, accountant="rdp"), folder=tmp_path / "devices")
    ease = _config(tmp_path, model="dp-ease", epsilon=3.0)
    gmf = _config(tmp_path)
    done = [tmp_path / "ease", tmp_path / "gmf-1"]
    assert _run(ease, done[0], odometers)["devices_refused"] == 0
    first = _run(gmf, done[1], odometers)
    assert first["devices_refused"] == 0
    with pytest.raises(FedrecError, match=rf"no device took part: all {USERS} device\(s\) refused"):
        _run(gmf, tmp_path / "gmf-2", odometers)
    assert json.loads((tmp_path / "gmf-2" / NO_CONTRIBUTOR).read_text())["devices_refused"] == USERS
    assert not (tmp_path / "gmf-2" / RESULTS).exists()
    assert audit_run(tmp_path / "gmf-2").code == OK  # closed with nothing spent
    composed = _rdp(_spent(done[0]) + _spent(done[1]))
    assert composed <= 7.5 < _rdp(_spent(done[0]) + 2 * _spent(done[1]))
    population = audit_population([*done, tmp_path / "gmf-2"])
    assert population.code == OK, population.problems
    assert population.epsilon["rdp"] == pytest.approx(composed, rel=1e-9)
    for client in (0, 17, USERS - 1):
        device = odometers.odometer(client)
        status = device.status()
        assert device.intact and len(status["jobs"]) == 2 and len(status["refused"]) == 1
        assert device.epsilon() == pytest.approx(composed, rel=1e-9)  # the device's own account agrees
    # a device is recorded in the rounds it was sampled for, never in others
    rounds = {e["release"] for c in range(USERS) for e in odometers.odometer(c).entries if e["kind"] == "took_part"}
    assert {"round 1", "round 2", "round 3"} <= rounds


def test_a_device_that_refuses_is_never_trained_and_the_results_count_it(tmp_path: Path) -> None:
    odometers = SimulatedOdometers(OdometerSettings(epsilon=10.0, accountant="rdp"))
    small = SimulatedOdometers(OdometerSettings(epsilon=2.0, accountant="rdp"))
    refusing = (0, 1, 2, 3, 4)
    for client in refusing:  # five owners chose a budget below this job's epsilon
        odometers._odometers[client] = small.odometer(client)
    results = _run(_config(tmp_path, **{"clients-per-round": 30}), tmp_path / "run", odometers)
    assert results["devices_refused"] == len(refusing)
    for client in refusing:
        assert [e["kind"] for e in odometers.odometer(client).entries] == ["open", "refused"]
    log = results["round_log"]
    assert sum(r["refused"] for r in log) > 0  # sampled (q = 0.75), never asked
    assert all(r["aggregated"] == r["sampled"] - r["refused"] for r in log)
    rounds = [e for e in read_entries(tmp_path / "run" / LEDGER).entries if e["kind"] == "round"]
    assert [e["clients"] for e in rounds] == [int(r["aggregated"]) for r in log]
    assert audit_run(tmp_path / "run").code == OK


def test_a_resumed_job_announces_its_recorded_plan_again_and_is_charged_once(tmp_path: Path) -> None:
    odometers = SimulatedOdometers(OdometerSettings(epsilon=7.5, accountant="rdp"), folder=tmp_path / "devices")
    config = _config(tmp_path)

    def crash(round_: int, info: dict[str, float]) -> None:
        if round_ == 2:
            raise RuntimeError("the server died after round 2")

    with pytest.raises(RuntimeError):
        run(config, tmp_path / "run", crash, odometers=odometers)
    charged = odometers.odometer(5).epsilon()
    results = json.loads(run(config, tmp_path / "run", resume=True, odometers=odometers).read_text())
    assert results["devices_refused"] == 0 and results["rounds"] == 3
    plans = [e for e in read_entries(tmp_path / "run" / LEDGER).entries if e["kind"] == "plan"]
    assert len(plans) == 1  # the same signed plan, announced again
    device = odometers.odometer(5)
    assert len(device.status()["jobs"]) == 1 and device.epsilon() == pytest.approx(charged)
    assert audit_run(tmp_path / "run").code == OK


def test_simulate_gives_the_devices_odometers_and_refuses_a_job_without_a_plan(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedrec.cli import app

    sets = [a for k, v in {"model": "gmf", "dataset": "synthetic", "synthetic-users": USERS, "synthetic-items": 120,
                           "synthetic-interactions": 10, "num-eval-negatives": 20, "num-rounds": 2, "clients-per-round": 10, "eval-every": 0, "gmf-dim": 8, "epsilon": 3.0,
                           "ledger-key": str(tmp_path / "l.pem")}.items() for a in ("--set", f"{k}={v}")]
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", *sets, "--device-epsilon", "2", "--out", str(tmp_path / "run")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 2 and f"all {USERS} device(s) refused its plan" in result.output
    assert json.loads((tmp_path / "run" / NO_CONTRIBUTOR).read_text())["devices_refused"] == USERS
    result = runner.invoke(app, ["simulate", *sets, "--set", "dp=off", "--device-epsilon", "2", "--out", str(tmp_path / "off")])
    assert result.exit_code == 2 and "no privacy plan" in result.output
    result = runner.invoke(app, ["simulate", *sets, "--device-epsilon", "-1", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--device-epsilon must be a number >= 0" in result.output
