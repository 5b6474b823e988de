"""Real processes on localhost: a fleet of devices (3 here; `python3 -m server.demo --jobs 3`
runs the same with 10), each with its own budget
(device-epsilon 10) in the odometer beside its key and data, runs three successive
DP-EASE jobs at epsilon 5.5 (two compose to about 8.3, three would reach 10.6): the
first two run, the third gets no contributor and says so, and the population audit
composes the first two. Slow (minutes): every message starts a ClientApp process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from opacus.accountants import PRVAccountant

from fedrec.privacy.ledger import LEDGER
from fedrec.privacy.odometer import ODOMETER
from server.demo import run_jobs

DEVICES = 3  # every message starts a ClientApp process: a few devices keep the test to minutes

pytestmark = pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's CLIs are not installed")


def test_three_jobs_against_one_fleet_the_third_gets_no_contributor(data_dir: Path, tmp_path: Path) -> None:
    summary = run_jobs(tmp_path / "jobs", devices=DEVICES, jobs=3, job_epsilon=5.5, device_epsilon=10.0,
                       data_dir=str(data_dir), timeout=900)
    first, second, third = summary["jobs"]
    assert (first["status"], second["status"], third["status"]) == ("ran", "ran", "no contributor")
    assert first["devices_refused"] == second["devices_refused"] == 0
    assert third["devices_refused"] == DEVICES and third["contributors"] == 0
    assert summary["population_audit_exit_code"] == 0
    steps = []
    for job in ("job-1", "job-2"):
        for line in (tmp_path / "jobs" / job / LEDGER).read_text().splitlines():
            entry = json.loads(line)
            if entry["kind"] == "release":
                steps.append((entry["noise_multiplier"], entry["sample_rate"], entry["steps"]))
    direct = PRVAccountant()
    direct.history = steps
    composed = direct.get_epsilon(delta=1e-5, eps_error=0.01)
    assert summary["population_epsilon"]["prv"] == pytest.approx(composed, rel=1e-9)
    assert composed <= 10.0
    odometers = list((tmp_path / "jobs" / "devices").glob(f"*/{ODOMETER}"))
    assert len(odometers) == DEVICES


def test_a_gmf_job_announces_its_rounds_to_the_fleet_and_a_second_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """GMF jobs at epsilon 5.5 (two rounds of every device and two metric releases) against
    devices with device-epsilon 6: the first runs, the second would take them to about
    8.3 and gets no contributor; each device's odometer holds the first job's plan and
    the rounds it trained in."""
    summary = run_jobs(tmp_path / "jobs", devices=DEVICES, jobs=2, job_epsilon=5.5, device_epsilon=6.0,
                       data_dir=str(data_dir), timeout=900,
                       overrides={"model": "gmf", "gmf-dim": 4, "num-rounds": 2, "clients-per-round": DEVICES,
                                  "eval-every": 0})
    first, second = summary["jobs"]
    assert (first["status"], second["status"]) == ("ran", "no contributor")
    assert first["devices_refused"] == 0 and second["devices_refused"] == DEVICES
    assert summary["population_audit_exit_code"] == 0
    assert summary["population_epsilon"]["prv"] == pytest.approx(first["epsilon"], rel=1e-9)
    for path in (tmp_path / "jobs" / "devices").glob(f"*/{ODOMETER}"):
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        assert [e["kind"] for e in entries].count("job") == 1 and [e["kind"] for e in entries].count("refused") == 1
        assert {"train 1", "train 2"} <= {e["release"] for e in entries if e["kind"] == "took_part"}
