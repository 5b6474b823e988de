"""The device odometer: composition equal to Opacus' accountant on the concatenated plans,
refusal exactly of the jobs that would exceed the budget (property tests over random
plans), signed plans, and tampering (edit, delete, reorder, the last entry, the whole
file) detected at the next job until the owner repairs or resets the record."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from fedrec.deploy.pki import make_device_key
from fedrec.errors import PrivacyError
from fedrec.privacy.accountant import calibrate_releases
from fedrec.privacy.device_odometers import dp_ease_releases, dp_fedavg_releases
from fedrec.privacy.job_plan import JobPlan, PlanError, PlannedRelease, sign_plan, spent_within_plan
from fedrec.privacy.odometer import HEAD, ODOMETER, DeviceSigner, Odometer, OdometerSettings

SERVER_KEY = Ed25519PrivateKey.generate()


def _plan(releases: list[tuple[float, float, int]], *, key: Ed25519PrivateKey = SERVER_KEY, delta: float = 1e-5) -> JobPlan:
    return sign_plan(
        run_id=uuid.uuid4().hex, accountant="rdp", delta=delta, key=key,
        releases=[PlannedRelease(purpose=f"release {n}", noise_multiplier=z, sample_rate=q, clipping_norm=1.0, steps=s)
                  for n, (z, q, s) in enumerate(releases, start=1)],
    )


def _opacus(history: list[tuple[float, float, int]], *, delta: float, accountant: str) -> float:
    """Epsilon by Opacus' accountant, imported the ordinary way (independent of fedrec)."""
    if not history:
        return 0.0
    if accountant == "prv":
        acc = PRVAccountant()
        acc.history = list(history)
        return acc.get_epsilon(delta=delta, eps_error=0.01)
    acc = RDPAccountant()
    acc.history = list(history)
    return acc.get_epsilon(delta=delta)


release = st.tuples(
    st.floats(min_value=0.4, max_value=6.0), st.floats(min_value=0.01, max_value=1.0), st.integers(min_value=1, max_value=60),
)
plans = st.lists(st.lists(release, min_size=1, max_size=2), min_size=1, max_size=5)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jobs=plans, budget=st.floats(min_value=0.5, max_value=20.0))
def test_no_accepted_sequence_exceeds_the_budget_and_exactly_the_exceeding_jobs_are_refused(
    jobs: list[list[tuple[float, float, int]]], budget: float,
) -> None:
    odometer = Odometer(OdometerSettings(epsilon=budget, delta=1e-5, accountant="rdp"))
    accepted: list[tuple[float, float, int]] = []
    for releases in jobs:
        plan = _plan(releases)
        would_be = _opacus(accepted + list(plan.history()), delta=1e-5, accountant="rdp")
        decision = odometer.admit(plan)
        assert decision.accepted == (would_be <= budget)  # refused exactly when it would exceed
        if decision.accepted:
            accepted += list(plan.history())
        spent = _opacus(accepted, delta=1e-5, accountant="rdp")
        assert odometer.epsilon() == pytest.approx(spent, rel=1e-9, abs=1e-12)  # equals the accountant on the concatenation
        assert odometer.epsilon() <= budget  # no accepted sequence exceeds the budget
        assert decision.epsilon_after == pytest.approx(would_be, rel=1e-9, abs=1e-12)


def _signed(releases: list[PlannedRelease]) -> JobPlan:
    return sign_plan(run_id=uuid.uuid4().hex, accountant="rdp", delta=1e-5, key=SERVER_KEY, releases=releases)


