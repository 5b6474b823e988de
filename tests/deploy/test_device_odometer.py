"""Real devices' odometers over Flower's Grid, in one process (the real ClientApp answers
the messages, ``tests.deploy.test_secagg.InlineGrid``): the server announces each job's
signed plan, each device accepts or refuses it against its own budget kept beside its
key and data, answers nothing on a job it did not accept, and still recommends once its
budget is spent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.config import parse_run_config
from fedrec.data import Interactions
from fedrec.deploy.device import DeviceFiles, DeviceState, save_state
from fedrec.deploy.fleet import split_fleet
from fedrec.deploy.odometer import device_odometer
from fedrec.deploy.pki import make_device_key
from fedrec.deploy.recommend import recommend
from fedrec.dpease.report import run_ease_and_report
from fedrec.errors import FedrecError
from fedrec.privacy.audit import OK, audit_run
from fedrec.privacy.odometer import ODOMETER, OdometerSettings
from fedrec.privacy.population import audit_population
from server.statistics import GridStatistics
from tests.deploy.test_secagg import InlineGrid
from tests.dpease.test_flower import fleet_catalog

DEVICES = 3


pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture()
def nodes(ml100k: Interactions, tmp_path: Path) -> dict[int, dict[str, Any]]:
    devices = split_fleet(ml100k, tmp_path / "devices", devices=DEVICES, rating_threshold=0.0, rng=np.random.default_rng(3))
    out = {}
    for k, device in enumerate(devices):
        save_state(DeviceFiles.beside(device.data_path), DeviceState(device_seed=100 + k))
        key = make_device_key(device.folder, f"device-{k}")  # the device's key beside its data
        out[10 + k] = {"data-path": str(device.data_path), "device-epsilon": 10.0, "device-delta": 1e-5,
                       "device-key": str(key.private)}
    return out


def test_two_jobs_run_the_third_gets_no_contributor_and_recommend_still_works(
    nodes: dict[int, dict[str, Any]], tmp_path: Path,
) -> None:
    # jobs at epsilon 5.5 (calibrated with their private evaluations): two compose to
    # about 8.3, a third would take every device above its device-epsilon of 10
    config = parse_run_config({"model": "dp-ease", "seed": 2, "clipping-norm": 0.5, "epsilon": 5.5,
                               "ledger-key": str(tmp_path / "k.pem")})
    runs = []
    for job in (1, 2):
        grid = GridStatistics(InlineGrid(nodes), config, n_items=1682, expected_nodes=DEVICES, patience=1,
                              client_order=False, private_evaluation=True)
        results = run_ease_and_report(config, tmp_path / f"job-{job}", engine="flower-deployment", transport=grid,
                                      catalog=fleet_catalog(nodes))
        assert results["devices_refused"] == 0 and audit_run(tmp_path / f"job-{job}").code == OK
        runs.append(tmp_path / f"job-{job}")
    inline = InlineGrid(nodes)
    grid = GridStatistics(inline, config, n_items=1682, expected_nodes=DEVICES, patience=1, client_order=False,
                          private_evaluation=True)
    with pytest.raises(FedrecError, match=rf"no device took part: all {DEVICES} device\(s\) refused"):
        run_ease_and_report(config, tmp_path / "job-3", engine="flower-deployment", transport=grid,
                                      catalog=fleet_catalog(nodes))
    assert {r.metadata.message_type for r in inline.sent} == {"query.plan"}  # nothing else was asked
    population = audit_population([*runs, tmp_path / "job-3"])
    assert population.code == OK and population.epsilon["prv"] <= 10.0
    for cfg in nodes.values():
        folder = Path(cfg["data-path"]).parent
        assert (folder / ODOMETER).is_file()
        odometer = device_odometer(cfg, cfg["data-path"])  # a restarted device process reads it back
        assert odometer is not None and odometer.intact
        assert odometer.settings == OdometerSettings(10.0, 1e-5)
        assert odometer.epsilon() == pytest.approx(population.epsilon["prv"], rel=1e-9)
        status = odometer.status()
        assert len(status["jobs"]) == 2 and len(status["refused"]) == 1
        # scoring needs no new release: the spent budget does not stop recommendations
        assert len(recommend(folder, k=5).items) == 5


def test_a_device_answers_nothing_on_a_job_whose_plan_it_did_not_accept(
    nodes: dict[int, dict[str, Any]], tmp_path: Path,
) -> None:
    config = parse_run_config({"model": "dp-ease", "seed": 2, "clipping-norm": 0.5, "epsilon": 4.0,
                               "ledger-key": str(tmp_path / "k.pem")})
    grid = GridStatistics(InlineGrid(nodes), config, n_items=1682, expected_nodes=DEVICES, patience=1, client_order=False)
    # a server that skips the announcement: every device refuses the request
    replies = list(grid.statistics(grid.clients(), "counts", {}))
    assert replies == [None] * DEVICES
    # devices without a budget of their own (no device-epsilon) accept any validly signed plan
    plain = {n: {"data-path": c["data-path"]} for n, c in nodes.items()}
    grid = GridStatistics(InlineGrid(plain), config, n_items=1682, expected_nodes=DEVICES, patience=1, client_order=False)
    results = run_ease_and_report(config, tmp_path / "run", engine="flower-deployment", transport=grid,
                                      catalog=fleet_catalog(nodes))
    assert results["devices_refused"] == 0


def test_dp_fedavg_jobs_announce_their_rounds_and_the_devices_compose_them(
    nodes: dict[int, dict[str, Any]], tmp_path: Path,
) -> None:
    """GMF jobs at epsilon 5.5 (every device in both rounds, q = 1, and the two metric
    releases of their private evaluation): the devices accept the first two (about 8.3
    composed), refuse the third, and are asked nothing on it."""
    from fedrec.experiments.run import run_and_report
    from server.transport import GridTransport

    config = parse_run_config({"model": "gmf", "gmf-dim": 4, "seed": 2, "num-rounds": 2, "clients-per-round": DEVICES,
                               "eval-every": 0, "epsilon": 5.5, "ledger-key": str(tmp_path / "k.pem")})
    runs = []
    for job in (1, 2):
        grid = GridTransport(InlineGrid(nodes), config, expected_nodes=DEVICES, patience=1, client_order=False,
                             private_evaluation=True)
        results = run_and_report(config, grid, out_dir=tmp_path / f"job-{job}", engine="flower-deployment", n_items=1682)
        assert results["devices_refused"] == 0 and results["rounds"] == 2
        report = audit_run(tmp_path / f"job-{job}")
        assert report.code == OK and report.planned_steps == 4  # two rounds, two metric releases
        runs.append(tmp_path / f"job-{job}")
    inline = InlineGrid(nodes)
    grid = GridTransport(inline, config, expected_nodes=DEVICES, patience=1, client_order=False, private_evaluation=True)
    with pytest.raises(FedrecError, match=rf"no device took part: all {DEVICES} device\(s\) refused"):
        run_and_report(config, grid, out_dir=tmp_path / "job-3", engine="flower-deployment", n_items=1682)
    assert {r.metadata.message_type for r in inline.sent} == {"query.plan"}  # nothing else was asked
    population = audit_population([*runs, tmp_path / "job-3"])
    assert population.code == OK and population.epsilon["prv"] <= 10.0
    for cfg in nodes.values():
        odometer = device_odometer(cfg, cfg["data-path"])  # a restarted device process reads it back
        assert odometer is not None and odometer.intact
        assert odometer.epsilon() == pytest.approx(population.epsilon["prv"], rel=1e-9)
        status = odometer.status()
        assert len(status["jobs"]) == 2 and len(status["refused"]) == 1
        took = {e["release"] for e in odometer.entries if e["kind"] == "took_part"}
        assert {"train 1", "train 2", "evaluate 2"} <= took
