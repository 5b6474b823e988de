"""A job's signed plan in its ledger: recorded before any release, checked by the audit
(never more spent than announced; old ledgers without a plan still audit), and simulated
devices with odometers across successive DP-EASE jobs on one population: refusals are
dropouts, a job no device accepts says so, and the population audit composes the jobs
that ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus.accountants import PRVAccountant

from fedrec.config import RunConfig, parse_run_config
from fedrec.deploy.catalog import run_catalog
from fedrec.dpease.run import InProcessStatistics, run_dp_ease
from fedrec.errors import FedrecError, PrivacyError
from fedrec.federation.device import simulated_population
from fedrec.privacy.audit import OK, OVER_BUDGET, TAMPERED, audit_run
from fedrec.privacy.device_odometers import OdometerTransport, SimulatedOdometers
from fedrec.privacy.job_plan import JobPlan, PlannedRelease, announce_plan
from fedrec.privacy.ledger import LEDGER, read_entries
from fedrec.privacy.odometer import OdometerSettings
from fedrec.privacy.population import audit_population
from fedrec.privacy.session import PrivacySession


def _config(tmp_path: Path, **extra: Any) -> RunConfig:
    return parse_run_config({
        "model": "dp-ease", "dataset": "synthetic", "synthetic-users": 40, "synthetic-items": 120,
        "synthetic-interactions": 10, "num-eval-negatives": 20, "seed": 3, "ledger-key": str(tmp_path / "keys" / "l.pem"),
        **extra,
    })


def test_a_dp_ease_ledger_announces_its_plan_first_and_the_audit_checks_it(tmp_path: Path) -> None:
    config = _config(tmp_path, epsilon=4.0)
    split = simulated_population(config).split
    _, history, _, _ = run_dp_ease(config, InProcessStatistics(split, clipping_norm=1.0),
                                   catalog=run_catalog(config), run_dir=tmp_path / "run")
    entries = read_entries(tmp_path / "run" / LEDGER).entries
    assert [e["kind"] for e in entries[:4]] == ["header", "plan", "release", "release"]
    plan = JobPlan.from_json(entries[1]["plan"])
    plan.verify()
    assert plan.run_id == entries[0]["run_id"]
    assert [r.noise_multiplier for r in plan.releases] == list(history.noise_multipliers)
    report = audit_run(tmp_path / "run")
    assert report.code == OK, report.problems
    assert report.planned_steps == 2 and history.privacy["devices_refused"] == 0


def _session(run_dir: Path, key: Ed25519PrivateKey) -> PrivacySession:
    return PrivacySession(run_dir=run_dir, key=key, accountant="rdp", delta=1e-5, budget=20.0, population=10,
                          sample_rate=0.5, noise_multiplier=1.0, clipping_norm=1.0, config_hash="d" * 64)


def test_spending_beyond_the_plan_fails_the_audit_and_a_forged_plan_is_tampering(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    session = _session(tmp_path / "beyond", key)
    announce_plan(session, [PlannedRelease("rounds", 1.0, 0.5, 1.0, 2)])
    for n in (1, 2):
        session.record_round(n, clients=5)
    assert not session.allows_next_round()  # the session spends nothing beyond its plan ...
    with pytest.raises(PrivacyError, match="beyond the job's announced plan"):
        session.record_round(3, clients=5)
    session.planned = None  # ... a server that ignores it writes a third round, two announced
    session.record_round(3, clients=5)
    session.close(stopped_by_budget=False)
    report = audit_run(tmp_path / "beyond")
    assert report.code == OVER_BUDGET and "beyond the announced plan" in report.problems[0]
    # a plan signed by another key than the ledger's (the entry itself is signed by the ledger key)
    session = _session(tmp_path / "forged", key)
    other = _session(tmp_path / "other", Ed25519PrivateKey.generate())
    foreign = announce_plan(other, [PlannedRelease("rounds", 1.0, 0.5, 1.0, 5)])
    session.writer.append({"kind": "plan", "plan": foreign.to_json()})
    session.record_round(1, clients=5)
    session.close(stopped_by_budget=False)
    assert audit_run(tmp_path / "forged").code == TAMPERED
    # once, before any release
    with pytest.raises(FedrecError):
        announce_plan(session, [PlannedRelease("rounds", 1.0, 0.5, 1.0, 5)])


def test_successive_jobs_on_one_population_until_the_devices_budgets_refuse(tmp_path: Path) -> None:
    """device-epsilon 10; jobs at epsilon 5.5 (two compose to about 8.3, three to 10.6):
    the first two run, the third gets no contributor and says so; the population audit
    composes the first two as the accountant does on their concatenated ledgers."""
    odometers = SimulatedOdometers(OdometerSettings(epsilon=10.0, delta=1e-5), folder=tmp_path / "devices")
    config = _config(tmp_path, epsilon=5.5)
    split = simulated_population(config).split
    runs = []
    for job in (1, 2):
        transport = OdometerTransport(InProcessStatistics(split, clipping_norm=1.0), odometers)
        _, history, _, _ = run_dp_ease(config, transport, catalog=run_catalog(config), run_dir=tmp_path / f"job-{job}")
        assert history.privacy["devices_refused"] == 0
        runs.append(tmp_path / f"job-{job}")
    transport = OdometerTransport(InProcessStatistics(split, clipping_norm=1.0), odometers)
    with pytest.raises(FedrecError, match=r"no device took part: all 40 device\(s\) refused"):
        run_dp_ease(config, transport, catalog=run_catalog(config), run_dir=tmp_path / "job-3")
    third = audit_run(tmp_path / "job-3")
    assert third.code == OK and (third.rounds, third.releases, third.closed) == (0, 0, True)
    # every device's record survives (a file per device) and says the same
    device = odometers.odometer(7)
    assert device.intact and len(device.status()["jobs"]) == 2 and len(device.status()["refused"]) == 1
    assert {e["release"] for e in device.entries if e["kind"] == "took_part"} == {"counts", "gram"}
    population = audit_population([*runs, tmp_path / "job-3"])
    assert population.code == OK, population.problems
    steps = []
    for run in runs:
        steps += [(e["noise_multiplier"], e["sample_rate"], e["steps"])
                  for e in map(json.loads, (run / LEDGER).read_text().splitlines()) if e["kind"] == "release"]
    direct = PRVAccountant()
    direct.history = steps
    composed = direct.get_epsilon(delta=1e-5, eps_error=0.01)
    assert population.epsilon["prv"] == pytest.approx(composed, rel=1e-9)
    assert population.epsilon["prv"] == pytest.approx(device.epsilon(), rel=1e-9)  # the device's own account agrees
    assert population.epsilon["prv"] <= 10.0 < 2 * 5.5


def test_a_device_with_a_smaller_budget_is_a_dropout_and_results_count_it(tmp_path: Path) -> None:
    config = _config(tmp_path, epsilon=3.0)
    split = simulated_population(config).split
    odometers = SimulatedOdometers(OdometerSettings(epsilon=10.0))
    for client in (0, 1, 2):  # three owners chose a budget below this job's epsilon
        odometers._odometers[client] = SimulatedOdometers(OdometerSettings(epsilon=2.0)).odometer(client)
    transport = OdometerTransport(InProcessStatistics(split, clipping_norm=1.0), odometers)
    _, history, _, _ = run_dp_ease(config, transport, catalog=run_catalog(config), run_dir=tmp_path / "run")
    assert history.privacy["devices_refused"] == 3
    releases = [e for e in read_entries(tmp_path / "run" / LEDGER).entries if e.get("kind") == "release"]
    assert all(e["clients"] <= 37 for e in releases)
    assert audit_run(tmp_path / "run").code == OK


def test_a_restarted_job_is_charged_again_and_refused_when_it_would_exceed(tmp_path: Path) -> None:
    """A job that dies after its first release was charged its whole plan when the
    devices accepted it; its restart is a new plan, charged again: at epsilon 5.5 with
    device-epsilon 10 the first restart fits (about 8.3), the second does not."""
    odometers = SimulatedOdometers(OdometerSettings(epsilon=10.0, delta=1e-5), folder=tmp_path / "devices")
    config = _config(tmp_path, epsilon=5.5)
    split = simulated_population(config).split

    def crash(number: int, info: dict[str, float]) -> None:
        raise RuntimeError("the server died after the first release")

    with pytest.raises(RuntimeError):
        run_dp_ease(config, OdometerTransport(InProcessStatistics(split, clipping_norm=1.0), odometers),
                    catalog=run_catalog(config), run_dir=tmp_path / "crashed", on_phase=crash)
    run_dp_ease(config, OdometerTransport(InProcessStatistics(split, clipping_norm=1.0), odometers),
                catalog=run_catalog(config), run_dir=tmp_path / "restart")
    with pytest.raises(FedrecError, match="no device took part"):
        run_dp_ease(config, OdometerTransport(InProcessStatistics(split, clipping_norm=1.0), odometers),
                    catalog=run_catalog(config), run_dir=tmp_path / "restart-2")
    device = odometers.odometer(0)
    assert len(device.status()["jobs"]) == 2 and len(device.status()["refused"]) == 1
    # the population audit counts what was spent: the crashed job's first release, then the restart's two
    population = audit_population([tmp_path / "crashed", tmp_path / "restart", tmp_path / "restart-2"])
    assert population.code == OK
    assert [sum(n for _, _, n in r.history) for r in population.runs] == [1, 2, 0]
    assert population.epsilon["prv"] <= device.epsilon() <= 10.0  # the devices charged the whole plans
