"""Opacus' accountants loaded without ``opacus/__init__`` (so an audit never imports
torch) are Opacus' own: the same epsilon as the normal import, and the real Opacus still
imports after them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp

from fedrec.privacy import accountant
from fedrec.privacy.accountant import PRV_EPS_ERROR, History, compress, epsilon
from fedrec.privacy.audit_curve import rdp_curve
from fedrec.privacy.ledger import PUBLIC_KEY

from .conftest import write_run

ROOT = Path(__file__).resolve().parents[2]

HISTORIES: list[History] = [
    ((1.1, 0.05, 4),),
    ((1.0, 0.01, 1000),),
    ((0.8, 0.1, 30), (1.3, 0.02, 200), (20.0, 1.0, 1)),  # training, then an evaluation release
    ((5.0, 1.0, 1), (3.0, 1.0, 1)),  # DP-EASE's two unsampled releases
]


def _opacus(history: History, *, delta: float, name: str) -> float:
    acc = PRVAccountant() if name == "prv" else RDPAccountant()
    acc.history = list(history)
    if name == "prv":
        return float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
    return float(acc.get_epsilon(delta=delta))


def test_the_fast_path_loads_opacus_own_classes_apart_from_the_package() -> None:
    assert accountant.PRVAccountant is not PRVAccountant  # loaded a second time, under fedrec's name
    assert accountant.PRVAccountant.__module__ == f"{accountant.ACCOUNTANTS_MODULE}.prv"
    assert Path(sys.modules[accountant.PRVAccountant.__module__].__file__ or "") == Path(
        sys.modules[PRVAccountant.__module__].__file__ or ""
    )
    assert accountant.load_opacus_accountants() is sys.modules[accountant.ACCOUNTANTS_MODULE]  # loaded once


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("name", ["prv", "rdp"])
def test_fast_path_epsilon_equals_the_normal_opacus_import(history: History, name: str) -> None:
    for delta in (1e-5, 1e-6):
        assert epsilon(history, delta=delta, accountant=name) == _opacus(history, delta=delta, name=name)


def test_the_audit_curve_equals_the_normal_opacus_import() -> None:
    steps = [(1.0, 0.05)] * 6 + [(0.8, 0.1)] * 3
    orders = RDPAccountant.DEFAULT_ALPHAS
    for k, value in enumerate(rdp_curve(steps, delta=1e-5), start=1):
        rdp = sum(opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=n, orders=orders) for z, q, n in compress(steps[:k]))
        assert value == opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)[0]


def _fresh(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, check=True, timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_opacus_imports_for_real_after_the_fast_path() -> None:
    code = (
        "import json, sys\n"
        "from fedrec.privacy.accountant import epsilon\n"
        "before = 'opacus' in sys.modules or 'torch' in sys.modules\n"
        "fast = epsilon(((1.0, 0.01, 100),), delta=1e-5, accountant='prv')\n"
        "import opacus\n"
        "from opacus.accountants import PRVAccountant\n"
        "acc = PRVAccountant(); acc.history = [(1.0, 0.01, 100)]\n"
        "print(json.dumps({'before': before, 'engine': opacus.PrivacyEngine.__module__,\n"
        "                  'equal': bool(fast == acc.get_epsilon(delta=1e-5, eps_error=0.01))}))\n"
    )
    assert _fresh(code) == {"before": False, "engine": "opacus.privacy_engine", "equal": True}


def test_fedrec_audit_html_imports_neither_torch_nor_opacus(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", key=Ed25519PrivateKey.generate())
    page = tmp_path / "report.html"
    argv = ["fedrec", "audit", str(run_dir), "--public-key", str(run_dir / PUBLIC_KEY), "--html", str(page), "--prv-points", "2"]
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_module('fedrec', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    code = stop.code\n"
        "heavy = sorted(m for m in ('torch', 'opacus', 'pandas', 'flwr') if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    assert _fresh(code) == {"code": 0, "heavy": []}
    assert "verified" in page.read_text(encoding="utf-8")
