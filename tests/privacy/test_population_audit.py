"""Population audits: several runs on one population, epsilon composed by the accountant
over the concatenation of their ledgers (recomputed here independently with Opacus'
accountants imported the ordinary way), each run's share, a re-run after a crash
paying its first release again, and any ledger that does not verify failing the whole."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus.accountants import PRVAccountant, RDPAccountant
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import RunConfig, parse_run_config
from fedrec.deploy.catalog import run_catalog
from fedrec.dpease.run import InProcessStatistics, run_dp_ease
from fedrec.dpease.tune import grid, tune_and_report
from fedrec.federation.device import simulated_population
from fedrec.privacy.audit import MALFORMED, OK, OVER_BUDGET, TAMPERED
from fedrec.privacy.ledger import LEDGER
from fedrec.privacy.population import audit_population, find_runs
from fedrec.privacy.population_report import render_html
from fedrec.privacy.session import PrivacySession

BASE: dict[str, Any] = {
    "model": "dp-ease", "dataset": "synthetic", "synthetic-users": 150, "synthetic-items": 120,
    "synthetic-interactions": 12, "num-eval-negatives": 20, "seed": 1,
}


def _config(tmp_path: Path, **extra: Any) -> RunConfig:
    return parse_run_config({**BASE, "ledger-key": str(tmp_path / "keys" / "ledger.pem"), **extra})


def _ledger_steps(run_dir: Path) -> list[tuple[float, float, int]]:
    """Every mechanism application in the ledger, read straight from its JSON lines."""
    steps = []
    for line in (run_dir / LEDGER).read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "round":
            steps.append((entry["noise_multiplier"], entry["sample_rate"], 1))
        elif entry["kind"] == "release":
            steps.append((entry["noise_multiplier"], entry["sample_rate"], entry["steps"]))
    return steps


def _independent(steps: list[tuple[float, float, int]], delta: float) -> dict[str, float]:
    prv, rdp = PRVAccountant(), RDPAccountant()
    prv.history, rdp.history = list(steps), list(steps)
    return {"prv": prv.get_epsilon(delta=delta, eps_error=0.01), "rdp": rdp.get_epsilon(delta=delta)}


def _audit_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(app, ["audit", *args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_a_tune_folder_and_a_main_job_compose_as_the_accountant_on_their_concatenation(tmp_path: Path) -> None:
    tune_dir, main_dir = tmp_path / "tune", tmp_path / "main"
    base = {**BASE, "model": "dp-ease", "epsilon": 2.0, "accountant": "rdp", "ledger-key": str(tmp_path / "keys" / "l.pem")}
    split = simulated_population(parse_run_config(base)).split
    tune_and_report(base, split, grid({"ease-item-threshold": [1.0, 4.0]}), out_dir=tune_dir, eval_share=0.2)
    main = _config(tmp_path, epsilon=3.0, accountant="rdp")
    run_dp_ease(main, InProcessStatistics(split, clipping_norm=main.privacy.clipping_norm),
                catalog=run_catalog(main), run_dir=main_dir)

    code, doc = _audit_json(str(tune_dir), str(main_dir))
    assert code == OK, doc["problems"]
    concatenated = _ledger_steps(tune_dir) + _ledger_steps(main_dir)
    assert len(concatenated) == 3 * 2 + 2
    expected = _independent(concatenated, delta=1e-5)
    assert doc["epsilon"]["rdp"] == pytest.approx(expected["rdp"], rel=1e-9)
    assert doc["epsilon"]["prv"] == pytest.approx(expected["prv"], rel=1e-9)
    assert doc["epsilon"]["headline"] == doc["epsilon"]["rdp"]  # both runs use RDP
    # each run's share: what it adds; the shares add up to the composition
    tune_run, main_run = doc["runs"]
    assert tune_run["run_dir"] == str(tune_dir)  # the tune started first
    assert tune_run["epsilon_alone"]["rdp"] == pytest.approx(_independent(_ledger_steps(tune_dir), 1e-5)["rdp"], rel=1e-9)
    assert tune_run["share"] + main_run["share"] == pytest.approx(doc["epsilon"]["rdp"], rel=1e-12)
    assert main_run["epsilon_after"]["rdp"] == pytest.approx(doc["epsilon"]["rdp"], rel=1e-12)
    # composed, not added: tighter than the sum of the runs' own epsilons, above each of them
    alone = [r["epsilon_alone"]["rdp"] for r in doc["runs"]]
    assert max(alone) < doc["epsilon"]["rdp"] < sum(alone)


def test_a_rerun_after_a_crash_pays_its_first_release_again(tmp_path: Path) -> None:
    config = _config(tmp_path, epsilon=4.0)
    transport = InProcessStatistics(simulated_population(config).split, clipping_norm=config.privacy.clipping_norm)

    def crash(number: int, info: dict[str, float]) -> None:
        raise RuntimeError("the server died after the first release")

    with pytest.raises(RuntimeError):
        run_dp_ease(config, transport, catalog=run_catalog(config), run_dir=tmp_path / "crashed", on_phase=crash)
    run_dp_ease(config, transport, catalog=run_catalog(config), run_dir=tmp_path / "rerun")
    crashed, rerun = _ledger_steps(tmp_path / "crashed"), _ledger_steps(tmp_path / "rerun")
    assert len(crashed) == 1 and crashed[0] == rerun[0]  # the same first release, spent twice

    audit = audit_population([tmp_path / "crashed", tmp_path / "rerun"])
    assert audit.code == OK, audit.problems
    assert any("no close entry" in w for r in audit.runs for w in r.audit.warnings)
    expected = _independent(crashed + rerun, delta=1e-5)
    assert audit.epsilon["prv"] == pytest.approx(expected["prv"], rel=1e-9)
    assert audit.epsilon["rdp"] == pytest.approx(expected["rdp"], rel=1e-9)
    # the re-run alone stayed within its budget; the population did not
    assert audit.runs[1].epsilon_alone["prv"] <= 4.0 < audit.epsilon["prv"]
    over = audit_population([tmp_path / "crashed", tmp_path / "rerun"], budget=4.0)
    assert over.code == OVER_BUDGET and "population budget" in over.problems[0]


def _run(run_dir: Path, key: Ed25519PrivateKey, *, rounds: int, z: float, q: float, delta: float = 1e-5) -> Path:
    session = PrivacySession(
        run_dir=run_dir, key=key, accountant="prv", delta=delta, budget=50.0, population=100, sample_rate=q,
        noise_multiplier=z, clipping_norm=1.0, config_hash="c" * 64,
    )
    for n in range(1, rounds + 1):
        session.record_round(n, clients=int(q * 100))
    session.record_release(mechanism="gaussian-sum/x", purpose="prior", noise_multiplier=5.0, sample_rate=1.0,
                           clipping_norm=1.0, clients=100, steps=2)
    session.close(stopped_by_budget=False)
    return run_dir


def test_a_folder_of_runs_is_the_population_of_its_runs(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    a = _run(tmp_path / "sweep" / "eps-1", key, rounds=5, z=1.2, q=0.1)
    b = _run(tmp_path / "sweep" / "eps-2", key, rounds=3, z=0.9, q=0.2)
    assert find_runs([tmp_path / "sweep"]) == [a, b]
    code, folder = _audit_json(str(tmp_path / "sweep"))
    code_both, both = _audit_json(str(a), str(b))
    assert code == code_both == OK
    assert folder["epsilon"] == both["epsilon"]
    assert folder["epsilon"]["prv"] == pytest.approx(_independent(_ledger_steps(a) + _ledger_steps(b), 1e-5)["prv"], rel=1e-9)
    # a single run folder is still the single-run audit (its own schema)
    code_one, one = _audit_json(str(a))
    assert code_one == OK and one["schema"] == "fedrec.audit-report/1"


def test_the_same_ledger_twice_counts_once_and_the_delta_is_the_strictest(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    a = _run(tmp_path / "a", key, rounds=4, z=1.0, q=0.1, delta=1e-5)
    b = _run(tmp_path / "b", key, rounds=4, z=1.0, q=0.1, delta=1e-6)
    audit = audit_population([a, b, a])
    assert audit.code == OK and [r.counted for r in audit.runs] == [True, True, False]
    assert audit.delta == 1e-6 and any("counted once" in w for w in audit.warnings)
    steps = _ledger_steps(a) + _ledger_steps(b)
    assert audit.epsilon["prv"] == pytest.approx(_independent(steps, 1e-6)["prv"], rel=1e-9)
    at = audit_population([a, b], delta=1e-5)
    assert at.epsilon["prv"] == pytest.approx(_independent(steps, 1e-5)["prv"], rel=1e-9)


def test_one_ledger_that_does_not_verify_fails_the_population_and_shows_no_epsilon(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    a = _run(tmp_path / "a", key, rounds=4, z=1.0, q=0.1)
    b = _run(tmp_path / "b", key, rounds=4, z=1.0, q=0.1)
    lines = (b / LEDGER).read_text().splitlines()
    del lines[2]  # a spent round removed: leaving this run out would under-report
    (b / LEDGER).write_text("\n".join(lines) + "\n")
    code, doc = _audit_json(str(a), str(b))
    assert code == TAMPERED and doc["epsilon"]["headline"] is None and doc["epsilon"]["prv"] is None
    assert str(b) in doc["problems"][0]
    code, doc = _audit_json(str(a), str(tmp_path / "missing"))
    assert code == MALFORMED and doc["epsilon"]["headline"] is None


def test_other_keys_are_matched_by_fingerprint_and_a_wrong_key_is_tampering(tmp_path: Path) -> None:
    first, second = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    a = _run(tmp_path / "a", first, rounds=2, z=1.0, q=0.1)
    b = _run(tmp_path / "b", second, rounds=2, z=1.0, q=0.1)
    keys = tmp_path / "trusted"
    keys.mkdir()
    (keys / "a.pem").write_bytes((a / "ledger_public_key.pem").read_bytes())
    (keys / "b.pem").write_bytes((b / "ledger_public_key.pem").read_bytes())
    code, _ = _audit_json(str(a), str(b), "--public-key", str(keys / "a.pem"), "--public-key", str(keys / "b.pem"))
    assert code == OK
    code, doc = _audit_json(str(a), str(b), "--public-key", str(keys / "a.pem"))
    assert code == TAMPERED and "not the one named" in doc["problems"][0]


def test_the_page_and_the_terminal_show_the_json_numbers(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    a = _run(tmp_path / "a", key, rounds=3, z=1.0, q=0.1)
    b = _run(tmp_path / "b<script>", key, rounds=2, z=1.5, q=0.2)
    page = tmp_path / "population.html"
    result = CliRunner().invoke(app, ["audit", str(a), str(b), "--html", str(page)])
    assert result.exit_code == OK, result.stdout
    doc = audit_population([a, b]).to_json()
    text = page.read_text()
    assert text.index("VERIFIED") < text.index("<h2>")
    assert f"{doc['epsilon']['prv']:.4f}" in text and f"{doc['epsilon']['rdp']:.4f}" in text
    for run in doc["runs"]:
        assert f"{run['share']:.4f}" in text and f"{run['share']:.4f}" in result.stdout
    assert "<script>" not in text and "b&lt;script&gt;" in text
    assert not re.search(r"(src|href)=", text)
    assert f"{doc['epsilon']['headline']:.4f}" in result.stdout
    assert render_html(doc) == text


def test_a_sweep_shows_the_composed_epsilon_of_its_points_so_far(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedrec.experiments import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "save_png", lambda path, fig: None)
    key = Ed25519PrivateKey.generate()

    def point(config: Any, run_dir: Path) -> dict[str, Any]:  # a ledger per private point, no training
        if config.privacy.enabled:
            _run(run_dir, key, rounds=3, z=4.0 / config.privacy.epsilon, q=0.2)
        return {"clients": 100, "epsilon": config.privacy.epsilon if config.privacy.enabled else float("inf"),
                "noise_multiplier": 1.0, "rounds": 3, "hr@10": 0.5, "ndcg@10": 0.3, "full_ndcg@10": 0.1,
                "recall@20": 0.2, "seconds": 1.0}

    rows = sweep_module.run_sweep(parse_run_config({"model": "neumf"}), epsilons=[2.0, 8.0, float("inf")], populations=[0],
                                  out_dir=tmp_path, run_point=point)
    dirs = [Path(r["run_dir"]) for r in rows]
    # PRV discretises per history entry: one entry of 3 steps and 3 entries of 1 agree to float noise
    assert rows[0]["epsilon_population"] == pytest.approx(_independent(_ledger_steps(dirs[0]), 1e-5)["prv"], rel=1e-6)
    both = _independent(_ledger_steps(dirs[0]) + _ledger_steps(dirs[1]), 1e-5)["prv"]
    assert rows[1]["epsilon_population"] == pytest.approx(both, rel=1e-6)
    assert rows[2]["epsilon_population"] == float("inf")  # a point without DP on the same population
    assert "epsilon_population" in (tmp_path / "sweep.csv").read_text().splitlines()[0]
