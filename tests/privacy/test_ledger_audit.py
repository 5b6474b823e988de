from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import parse_run_config
from fedrec.errors import LedgerError
from fedrec.federation.device import simulated_population
from fedrec.federation.fedavg import ServerOptimizer
from fedrec.federation.rounds import InProcessTransport, run_federated
from fedrec.privacy.accountant import epsilon
from fedrec.privacy.audit import MALFORMED, OK, OVER_BUDGET, TAMPERED, audit_run
from fedrec.privacy.ledger import LEDGER, PUBLIC_KEY, public_pem
from fedrec.privacy.session import PrivacySession


def make_ledger(run_dir: Path, *, rounds: int = 4, budget: float = 100.0, close: bool = True, key=None) -> Path:
    session = PrivacySession(
        run_dir=run_dir, key=key or Ed25519PrivateKey.generate(), accountant="rdp", delta=1e-5, budget=budget,
        population=100, sample_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, config_hash="c" * 64,
    )
    for r in range(1, rounds + 1):
        session.record_round(r, clients=10)
    if close:
        session.close(stopped_by_budget=False)
    return run_dir


def lines(run_dir: Path) -> list[bytes]:
    return (run_dir / LEDGER).read_bytes().splitlines(keepends=True)


def rewrite(run_dir: Path, new_lines: list[bytes]) -> None:
    (run_dir / LEDGER).write_bytes(b"".join(new_lines))


def test_a_clean_ledger_verifies_and_epsilon_is_recomputed(tmp_path: Path) -> None:
    report = audit_run(make_ledger(tmp_path))
    assert report.code == OK and report.closed and report.rounds == 4
    assert report.epsilon_rdp == pytest.approx(epsilon(((1.0, 0.1, 4),), delta=1e-5, accountant="rdp"))
    assert report.recorded_epsilon == pytest.approx(report.epsilon_rdp)


def test_truncated_last_line_is_malformed(tmp_path: Path) -> None:
    run = make_ledger(tmp_path)
    data = (run / LEDGER).read_bytes()
    (run / LEDGER).write_bytes(data[:-40])
    assert audit_run(run).code == MALFORMED


