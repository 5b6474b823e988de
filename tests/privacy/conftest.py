"""Real ledgers for the audit report's tests: written by PrivacySession, then damaged
the seven ways a tamperer would (issue 15)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedrec.experiments.results import RESULTS
from fedrec.privacy.ledger import LEDGER
from fedrec.privacy.session import PrivacySession

TAMPERINGS = ("edit z", "edit epsilon", "delete", "reorder", "truncate tail", "drop close", "splice")

MakeRun = Callable[..., Path]


def write_run(
    run_dir: Path, *, key: Ed25519PrivateKey, rounds: int = 4, budget: float = 10.0, resume_at: int | None = None,
    rejected: dict[int, int] | None = None,
) -> Path:
    """A closed DP run's ledger (z = 1.1, q = 0.05, RDP headline) and the results.json
    naming its head, as ``fedrec.experiments.run`` writes it. ``resume_at``: after that many
    ledger rounds the server crashes and resumes from the checkpoint of the round before,
    so one ledger round is spent but unused."""
    settings: dict[str, Any] = {
        "key": key, "accountant": "rdp", "delta": 1e-5, "budget": budget, "population": 200, "sample_rate": 0.05,
        "noise_multiplier": 1.1, "clipping_norm": 1.0, "config_hash": "a" * 64,
    }
    session = PrivacySession(run_dir=run_dir, **settings)
    model_round = 1
    for n in range(1, rounds + 1):
        session.record_round(model_round, clients=10)
        model_round += 1
        if resume_at is not None and n == resume_at:
            session = PrivacySession(run_dir=run_dir, resume=True, **settings)
            model_round -= 1
            session.mark_resume(checkpoint_round=model_round - 1)
    session.close(stopped_by_budget=False)
    log = [{"round": float(r), "rejected": float((rejected or {}).get(r, 0))} for r in range(1, model_round)]
    (run_dir / RESULTS).write_text(json.dumps({"ledger_head": session.head, "round_log": log,
                                               "rejected_updates": sum((rejected or {}).values())}))
    return run_dir


@pytest.fixture
def make_run(tmp_path: Path) -> MakeRun:
    key = Ed25519PrivateKey.generate()
    counter = iter(range(1_000_000))

    def make(**kwargs: Any) -> Path:
        return write_run(tmp_path / f"run{next(counter)}", key=key, **kwargs)

    return make


def _dump(entry: dict[str, object]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def tamper(run_dir: Path, kind: str, *, other: Path) -> None:
    """Damage ``run_dir``'s ledger (a closed 4-round one: header, rounds on lines 1-4,
    close on line 5) one way; ``other`` is another run signed with the same key."""
    lines = (run_dir / LEDGER).read_bytes().splitlines(keepends=True)
    if kind == "edit z":
        entry = json.loads(lines[2])
        entry["noise_multiplier"] = 10.0  # claim more noise than was added
        lines[2] = _dump(entry)
    elif kind == "edit epsilon":
        entry = json.loads(lines[4])
        entry["epsilon"] = 0.01  # claim less was spent
        lines[4] = _dump(entry)
    elif kind == "delete":
        del lines[2]
    elif kind == "reorder":
        lines[2], lines[3] = lines[3], lines[2]
    elif kind == "truncate tail":
        lines = lines[:-2]  # the last round and the close entry
    elif kind == "drop close":
        lines = lines[:-1]
    elif kind == "splice":
        lines[3] = (other / LEDGER).read_bytes().splitlines(keepends=True)[3]  # validly signed, another run's
    else:
        raise ValueError(kind)
    (run_dir / LEDGER).write_bytes(b"".join(lines))