# jobs as the runs plan them: DP-FedAvg's rounds (z 0 included: no noise, epsilon inf) with
# or without a private evaluation, and DP-EASE's two releases with or without one
fedavg_job = st.builds(
    lambda z, q, rounds, evaluations, budget: dp_fedavg_releases(
        noise_multiplier=z, sample_rate=q, clipping_norm=2.0, rounds=rounds, evaluations=evaluations,
        eval_noise_multiplier=20.0, eval_sensitivity=math.sqrt(5), budget=budget, delta=1e-5, accountant="rdp"),
    st.one_of(st.just(0.0), st.floats(min_value=0.3, max_value=5.0)), st.floats(min_value=0.005, max_value=1.0),
    st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=12),
    st.one_of(st.just(math.inf), st.floats(min_value=0.5, max_value=30.0)),
).filter(bool)
ease_job = st.builds(
    lambda z_counts, z_gram, evaluations: dp_ease_releases(
        z_counts=z_counts, z_gram=z_gram, clipping_norm=1.0, evaluations=evaluations, eval_noise_multiplier=20.0,
        eval_sensitivity=math.sqrt(5)),
    st.floats(min_value=0.3, max_value=8.0), st.floats(min_value=0.3, max_value=8.0), st.integers(min_value=0, max_value=2),
)


@settings(max_examples=25, deadline=None)
@given(jobs=st.lists(st.one_of(fedavg_job, ease_job), min_size=1, max_size=5), budget=st.floats(min_value=0.5, max_value=25.0))
def test_no_job_of_any_family_takes_a_device_above_its_budget(jobs: list[list[PlannedRelease]], budget: float) -> None:
    odometer = Odometer(OdometerSettings(epsilon=budget, delta=1e-5, accountant="rdp"))
    accepted: list[tuple[float, float, int]] = []
    for releases in jobs:
        plan = _signed(releases)
        history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in releases]
        noiseless = any(z == 0 for z, _, _ in history)
        would_be = math.inf if noiseless else _opacus(accepted + history, delta=1e-5, accountant="rdp")
        decision = odometer.admit(plan)
        assert decision.accepted == (would_be <= budget)  # refused exactly when it would exceed
        if decision.accepted:
            accepted += history
        assert odometer.epsilon() == pytest.approx(_opacus(accepted, delta=1e-5, accountant="rdp"), rel=1e-9, abs=1e-12)
        assert odometer.epsilon() <= budget


prv_release = st.tuples(
    st.floats(min_value=0.6, max_value=4.0), st.floats(min_value=0.1, max_value=1.0), st.integers(min_value=1, max_value=20),
)


@settings(max_examples=5, deadline=None)
@given(jobs=st.lists(st.lists(prv_release, min_size=1, max_size=2), min_size=1, max_size=3))
def test_the_prv_odometer_equals_prv_on_the_concatenated_history(jobs: list[list[tuple[float, float, int]]]) -> None:
    odometer = Odometer(OdometerSettings(epsilon=math.inf, delta=1e-6, accountant="prv"))
    for releases in jobs:
        assert odometer.admit(_plan(releases)).accepted
    concatenated = [step for releases in jobs for step in releases]
    assert odometer.epsilon() == pytest.approx(_opacus(concatenated, delta=1e-6, accountant="prv"), rel=1e-9)


def _job_at(target: float) -> list[tuple[float, float, int]]:
    """A DP-EASE-shaped job (two Gaussian releases, q = 1) whose PRV epsilon alone is ``target``."""
    return [(z, 1.0, 1) for z in calibrate_releases(target_epsilon=target, delta=1e-5, shares=[0.2, 0.8], accountant="prv")]


