"""SIGKILL the server at random points, resume, repeat: the run always finishes, the
ledger always verifies, and the reported epsilon is never below the ledger's spend.

Real processes (`fedrec simulate`, then `fedrec simulate --resume`), killed with their
whole process group (Flower's simulation runtime starts Ray workers), on the
in-process engine and on the Flower path. 16 + 4 = 20 kills.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedrec.experiments.results import RESULTS
from fedrec.federation.checkpoint import RUN_CONFIG, load_checkpoint
from fedrec.privacy.audit import OK, audit_run
from fedrec.privacy.ledger import LEDGER

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _ledger_rounds(run: Path) -> int:
    try:
        return (run / LEDGER).read_bytes().count(b'"kind":"round"')
    except FileNotFoundError:
        return 0


def _check_after_kill(run: Path) -> None:
    """What must hold whenever the server has just died."""
    if not (run / LEDGER).exists():
        return  # died before its first round
    report = audit_run(run)
    assert report.code == OK, report.problems
    checkpoint = load_checkpoint(run)
    if checkpoint is not None:  # a checkpointed round is always in the ledger
        assert checkpoint.ledger_rounds <= report.rounds
        assert checkpoint.round <= report.rounds


def _kill_and_resume_until_done(
    run: Path, settings: list[str], *, engine: str, kills: int, rng: np.random.Generator, log: Path
) -> tuple[int, int]:
    """Returns (kills done, processes started)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = started = 0
    while True:
        if (run / RUN_CONFIG).exists():
            args = ["--resume", str(run)]
        else:
            args = ["--engine", engine, "--out", str(run), *settings]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fedrec", "simulate", *args], cwd=REPO, env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        started += 1
        try:
            if done < kills:
                if done % 4 == 0:  # any time at all: imports, data, calibration, the first rounds
                    deadline = time.monotonic() + rng.uniform(0.5, 8.0)
                    while time.monotonic() < deadline and proc.poll() is None:
                        time.sleep(0.01)
                else:  # inside the round loop: after 1-3 more ledger rounds, then a random moment
                    target = _ledger_rounds(run) + int(rng.integers(1, 4))
                    deadline = time.monotonic() + 300
                    while _ledger_rounds(run) < target and proc.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.005)
                    time.sleep(rng.uniform(0.0, 0.25))
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    done += 1
                    _check_after_kill(run)
                    continue
                assert proc.returncode == 0, log.read_text()[-3000:]
                return done, started  # finished before the kill: too few rounds for the kills asked
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
            return done, started
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _check_finished(run: Path, rounds: int) -> None:
    results = json.loads((run / RESULTS).read_text())
    report = audit_run(run)
    assert report.code == OK, report.problems
    assert report.closed
    assert results["rounds"] == rounds or results["stopped_by_budget"]
    assert results["ledger_head"] is not None
    # never under-reported: what results.json and the ledger claim >= what the ledger's rounds spent
    assert results["epsilon"] >= report.epsilon_rdp * (1 - 1e-9)
    assert report.recorded_epsilon >= report.epsilon_rdp * (1 - 1e-9)
    assert report.rounds >= results["rounds"]  # rounds spent but discarded keep counting


def _settings(data_dir: Path, tmp_path: Path, *, users: int, per_round: int, rounds: int) -> list[str]:
    values = {
        "model": "neumf", "max-users": users, "clients-per-round": per_round, "num-rounds": rounds, "eval-every": 5,
        "gmf-dim": 8, "mlp-layers": "16,8", "noise-multiplier": 1.0, "accountant": "rdp", "epsilon": 1000,
        "ledger-key": tmp_path / "key.pem", "data-dir": data_dir, "seed": 7,
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def test_sigkill_inprocess_engine_16_times(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    settings = _settings(data_dir, tmp_path, users=60, per_round=20, rounds=80)
    kills, started = _kill_and_resume_until_done(
        run, settings, engine="inprocess", kills=16, rng=np.random.default_rng(11), log=tmp_path / "log.txt"
    )
    assert kills == 16, f"only {kills} kills before the run finished"
    _check_finished(run, rounds=80)
    assert json.loads((run / RESULTS).read_text())["resumes"] >= 1
    assert started == kills + 1


def test_sigkill_flower_path_4_times(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    settings = _settings(data_dir, tmp_path, users=12, per_round=6, rounds=24)
    kills, _ = _kill_and_resume_until_done(
        run, settings, engine="flower", kills=4, rng=np.random.default_rng(12), log=tmp_path / "log.txt"
    )
    assert kills == 4, f"only {kills} kills before the run finished"
    _check_finished(run, rounds=24)
