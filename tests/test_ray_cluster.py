"""The Flower path on an existing Ray cluster (here a local one-node cluster started
by the test, as `ray start --head` would on a real head node)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_simulate_on_a_running_ray_cluster(data_dir: Path, tmp_path: Path) -> None:
    ray = shutil.which("ray")
    if ray is None:
        pytest.skip("the ray command is not installed")
    port = _free_port()
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--disable-usage-stats",
         "--include-dashboard=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        out = tmp_path / "run"
        deadline = time.monotonic() + 120
        while True:  # the head is up once its GCS port accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(1)
        result = subprocess.run(
            [sys.executable, "-m", "fedrec", "simulate", "--engine", "flower", "--ray-address", f"127.0.0.1:{port}",
             "--data", str(data_dir), "--out", str(out), "--set", "max-users=4", "--set", "num-rounds=2",
             "--set", "clients-per-round=3", "--set", "eval-every=0", "--set", "gmf-dim=8", "--set", "mlp-layers=16,8",
             "--set", "accountant=rdp", "--set", f"ledger-key={tmp_path / 'ledger.pem'}"],
            check=False, capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_DEDUP_LOGS": "0"},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        results = json.loads((out / "results.json").read_text())
        assert results["engine"] == "flower" and results["rounds"] == 2
        assert sum(r["aggregated"] for r in results["round_log"]) > 0
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the cluster it started
        head.wait(timeout=60)


def test_ray_address_needs_the_flower_engine(data_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedrec.cli import app

    result = CliRunner().invoke(app, ["simulate", "--data", str(data_dir), "--out", str(tmp_path / "x"), "--ray-address", "auto"])
    assert result.exit_code != 0 and "--engine flower" in result.output
