"""Real processes on 127.0.0.1: a SuperLink with TLS and device authentication, real
SuperNodes, ``flwr run``. One fleet serves every test here (starting Flower processes
costs tens of seconds on a 2-core machine); everything is stopped afterwards.

The fleet: two good devices, one device with a malformed data file (all three with
registered keys), one device whose key was never registered, one device that
speaks plain text to the TLS server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.data import Interactions
from fedrec.deploy.bundle import app_config, write_app
from fedrec.deploy.catalog import CATALOG, load_catalog
from fedrec.deploy.device import DeviceFiles, load_state
from fedrec.deploy.fleet import FleetDevice, split_fleet
from fedrec.deploy.pki import make_device_keys, make_tls
from fedrec.deploy.recommend import recommend
from fedrec.experiments.results import RESULTS
from fedrec.models import shared_spec
from server.demo import demo_config
from server.fleet import LocalFleet, Proc

pytestmark = pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower's CLIs are not installed")


@dataclass
class Outcome:
    results: dict[str, Any]
    devices: list[FleetDevice]
    logs: dict[str, str]
    exit_codes: dict[str, int | None]
    audit: subprocess.CompletedProcess[str]
    n_items: int
    run_dir: Path


def _wait_exit(proc: Proc, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    return proc.popen.poll()


@pytest.fixture(scope="module")
def outcome(ml100k: Interactions, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    root = tmp_path_factory.mktemp("fleet")
    config = demo_config(
        rounds=1, devices=3, data_dir="", out=root, seed=0,
        overrides={"model": "neumf", "gmf-dim": 4, "mlp-layers": "8,4", "num-eval-negatives": 20},
    )
    devices = split_fleet(ml100k, root / "devices", devices=4, rating_threshold=0.0, rng=np.random.default_rng(1))
    (devices[2].data_path).write_text("user,item,rating,timestamp\n7,1,5,100\n7,oops,4,101\n7,3,4,102\n")
    tls = make_tls(root / "tls")
    keys = make_device_keys(root / "keys", [d.name for d in devices])
    n_items = load_catalog(devices[0].folder / CATALOG).n_items
    app = write_app(root / "app", app_config(config, out_dir=root / "run", min_devices=3, n_items=n_items, round_timeout=240))
    with LocalFleet(root / "procs", tls=tls, auth=True) as fleet:
        fleet.start_superlink()
        for key in keys[:3]:
            fleet.register(key.public)  # device 3 ("rogue") is never registered
        for device, key in zip(devices[:3], keys[:3]):
            fleet.start_supernode(device.name, data_path=device.data_path, private_key=key.private)
        rogue = fleet.start_supernode("rogue", data_path=devices[3].data_path, private_key=keys[3].private, max_retries=1)
        # (Flower itself refuses to send a device key over plain text, so this one has none.)
        plain = fleet.start_supernode("plain", data_path=devices[3].data_path, private_key=None, tls=False, max_retries=1)
        exit_codes = {"rogue": _wait_exit(rogue, 60), "plain": _wait_exit(plain, 60)}
        fleet.wait_online(3, timeout=120)
        fleet.submit(app)
        fleet.wait_for(root / "run" / RESULTS, timeout=420)
        logs = {p.name: p.log.read_text(errors="replace") for p in fleet.procs}
    audit = subprocess.run(
        [sys.executable, "-m", "fedrec", "audit", str(root / "run"), "--json"], check=False, capture_output=True, text=True
    )
    results = json.loads((root / "run" / RESULTS).read_text())
    return Outcome(results, devices, logs, exit_codes, audit, n_items, root / "run")


def test_fleet_completes_a_round_over_tls_and_the_ledger_verifies(outcome: Outcome) -> None:
    r = outcome.results
    assert r["engine"] == "flower-deployment"
    assert r["rounds"] == 1 and r["clients"] == 3
    assert "Uvicorn running on https://" in outcome.logs["superlink"]
    assert outcome.audit.returncode == 0, outcome.audit.stdout
    assert json.loads(outcome.audit.stdout)["rounds"] == 1


def test_device_with_unregistered_key_is_refused(outcome: Outcome) -> None:
    assert outcome.exit_codes["rogue"] not in (None, 0)
    assert "Failed to activate SuperNode" in outcome.logs["rogue"], outcome.logs["rogue"]


def test_plain_text_device_cannot_join_the_tls_server(outcome: Outcome) -> None:
    assert outcome.exit_codes["plain"] not in (None, 0)
    assert "could not establish a connection" in outcome.logs["plain"], outcome.logs["plain"]


def test_malformed_device_fails_clearly_and_the_run_goes_on(outcome: Outcome) -> None:
    assert "1 item id(s) are not in the catalogue" in outcome.logs[outcome.devices[2].name]  # 'oops' is no catalogue item
    assert outcome.results["rejected_updates"] == 1  # its training reply was an error; two updates were used
    assert not DeviceFiles.beside(outcome.devices[2].data_path).state.exists()


def test_upload_carries_only_the_shared_parameters(outcome: Outcome) -> None:
    from fedrec.config import parse_run_config

    config = parse_run_config(outcome.results["config"])
    spec = shared_spec(config.model.build(outcome.n_items))
    upload = outcome.results["upload"]
    assert upload["contents"] == {"arrays:arrays": sorted(spec)}
    dense_float32 = sum(4 * int(np.prod(shape)) for shape in spec.values())
    assert dense_float32 <= upload["mean_bytes_per_device"] < 1.05 * dense_float32


def test_devices_keep_private_state_locally_and_recommend_from_it(outcome: Outcome) -> None:
    good = outcome.devices[0]
    state = load_state(DeviceFiles.beside(good.data_path))
    assert state.private is not None and state.private.rounds_trained == 1 and state.shared is not None
    recs = recommend(good.folder, k=10)
    assert recs.source == "federated" and len(recs.items) == 10
