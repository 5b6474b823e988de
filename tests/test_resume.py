"""Checkpoint and resume: a crashed run continues where its last checkpoint left it,
and every round in the ledger keeps counting towards epsilon."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedrec.federation.rounds as runner_module
from fedrec.config import RunConfig
from fedrec.engine.vectorised import VectorisedTransport
from fedrec.errors import FedrecError, LedgerError
from fedrec.experiments.results import MODEL, RESULTS, read_arrays
from fedrec.experiments.run import run_and_report
from fedrec.federation.checkpoint import CHECKPOINT, load_checkpoint
from fedrec.federation.rounds import InProcessTransport
from fedrec.privacy.accountant import epsilon
from fedrec.privacy.audit import OK, TAMPERED, audit_run
from fedrec.privacy.ledger import LEDGER


class Crash(Exception):
    """Stands for the process dying at a chosen point."""


@pytest.fixture()
def config(tiny_config: RunConfig) -> RunConfig:
    return replace(
        tiny_config,
        federation=replace(tiny_config.federation, num_rounds=4, clients_per_round=4, eval_every=2, server_momentum=0.9),
        privacy=replace(tiny_config.privacy, noise_multiplier=0.9, accountant="rdp"),
    )


def _run(config: RunConfig, out: Path, *, resume: bool = False, crash_at: int | None = None, transport: Any = None) -> dict[str, Any]:
    def on_round(round_: int, info: dict[str, float]) -> None:
        if round_ == crash_at:
            raise Crash

    return run_and_report(
        config, transport or VectorisedTransport(config), out_dir=out, engine="inprocess", on_round=on_round, resume=resume
    )


def _same_model(a: Path, b: Path) -> None:
    first, second = read_arrays(a / MODEL), read_arrays(b / MODEL)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_allclose(first[name], second[name], rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("transport", ["vectorised", "per-device"])
def test_resume_after_a_checkpoint_gives_the_uninterrupted_model(config: RunConfig, tmp_path: Path, transport: str) -> None:
    def make() -> Any:
        return VectorisedTransport(config) if transport == "vectorised" else InProcessTransport(config, 6)

    whole = _run(config, tmp_path / "whole", transport=make())
    with pytest.raises(Crash):
        _run(config, tmp_path / "crashed", crash_at=2, transport=make())
    assert load_checkpoint(tmp_path / "crashed").round == 2  # type: ignore[union-attr]
    resumed = _run(config, tmp_path / "crashed", resume=True, transport=make())
    _same_model(tmp_path / "whole", tmp_path / "crashed")
    assert resumed["rounds"] == whole["rounds"] == 4
    assert resumed["epsilon"] == pytest.approx(whole["epsilon"])  # nothing was spent twice
    assert resumed["resumes"] == 1 and whole["resumes"] == 0
    assert [r["round"] for r in resumed["round_log"]] == [1.0, 2.0, 3.0, 4.0]
    report = audit_run(tmp_path / "crashed")
    assert report.code == OK and report.resumes == 1 and report.rounds == 4


def test_a_round_spent_but_not_checkpointed_still_counts(config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _run(config, tmp_path / "whole")
    save = runner_module.save_checkpoint

    def dies_at_round_3(run_dir: Path, checkpoint: Any) -> None:
        if checkpoint.round == 3:
            raise Crash  # round 3 is in the ledger, its aggregate never reached a checkpoint
        save(run_dir, checkpoint)

    monkeypatch.setattr(runner_module, "save_checkpoint", dies_at_round_3)
    with pytest.raises(Crash):
        _run(config, tmp_path / "crashed")
    monkeypatch.setattr(runner_module, "save_checkpoint", save)
    ledger = tmp_path / "crashed" / LEDGER
    assert sum(json.loads(line)["kind"] == "round" for line in ledger.read_text().splitlines()) == 3
    resumed = _run(config, tmp_path / "crashed", resume=True)
    # the job announced 4 rounds to its devices (its plan): the re-run of round 3 is the
    # 4th application of the mechanism, and a 5th would spend beyond what the devices
    # accepted, so the resumed job stops after model round 3 with the epsilon of 4 rounds
    four = epsilon(((0.9, 4 / 6, 4),), delta=config.privacy.delta, accountant="rdp")
    assert resumed["epsilon"] == pytest.approx(four) == pytest.approx(whole["epsilon"])
    assert resumed["rounds"] == 3 and resumed["stopped_by_budget"] is True
    report = audit_run(tmp_path / "crashed")
    assert report.code == OK and report.rounds == 4 and report.epsilon_rdp == pytest.approx(four)
    assert report.planned_steps == 4
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    resume = next(e for e in entries if e["kind"] == "resume")
    assert resume["checkpoint_round"] == 2 and resume["recorded_rounds"] == 3
    assert [e["model_round"] for e in entries if e["kind"] == "round"] == [1, 2, 3, 3]


def test_budget_counts_the_spent_rounds_after_resume(config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    four = epsilon(((0.9, 4 / 6, 4),), delta=config.privacy.delta, accountant="rdp")
    tight = replace(config, privacy=replace(config.privacy, epsilon=four * 1.0001))
    save = runner_module.save_checkpoint

    def dies_at_round_2(run_dir: Path, checkpoint: Any) -> None:
        if checkpoint.round == 2:
            raise Crash
        save(run_dir, checkpoint)

    monkeypatch.setattr(runner_module, "save_checkpoint", dies_at_round_2)
    with pytest.raises(Crash):
        _run(tight, tmp_path / "run")
    monkeypatch.setattr(runner_module, "save_checkpoint", save)
    results = _run(tight, tmp_path / "run", resume=True)
    assert results["stopped_by_budget"] is True and results["rounds"] == 3  # the 5th mechanism run would not fit
    assert results["epsilon"] <= tight.privacy.epsilon
    assert audit_run(tmp_path / "run").code == OK


def test_crash_after_the_ledger_closed_only_writes_the_results(config: RunConfig, tmp_path: Path) -> None:
    first = _run(config, tmp_path / "run")
    ledger = (tmp_path / "run" / LEDGER).read_bytes()
    (tmp_path / "run" / RESULTS).unlink()  # as if it died before results.json
    again = _run(config, tmp_path / "run", resume=True)
    assert (tmp_path / "run" / LEDGER).read_bytes() == ledger  # a closed ledger gets nothing more
    assert again["epsilon"] == pytest.approx(first["epsilon"]) and again["rounds"] == 4
    assert audit_run(tmp_path / "run").code == OK


def test_resume_refuses_a_finished_run_a_tampered_ledger_or_another_config(config: RunConfig, tmp_path: Path) -> None:
    _run(config, tmp_path / "done")
    with pytest.raises(FedrecError, match="finished run"):
        _run(config, tmp_path / "done", resume=True)
    with pytest.raises(Crash):
        _run(config, tmp_path / "crashed", crash_at=2)
    other = replace(config, seed=config.seed + 1)
    with pytest.raises(FedrecError, match="different configuration"):
        _run(other, tmp_path / "crashed", resume=True)
    ledger = tmp_path / "crashed" / LEDGER
    lines = ledger.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["noise_multiplier"] = 5.0
    ledger.write_text("\n".join([lines[0], json.dumps(edited), *lines[2:]]) + "\n")
    assert audit_run(tmp_path / "crashed").code == TAMPERED
    with pytest.raises(LedgerError, match="does not verify"):
        _run(config, tmp_path / "crashed", resume=True)


def test_a_removed_resume_entry_is_detected(config: RunConfig, tmp_path: Path) -> None:
    with pytest.raises(Crash):
        _run(config, tmp_path / "run", crash_at=1)
    _run(config, tmp_path / "run", resume=True)
    ledger = tmp_path / "run" / LEDGER
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [e["kind"] for e in entries].count("resume") == 1
    resume = next(e for e in entries if e["kind"] == "resume")
    assert resume["recorded_rounds"] == 1
    assert audit_run(tmp_path / "run").code == OK
    assert (tmp_path / "run" / CHECKPOINT).is_file()
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join(line for line in lines if '"kind":"resume"' not in line) + "\n")
    assert audit_run(tmp_path / "run").code == TAMPERED


def test_the_server_apps_take_resume_from_the_run_config() -> None:
    from fedrec.errors import ConfigError
    from server.app import split_out_dir

    rest, out, resume = split_out_dir({"out-dir": "runs/x", "resume": True, "seed": 1})
    assert rest == {"seed": 1} and out.name == "x" and resume is True
    assert split_out_dir({"resume": "false"})[2] is False
    assert split_out_dir({})[2] is False
    with pytest.raises(ConfigError, match="resume"):
        split_out_dir({"resume": "maybe"})