def test_jobs_compose_not_add_the_third_is_refused_exactly_when_the_composition_exceeds(tmp_path: Path) -> None:
    settings_ = OdometerSettings(epsilon=10.0, delta=1e-5, accountant="prv")
    # three jobs at epsilon 4 compose to about 7.6 (PRV), not 12: a device with budget 10 takes all three
    at_four = _job_at(4.0)
    assert _opacus(at_four * 3, delta=1e-5, accountant="prv") < 10.0
    odometer = Odometer(settings_)
    assert all(odometer.admit(_plan(at_four)).accepted for _ in range(3))
    # three jobs at epsilon 5.5: two compose to about 8.3, three to about 10.6
    job = _job_at(5.5)
    assert _opacus(job * 2, delta=1e-5, accountant="prv") <= 10.0 < _opacus(job * 3, delta=1e-5, accountant="prv")
    odometer = Odometer.beside(tmp_path, settings_)
    first, second, third = (odometer.admit(_plan(job)) for _ in range(3))
    assert first.accepted and second.accepted and not third.accepted
    assert "above its budget 10" in third.reason
    assert third.epsilon_after == pytest.approx(_opacus(job * 3, delta=1e-5, accountant="prv"), rel=1e-9)
    # the record survives a restart of the device process
    again = Odometer.beside(tmp_path, settings_)
    assert again.intact and again.epsilon() == pytest.approx(second.epsilon_after)
    assert again.status()["refused"] and len(again.status()["jobs"]) == 2


def test_the_same_plan_again_is_charged_once_and_a_forged_plan_is_refused(tmp_path: Path) -> None:
    odometer = Odometer.beside(tmp_path, OdometerSettings(epsilon=5.0))
    plan = _plan([(1.0, 0.2, 10)])
    assert odometer.admit(plan).accepted
    spent = odometer.epsilon()
    again = odometer.admit(plan)
    assert again.accepted and again.reason.startswith("already") and odometer.epsilon() == spent
    cheaper = JobPlan(**{**plan.__dict__, "releases": (PlannedRelease("x", 50.0, 0.2, 1.0, 10),)})
    forged = odometer.admit(cheaper)
    assert not forged.accepted and "not signed by its ledger key" in forged.reason
    other = Ed25519PrivateKey.generate()
    signed_by_other = JobPlan(**{**_plan([(1.0, 0.2, 10)], key=other).__dict__, "ledger_key": plan.ledger_key})
    assert not odometer.admit(signed_by_other).accepted
    odometer.took_part(plan.run_id, "round 1")
    with pytest.raises(PrivacyError):
        odometer.took_part("never-accepted", "round 1")


def _damage(path: Path, how: str) -> None:
    lines = path.read_text().splitlines()
    if how == "edit":
        entry = json.loads(lines[1])
        entry["plan"]["releases"][0]["noise_multiplier"] = 100.0
        lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    elif how == "delete":
        del lines[1]
    elif how == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    elif how == "delete last":
        del lines[-1]
    elif how == "delete file":
        path.unlink()
        return
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("how", ["edit", "delete", "reorder", "delete last", "delete file"])
def test_tampering_is_detected_at_the_next_job_until_repaired_or_reset(tmp_path: Path, how: str, signed: bool) -> None:
    key = make_device_key(tmp_path / "keys", "device-000").private if signed else None
    settings_ = OdometerSettings(epsilon=20.0, accountant="rdp")
    odometer = Odometer.beside(tmp_path, settings_, key=key)
    plans = [_plan([(1.0, 0.1, 20)]) for _ in range(3)]
    for plan in plans:
        assert odometer.admit(plan).accepted
    _damage(tmp_path / ODOMETER, how)
    damaged = Odometer.beside(tmp_path, settings_, key=key)
    assert not damaged.intact
    refused = damaged.admit(_plan([(5.0, 0.01, 1)]))
    assert not refused.accepted and "damaged" in refused.reason and "repair or reset" in refused.reason
    # still refused after a restart: the damage is in the file, not in memory
    assert not Odometer.beside(tmp_path, settings_, key=key).admit(_plan([(5.0, 0.01, 1)])).accepted
    with pytest.raises(PrivacyError):
        damaged.repair("   ")
    kept, dropped = damaged.repair("restored from the servers' signed plans")
    if how == "edit":
        assert (kept, dropped) == (2, 1)  # the edited plan's server signature no longer verifies
    repaired = Odometer.beside(tmp_path, settings_, key=key)
    assert repaired.intact and repaired.admit(_plan([(5.0, 0.01, 1)])).accepted
    assert repaired.status()["resets"][0]["note"] == "restored from the servers' signed plans"
    if how != "delete file":
        assert list(tmp_path.glob(f"{ODOMETER}.damaged-*"))  # the damaged record is kept beside
    repaired.reset("new phone, the owner starts over")
    fresh = Odometer.beside(tmp_path, settings_, key=key)
    assert fresh.intact and fresh.epsilon() == 0.0 and fresh.status()["resets"][0]["note"].startswith("new phone")


