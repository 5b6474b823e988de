"""noise-multiplier = 0 with DP on: clipping without noise, epsilon infinite everywhere
(session, ledger, audit, report), never a finite number."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import RunConfig
from fedrec.errors import LedgerError
from fedrec.experiments.run import run_and_report
from fedrec.federation.device import simulated_population
from fedrec.federation.rounds import InProcessTransport
from fedrec.privacy import session as session_module
from fedrec.privacy.audit import OK, TAMPERED, audit_run
from fedrec.privacy.ledger import LEDGER, decode_epsilon, encode_epsilon
from fedrec.privacy.report import audit_document
from fedrec.privacy.session import PrivacySession


def _no_noise(config: RunConfig) -> RunConfig:
    return replace(config, privacy=replace(config.privacy, noise_multiplier=0.0, epsilon=math.inf))


def _strict(line: bytes) -> dict[str, object]:
    def refuse(token: str) -> float:
        raise ValueError(f"non-standard JSON constant {token}")

    return dict(json.loads(line, parse_constant=refuse))


def test_epsilon_encoding_round_trips_and_refuses_nonsense() -> None:
    assert encode_epsilon(math.inf) == "inf" and decode_epsilon("inf") == math.inf
    assert encode_epsilon(1.25) == 1.25 and decode_epsilon(encode_epsilon(1.25)) == 1.25 and decode_epsilon(0) == 0.0
    for bad in (math.nan, -1.0, -math.inf):
        with pytest.raises(LedgerError):
            encode_epsilon(bad)
    for bad in ("Infinity", "INF", None, True, -0.5, [1]):
        with pytest.raises(LedgerError):
            decode_epsilon(bad)


def test_a_run_without_noise_records_and_verifies_an_infinite_epsilon(tiny_config: RunConfig, tmp_path: Path) -> None:
    config = _no_noise(tiny_config)
    split = simulated_population(config).split
    results = run_and_report(config, InProcessTransport(config, split.n_users), out_dir=tmp_path, engine="inprocess")
    assert results["epsilon"] == math.inf and results["epsilon_rdp"] == math.inf and results["noise_multiplier"] == 0.0
    entries = [_strict(line) for line in (tmp_path / LEDGER).read_bytes().splitlines()]  # strict JSON throughout
    rounds = [e for e in entries if e["kind"] == "round"]
    assert len(rounds) == config.federation.num_rounds
    assert all(e["noise_multiplier"] == 0.0 and e["epsilon"] == "inf" for e in rounds)
    assert entries[0]["budget"] is None and entries[-1]["kind"] == "close" and entries[-1]["epsilon"] == "inf"
    report = audit_run(tmp_path)
    assert report.code == OK and report.closed, report.problems
    assert report.epsilon_prv == report.epsilon_rdp == report.recorded_epsilon == math.inf
    doc = audit_document(tmp_path)
    assert doc["epsilon"]["headline"] == math.inf and doc["epsilon"]["prv"] == math.inf
    assert all(r["epsilon_recorded"] == math.inf for r in doc["per_round"])

    table = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert table.exit_code == OK, table.output
    assert "verified" in table.output and "epsilon recomputed (PRV)" in table.output
    assert [line.split()[-2] for line in table.output.splitlines() if "epsilon re" in line] == ["inf"] * 3
    as_json = CliRunner().invoke(app, ["audit", str(tmp_path), "--json"])
    assert as_json.exit_code == OK
    out = json.loads(as_json.output)
    assert out["epsilon_prv"] == out["recorded_epsilon"] == out["epsilon"]["headline"] == math.inf


def test_a_finite_epsilon_recorded_for_a_round_without_noise_is_tampering(tmp_path: Path, monkeypatch) -> None:
    """A server that under-reports (here: writes 1.0 instead of inf) is caught, signature and all."""
    monkeypatch.setattr(session_module, "encode_epsilon", lambda value: 1.0)
    session = PrivacySession(
        run_dir=tmp_path, key=Ed25519PrivateKey.generate(), accountant="prv", delta=1e-5, budget=math.inf,
        population=100, sample_rate=0.1, noise_multiplier=0.0, clipping_norm=1.0, config_hash="c" * 64,
    )
    session.record_round(1, clients=10)
    session.close(stopped_by_budget=False)
    report = audit_run(tmp_path)
    assert report.code == TAMPERED and report.epsilon_prv == math.inf
    assert any("recorded epsilon 1 is below the recomputed inf" in p for p in report.problems)


def test_without_noise_a_finite_budget_admits_no_round(tmp_path: Path) -> None:
    session = PrivacySession(
        run_dir=tmp_path, key=Ed25519PrivateKey.generate(), accountant="rdp", delta=1e-5, budget=1e6,
        population=100, sample_rate=0.1, noise_multiplier=0.0, clipping_norm=1.0, config_hash="c" * 64,
    )
    assert session.epsilon_after(1) == math.inf and not session.allows_next_round()
