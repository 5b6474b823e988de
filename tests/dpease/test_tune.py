"""Tuning with every try in the ledger: one entry per release, the audit's epsilon is the
composition of all of them, the chosen model is a recorded release, and poisoned test
labels change nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import parse_run_config
from fedrec.dpease.tune import grid, parse_grid, tune, tune_and_report, tuning_noise
from fedrec.errors import FedrecError
from fedrec.experiments.results import MODEL, read_arrays
from fedrec.federation.device import simulated_population
from fedrec.privacy.accountant import epsilon
from fedrec.privacy.audit import OK, audit_run
from fedrec.privacy.ledger import LEDGER, read_entries

CANDIDATES = grid({"ease-item-threshold": [1.0, 4.0], "ease-count-share": [0.2, 0.4]})


def _base(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": "dp-ease", "dataset": "synthetic", "synthetic-users": 200, "synthetic-items": 120,
        "synthetic-interactions": 15, "num-eval-negatives": 20, "seed": 2, "epsilon": 4.0, "accountant": "rdp",
        "ledger-key": str(tmp_path / "keys" / "ledger.pem"), **extra,
    }


def test_every_try_is_in_one_ledger_and_the_audit_composes_them_all(tmp_path: Path) -> None:
    base = _base(tmp_path)
    split = simulated_population(parse_run_config(base)).split
    out = tmp_path / "tune"
    results = tune_and_report(base, split, CANDIDATES, out_dir=out, eval_share=0.2)
    releases = [e for e in read_entries(out / LEDGER).entries if e.get("kind") == "release"]
    assert len(releases) == 3 * len(CANDIDATES) == results["releases"]
    steps: list[tuple[float, float, int]] = []
    for number, t in enumerate(results["tries"], start=1):
        mine = [releases[r - 1] for r in t["releases"]]
        assert [e["mechanism"] for e in mine] == [
            "gaussian-sum/item-counts", "gaussian-sum/item-cooccurrence-upper", "gaussian-sum/per-user-metrics"]
        assert all(f"tuning try {number} (" in e["purpose"] for e in mine)
        assert [e["noise_multiplier"] for e in mine] == t["noise_multipliers"]
        assert mine[2]["clipping_norm"] == pytest.approx(np.sqrt(2))  # two metrics in [0, 1]
        own = tuple((z, 1.0, 1) for z in t["noise_multipliers"])
        steps += own
        # each try's own epsilon, and the population's after it: the accountant over every try so far
        assert t["epsilon"] == pytest.approx(epsilon(own, delta=1e-5, accountant="rdp"), rel=1e-9)
        assert t["epsilon_composed"] == pytest.approx(epsilon(tuple(steps), delta=1e-5, accountant="rdp"), rel=1e-9)
        assert t["epsilon"] <= t["epsilon_composed"] < number * t["epsilon"] + 1e-9
    composed = epsilon(tuple(steps), delta=1e-5, accountant="rdp")
    report = audit_run(out)
    assert report.code == OK, report.problems
    assert report.releases == len(releases) and report.epsilon_rdp == pytest.approx(composed, rel=1e-9)
    assert results["epsilon"] == pytest.approx(composed, rel=1e-9)
    assert 0.95 * 4.0 < composed <= 4.0
    # the model is the chosen try's recorded release: nothing was released after the tries
    chosen = results["tries"][results["chosen_try"] - 1]
    assert read_arrays(out / MODEL)["top_items"].shape[0] == chosen["top_items"]
    assert releases[-1]["release"] == 3 * len(CANDIDATES)
    assert chosen["criterion"] == max(t["criterion"] for t in results["tries"])


def test_the_split_of_the_budget_follows_the_shares() -> None:
    configs = [parse_run_config({"model": "dp-ease", "epsilon": 2.0, "ease-count-share": c}) for c in (0.2, 0.5)]
    noise = tuning_noise(configs, eval_share=0.1)
    inverse = np.array([[1 / z**2 for z in zs] for zs in noise])  # the 1/z^2 currency
    scale = inverse.sum()
    assert inverse / scale == pytest.approx(np.array([[0.2 * 0.9, 0.8 * 0.9, 0.1], [0.5 * 0.9, 0.5 * 0.9, 0.1]]) / 2)
    steps = tuple((z, 1.0, 1) for zs in noise for z in zs)
    assert 0.95 * 2.0 < epsilon(steps, delta=1e-5, accountant="prv") <= 2.0


def test_poisoned_test_labels_do_not_change_the_choice(tmp_path: Path) -> None:
    base = _base(tmp_path)
    split = simulated_population(parse_run_config(base)).split
    honest = tune(base, split, CANDIDATES, run_dir=tmp_path / "a")
    rng = np.random.default_rng(0)
    poisoned = replace(
        split,
        test_item=rng.integers(0, split.n_items, size=split.n_users),
        test_negatives=rng.integers(0, split.n_items, size=split.test_negatives.shape),
    )
    again = tune(base, poisoned, CANDIDATES, run_dir=tmp_path / "b")
    assert again.chosen == honest.chosen
    assert [t.validation for t in again.tries] == [t.validation for t in honest.tries]
    assert len({t.criterion for t in honest.tries}) > 1  # the validation releases do decide


def test_grid_takes_dp_ease_settings_only(tmp_path: Path) -> None:
    assert parse_grid(["ease-item-threshold=1,2", "ease-lambda-noise=4"]) == {
        "ease-item-threshold": ["1", "2"], "ease-lambda-noise": ["4"]}
    assert grid({"ease-item-threshold": [1, 2], "ease-lambda-noise": [4, 8]})[1] == {
        "ease-item-threshold": 1, "ease-lambda-noise": 8}
    with pytest.raises(FedrecError, match="epsilon is not one of"):
        grid({"epsilon": [1, 2]})
    with pytest.raises(FedrecError, match="drop noise-multiplier"):
        base = _base(tmp_path, **{"noise-multiplier": 2.0})
        tune(base, simulated_population(parse_run_config(base)).split, CANDIDATES[:1], run_dir=tmp_path / "z")


def test_cli_tune_then_audit(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "tune"
    sets = [a for k, v in _base(tmp_path).items() for a in ("--set", f"{k}={v}")]
    result = runner.invoke(app, ["tune", *sets, "--grid", "ease-lambda-noise=2,8", "--out", str(out)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "*: chosen" in result.output and "6 releases in one ledger" in result.output
    audited = runner.invoke(app, ["audit", str(out)])
    assert audited.exit_code == 0, audited.output


def test_tune_table_is_readable_at_80_columns() -> None:
    from rich.console import Console

    from fedrec.cli import _tune_table

    tries = [{"try": k, "overrides": {"ease-lambda-noise": v, "ease-prior-weight": 0.001}, "noise_multipliers": [1.34, 0.672, 20.1],
              "top_items": 1500, "validation": {"ndcg@10": 0.1234, "full_ndcg@10": 0.0567}, "criterion": 0.0567,
              "releases": [3 * k + 1, 3 * k + 2, 3 * k + 3], "epsilon": 2.71, "epsilon_composed": 2.71 * (k + 1) ** 0.6}
             for k, v in enumerate((2, 8, 32))]
    console = Console(width=80, record=True, color_system=None)
    console.print(_tune_table({"epsilon": 8.0, "tries": tries, "chosen_try": 1}))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for word in ("try", "settings", "full", "crit.", "ledger", "ε (so far)", "ε 2.71 (4.11)", "1.34/0.672/20.1", "0.1234",
                 "7-9", "1*", "*: chosen",
                 "lambda-noise=32", "prior-weight=0.001"):
        assert word in text, word