def test_a_record_rewritten_without_the_device_key_is_refused(tmp_path: Path) -> None:
    key = make_device_key(tmp_path / "keys", "device-000").private
    settings_ = OdometerSettings(epsilon=20.0, accountant="rdp")
    odometer = Odometer.beside(tmp_path, settings_, key=key)
    assert odometer.admit(_plan([(1.0, 0.1, 20)])).accepted
    (tmp_path / ODOMETER).unlink()
    (tmp_path / HEAD).unlink()
    Odometer.beside(tmp_path, settings_)  # someone without the key writes a fresh, unsigned record
    assert not Odometer.beside(tmp_path, settings_, key=key).intact
    assert DeviceSigner.load(key).fingerprint == odometer.signer.fingerprint  # type: ignore[union-attr]


def test_a_plan_is_checked_and_the_spent_steps_must_be_within_it() -> None:
    plan = _plan([(1.0, 0.1, 3), (4.0, 1.0, 1)])
    plan.verify()
    assert JobPlan.from_json(plan.encode()) == plan
    assert spent_within_plan(plan, [(1.0, 0.1), (4.0, 1.0), (1.0, 0.1)]) is None
    assert "spent 4 step(s)" in str(spent_within_plan(plan, [(1.0, 0.1)] * 4))
    assert spent_within_plan(plan, [(0.9, 0.1)]) is not None
    for bad in ({}, {**plan.to_json(), "delta": 2}, {**plan.to_json(), "releases": []},
                {**plan.to_json(), "releases": [{"purpose": "x", "noise_multiplier": 1, "sample_rate": 0, "clipping_norm": 1,
                                                 "steps": 1}]}):
        with pytest.raises(PlanError):
            JobPlan.from_json(bad)
    with pytest.raises(PrivacyError):
        OdometerSettings(epsilon=4.0, delta=0.0)
    assert OdometerSettings.from_config({"device-epsilon": "10", "device-delta": 1e-6}) == OdometerSettings(10.0, 1e-6)
    assert OdometerSettings.from_config({}) is None


def test_the_owner_sees_the_damage_and_repairs_it_from_the_command_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedrec.cli import app

    key = make_device_key(tmp_path / "keys", "device-000").private
    odometer = Odometer.beside(tmp_path, OdometerSettings(epsilon=20.0, accountant="rdp"), key=key)
    for _ in range(2):
        assert odometer.admit(_plan([(1.0, 0.1, 20)])).accepted
    args = ["odometer", "--device-dir", str(tmp_path), "--device-epsilon", "20", "--device-accountant", "rdp",
            "--key", str(key)]
    intact = CliRunner().invoke(app, [*args, "--json"])
    assert intact.exit_code == 0 and json.loads(intact.stdout)["epsilon"] == pytest.approx(odometer.epsilon())
    _damage(tmp_path / ODOMETER, "reorder")
    damaged = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert damaged.exit_code == 3 and "damaged" in damaged.stdout and "hash chain is broken" in damaged.stdout
    repaired = CliRunner().invoke(app, [*args, "--repair", "restored after a bad sync"], env={"COLUMNS": "200"})
    assert repaired.exit_code == 0 and "2 job(s) kept, 0 dropped" in repaired.stdout
    assert "reset by the owner: restored after a bad sync" in repaired.stdout
