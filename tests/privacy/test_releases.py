"""Releases other than training rounds (a DP prior, sufficient statistics, metrics):
recorded in the ledger, composed with the rounds, checked against the budget, audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus.accountants import PRVAccountant, RDPAccountant

from fedrec.errors import PrivacyError
from fedrec.privacy.audit import MALFORMED, OK, OVER_BUDGET, TAMPERED, audit_run
from fedrec.privacy.ledger import LEDGER
from fedrec.privacy.session import PrivacySession

KEY = Ed25519PrivateKey.generate()


def session(run_dir: Path, *, budget: float = 50.0, resume: bool = False) -> PrivacySession:
    return PrivacySession(
        run_dir=run_dir, key=KEY, accountant="prv", delta=1e-5, budget=budget, population=100,
        sample_rate=0.1, noise_multiplier=1.0, clipping_norm=1.0, config_hash="c" * 64, resume=resume,
    )


def opacus_epsilon(history: list[tuple[float, float, int]], accountant: str) -> float:
    """Independent recomputation straight from Opacus, without fedrec's helpers."""
    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    acc.history = history
    return float(acc.get_epsilon(delta=1e-5, eps_error=0.01) if accountant == "prv" else acc.get_epsilon(delta=1e-5))


def test_a_release_composes_with_the_rounds_and_the_audit_recomputes_it(tmp_path: Path) -> None:
    s = session(tmp_path)
    s.record_release(
        mechanism="gaussian-sum/item-counts", purpose="popularity prior", noise_multiplier=3.0, sample_rate=1.0,
        clipping_norm=1.0, clients=100,
    )
    for r in range(1, 4):
        s.record_round(r, clients=10)
    s.record_release(
        mechanism="gaussian-sum/eval-metrics", purpose="validation metrics", noise_multiplier=5.0, sample_rate=0.5,
        clipping_norm=2.0, clients=50, steps=2,
    )
    s.close(stopped_by_budget=False)
    history = [(3.0, 1.0, 1), (1.0, 0.1, 3), (5.0, 0.5, 2)]
    expected = opacus_epsilon(history, "prv")
    assert s.spent == pytest.approx(expected, rel=1e-9)
    # composing more mechanisms can only cost more than the rounds alone
    assert s.spent > opacus_epsilon([(1.0, 0.1, 3)], "prv")
    report = audit_run(tmp_path)
    assert report.code == OK, report.problems
    assert (report.rounds, report.releases) == (3, 2)
    assert report.epsilon_prv == pytest.approx(expected, rel=1e-9)
    assert report.epsilon_rdp == pytest.approx(opacus_epsilon(history, "rdp"), rel=1e-9)
    entries = [json.loads(line) for line in (tmp_path / LEDGER).read_bytes().splitlines()]
    releases = [e for e in entries if e["kind"] == "release"]
    assert [e["release"] for e in releases] == [1, 2]
    assert releases[0]["purpose"] == "popularity prior" and releases[1]["steps"] == 2
    assert entries[-1]["kind"] == "close" and entries[-1]["releases"] == 2


def test_a_release_over_budget_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    s = session(tmp_path, budget=1.0)
    before = (tmp_path / LEDGER).read_bytes()
    assert not s.allows_release(noise_multiplier=0.5, sample_rate=1.0)
    with pytest.raises(PrivacyError, match="budget"):
        s.record_release(
            mechanism="gaussian-sum/item-counts", purpose="prior", noise_multiplier=0.5, sample_rate=1.0,
            clipping_norm=1.0, clients=100,
        )
    assert (tmp_path / LEDGER).read_bytes() == before
    assert s.allows_release(noise_multiplier=20.0, sample_rate=1.0)


@pytest.mark.parametrize("z, q, steps", [(-1.0, 1.0, 1), (0.0, 1.0, 1), (1.0, 0.0, 1), (1.0, 1.5, 1), (1.0, 1.0, 0)])
def test_release_parameters_out_of_range_are_refused(tmp_path: Path, z: float, q: float, steps: int) -> None:
    with pytest.raises(PrivacyError):
        session(tmp_path).allows_release(noise_multiplier=z, sample_rate=q, steps=steps)


def _two_release_ledger(run_dir: Path) -> list[bytes]:
    s = session(run_dir)
    for purpose in ("a", "b"):
        s.record_release(
            mechanism="gaussian-sum/item-counts", purpose=purpose, noise_multiplier=4.0, sample_rate=1.0,
            clipping_norm=1.0, clients=100,
        )
    s.record_round(1, clients=10)
    s.close(stopped_by_budget=False)
    return (run_dir / LEDGER).read_bytes().splitlines(keepends=True)


def test_deleting_or_editing_a_release_is_detected(tmp_path: Path) -> None:
    lines = _two_release_ledger(tmp_path)
    (tmp_path / LEDGER).write_bytes(b"".join(lines[:1] + lines[2:]))  # delete release 1
    assert audit_run(tmp_path).code == TAMPERED
    entry = json.loads(lines[2])
    entry["noise_multiplier"] = 40.0  # claim more noise than was added
    edited = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    (tmp_path / LEDGER).write_bytes(b"".join(lines[:2] + [edited] + lines[3:]))
    assert audit_run(tmp_path).code == TAMPERED


def test_a_release_with_bad_steps_is_malformed_even_if_signed(tmp_path: Path) -> None:
    s = session(tmp_path)
    s.writer.append(
        {
            "kind": "release", "release": 1, "mechanism": "m", "purpose": "p", "sample_rate": 1.0, "noise_multiplier": 1.0,
            "clipping_norm": 1.0, "steps": "many", "clients": 1, "delta": 1e-5, "epsilon": 1.0, "accountant": "prv",
            "config_hash": "c" * 64,
        }
    )
    assert audit_run(tmp_path).code == MALFORMED


def test_a_resumed_session_counts_the_releases_already_recorded(tmp_path: Path) -> None:
    s = session(tmp_path)
    s.record_release(
        mechanism="gaussian-sum/item-counts", purpose="prior", noise_multiplier=2.0, sample_rate=1.0,
        clipping_norm=1.0, clients=100,
    )
    s.record_round(1, clients=10)
    spent = s.spent
    again = session(tmp_path, resume=True)
    assert again.spent == pytest.approx(spent) and (again.rounds, again.releases) == (1, 1)
    again.mark_resume(checkpoint_round=1)
    again.record_round(2, clients=10)
    again.close(stopped_by_budget=False)
    assert audit_run(tmp_path).code == OK


def test_over_budget_releases_are_flagged_by_the_audit(tmp_path: Path) -> None:
    s = session(tmp_path, budget=float("inf"))
    s.record_release(
        mechanism="gaussian-sum/item-counts", purpose="prior", noise_multiplier=0.3, sample_rate=1.0,
        clipping_norm=1.0, clients=100,
    )
    s.close(stopped_by_budget=False)
    # the header says no budget: within it; a ledger whose header promised 1.0 would not be
    assert audit_run(tmp_path).code == OK
    t = tmp_path / "b"
    s = session(t, budget=2.0)
    s.writer.append(
        {
            "kind": "release", "release": 1, "mechanism": "m", "purpose": "p", "sample_rate": 1.0, "noise_multiplier": 0.3,
            "clipping_norm": 1.0, "steps": 1, "clients": 1, "delta": 1e-5, "epsilon": 100.0, "accountant": "prv",
            "config_hash": "c" * 64,
        }
    )
    assert audit_run(t).code == OVER_BUDGET