def test_edited_entry_is_detected(tmp_path: Path) -> None:
    run = make_ledger(tmp_path)
    ls = lines(run)
    entry = json.loads(ls[2])
    entry["noise_multiplier"] = 5.0  # claim more noise than was added
    ls[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    rewrite(run, ls)
    report = audit_run(run)
    assert report.code == TAMPERED and any("signature" in p for p in report.problems)


@pytest.mark.parametrize("where", [1, 2, 3])
def test_removed_entry_is_detected(tmp_path: Path, where: int) -> None:
    run = make_ledger(tmp_path)
    ls = lines(run)
    del ls[where]
    rewrite(run, ls)
    assert audit_run(run).code == TAMPERED


def test_removed_tail_is_detected_by_results_cross_check(tmp_path: Path) -> None:
    run = make_ledger(tmp_path)
    from fedrec.privacy.ledger import line_hash

    ls = lines(run)
    (run / "results.json").write_text(json.dumps({"ledger_head": line_hash(ls[-1])}))
    rewrite(run, ls[:-2])  # drop the close entry and the last round
    assert audit_run(run).code == TAMPERED


def test_reordered_entries_are_detected(tmp_path: Path) -> None:
    run = make_ledger(tmp_path)
    ls = lines(run)
    ls[2], ls[3] = ls[3], ls[2]
    rewrite(run, ls)
    assert audit_run(run).code == TAMPERED


def test_wrong_signing_key_is_detected(tmp_path: Path) -> None:
    run = make_ledger(tmp_path)
    (run / PUBLIC_KEY).write_bytes(public_pem(Ed25519PrivateKey.generate()))
    assert audit_run(run).code == TAMPERED
    # and a ledger re-signed by someone else fails against the trusted public key
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(public_pem(Ed25519PrivateKey.generate()))
    forged = make_ledger(tmp_path / "forged")
    assert audit_run(forged, public_key=trusted).code == TAMPERED


def test_over_budget_is_its_own_exit_code(tmp_path: Path) -> None:
    report = audit_run(make_ledger(tmp_path, budget=0.5))
    assert report.code == OVER_BUDGET


def test_garbage_is_malformed(tmp_path: Path) -> None:
    run = make_ledger(tmp_path)
    (run / LEDGER).write_bytes(b'{"kind": "header"\n')
    assert audit_run(run).code == MALFORMED
    assert audit_run(tmp_path / "nothing-here").code == MALFORMED


def test_audit_cli_exit_codes_and_json(tmp_path: Path) -> None:
    runner = CliRunner()
    good = make_ledger(tmp_path / "good")
    result = runner.invoke(app, ["audit", str(good), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["status"] == "verified"
    bad = make_ledger(tmp_path / "bad", budget=0.5)
    assert runner.invoke(app, ["audit", str(bad)]).exit_code == OVER_BUDGET


def test_a_new_run_refuses_an_existing_ledger(tmp_path: Path) -> None:
    make_ledger(tmp_path)
    with pytest.raises(LedgerError, match="choose a new --out"):
        make_ledger(tmp_path)


def test_budget_stop_happens_before_the_round(tiny_config, tmp_path: Path) -> None:
    # Fixed z = 1 at q = 4/6: epsilon grows quickly; budget 6 allows only a few rounds.
    config = replace(
        tiny_config,
        federation=replace(tiny_config.federation, num_rounds=30, eval_every=0),
        privacy=replace(tiny_config.privacy, noise_multiplier=1.0, epsilon=6.0),
    )
    split = simulated_population(config).split
    _, history, _ = run_federated(config, InProcessTransport(config, split.n_users), model=config.model.build(split.n_items), run_dir=tmp_path)
    report = audit_run(tmp_path)
    assert history.stopped_by_budget and report.stopped_by_budget and report.code == OK
    q = 4 / 6
    assert report.rounds == history.rounds_run < 30
    assert epsilon(((1.0, q, report.rounds),), delta=1e-5, accountant="prv") <= 6.0
    assert epsilon(((1.0, q, report.rounds + 1),), delta=1e-5, accountant="prv") > 6.0


def test_crash_after_ledger_write_still_counts_the_round(tiny_config, tmp_path: Path, monkeypatch) -> None:
    """The model update of round 2 never happens; the ledger already has round 2."""
    calls = {"n": 0}
    real_step = ServerOptimizer.step

    def crashing_step(self, params, delta, buffer):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash between ledger write and model release")
        return real_step(self, params, delta, buffer)

    monkeypatch.setattr(ServerOptimizer, "step", crashing_step)
    split = simulated_population(tiny_config).split
    with pytest.raises(KeyboardInterrupt):
        run_federated(tiny_config, InProcessTransport(tiny_config, split.n_users), model=tiny_config.model.build(split.n_items), run_dir=tmp_path)
    report = audit_run(tmp_path)
    assert report.rounds == 2 and not report.closed and report.code == OK
    q = min(1.0, 4 / 6)
    z = next(e for e in map(json.loads, lines(tmp_path)) if e["kind"] == "round")["noise_multiplier"]
    assert report.epsilon_prv == pytest.approx(epsilon(((z, q, 2),), delta=1e-5, accountant="prv"))
    assert report.epsilon_prv > epsilon(((z, q, 1),), delta=1e-5, accountant="prv")


def test_results_report_privacy(tiny_config, tmp_path: Path) -> None:
    from fedrec.experiments.run import run_and_report

    split = simulated_population(tiny_config).split
    results = run_and_report(tiny_config, InProcessTransport(tiny_config, split.n_users), out_dir=tmp_path, engine="inprocess")
    for key in ("epsilon", "delta", "accountant", "noise_multiplier", "clipping_norm", "budget", "stopped_by_budget"):
        assert key in results
    assert results["epsilon"] <= results["budget"] and audit_run(tmp_path).code == OK
    assert np.isfinite(results["epsilon_rdp"]) and results["epsilon_rdp"] >= results["epsilon"]


def test_config_rejects_bad_privacy_values() -> None:
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_run_config({"epsilon": -1, "delta": 1.5, "accountant": "moments"})
    assert len(err.value.problems) == 3
