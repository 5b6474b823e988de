"""Every command with the default model (DP-EASE) on a user's own CSV: it runs the model
the config names, or refuses it in one line before anything trains, and its output
speaks of what DP-EASE does (two releases, not training rounds)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import parse_run_config
from fedrec.data.sources import load_dataset
from fedrec.errors import ConfigError
from fedrec.experiments import coldstart as coldstart_module
from fedrec.experiments import sweep as sweep_module
from fedrec.experiments.coldstart import train_federated_reference
from fedrec.experiments.results import MODEL, RESULTS, read_arrays
from fedrec.fallback import service as service_module
from fedrec.fallback.collaborative import ReleasedEase
from fedrec.fallback.signup import RELEASE_GRID

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_example", REPO / "tests" / "data" / "make_example.py")
assert _spec is not None and _spec.loader is not None
make_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_example)
runner = CliRunner()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The data section of the generated bookshop, as --set arguments (no model key)."""
    folder = tmp_path_factory.mktemp("bookshop")
    make_example.generate(folder)
    keys = {"dataset": "ratings.csv", "data-dir": str(folder), "item-file": "books.csv", "rating-threshold": "3.5"}
    return [arg for key, value in keys.items() for arg in ("--set", f"{key}={value}")]


def _run(args: list[str]) -> str:
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, (result.output, repr(result.exception))
    return result.output


def test_simulate_with_the_default_model_reports_releases_not_rounds(shop: list[str], tmp_path: Path) -> None:
    text = _run(["simulate", *shop, "--out", str(tmp_path)])
    assert "federated dp-ease" in text
    assert "test metrics after 2 releases" in text and "rounds" not in text
    assert "per release" in text


def test_audit_empirical_attacks_the_dp_ease_release_itself(shop: list[str], tmp_path: Path) -> None:
    # The default model is audited through what it releases (the item counts), not by
    # training some other model: the run in OUT is a DP-EASE run with its ledger.
    text = _run(["audit-empirical", *shop, "--canaries", "4", "--items", "2", "--out", str(tmp_path)])
    assert "2 releases" in text and "one-run epsilon lower bound" in text
    report = json.loads((tmp_path / "empirical_audit.json").read_text())
    results = json.loads((tmp_path / RESULTS).read_text())
    assert results["model"] == "dp-ease" and report["canaries"] == 4
    assert report["one_run_epsilon_lower_bound"] <= report["accountant_epsilon"]


def test_audit_empirical_still_runs_a_neural_model(shop: list[str], tmp_path: Path) -> None:
    text = _run(["audit-empirical", *shop, "--set", "model=gmf", "--set", "num-rounds=1", "--canaries", "4",
                 "--items", "2", "--out", str(tmp_path)])
    assert "empirical privacy audit" in text and (tmp_path / "empirical_audit.json").is_file()


def _capture_signup(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``release`` each sign-up evaluation of coldstart-eval is given (the call goes through)."""
    given: list[Any] = []
    real = coldstart_module.run_signup

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        given.append(kwargs.get("release"))
        return real(*args, **kwargs)

    monkeypatch.setattr(coldstart_module, "run_signup", spy)
    return given


def test_serve_fallback_re_solves_the_release_as_the_evaluation_tuned_it(
    shop: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    targets: list[Any] = []
    real = coldstart_module.run_signup

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        targets.append(kwargs.get("release_target"))
        return real(*args, **kwargs)

    monkeypatch.setattr(coldstart_module, "run_signup", spy)
    _run(["coldstart-eval", *shop, "--text", "tfidf", "--reveal", "0,3", "--out", str(tmp_path)])
    results = json.loads((tmp_path / RESULTS).read_text())
    results["tuned"]["tfidf"]["preferences"]["release_ridge"] = 10.0  # whatever the tiny run chose: a ridge to re-solve with
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps(results))
    served: list[Any] = []
    monkeypatch.setattr(service_module, "create_app", lambda catalog, recommender: recommender)
    monkeypatch.setattr(service_module, "serve", lambda app, **kwargs: served.append(app))
    _run(["serve-fallback", *shop, "--text", "tfidf", "--tuned", str(tuned), "--release", str(tmp_path / "dp-ease"),
          "--run-dir", str(tmp_path / "fallback")])
    recommender = served[0]
    assert recommender.config.release_ridge == 10.0
    released = ReleasedEase.from_run(tmp_path / "dp-ease")
    # the weights the evaluation reads with that ridge: the release re-solved towards the run's content target
    expected = released.refit(10.0, target=targets[0])
    np.testing.assert_allclose(recommender.release.weights, expected.weights)
    assert not np.allclose(recommender.release.weights, released.weights)


def test_coldstart_eval_evaluates_the_default_model_through_its_release(
    shop: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = _capture_signup(monkeypatch)
    text = _run(["coldstart-eval", *shop, "--text", "tfidf", "--reveal", "0,3", "--out", str(tmp_path)])
    with (tmp_path / "coldstart.csv").open(newline="") as fh:
        methods = {row["method"] for row in csv.DictReader(fh)}
    assert any(m.startswith("DP-EASE") for m in methods), methods
    assert not any(m.startswith("federated") for m in methods), methods  # no GMF in DP-EASE's place
    assert (tmp_path / "dp-ease" / "privacy_ledger.jsonl").is_file()
    assert "(epsilon 8)" in text
    # the sign-up evaluation reads the same release for liked-item similarity, as serve-fallback --release does
    released = read_arrays(tmp_path / "dp-ease" / MODEL)
    assert len(given) == 1 and isinstance(given[0], ReleasedEase)
    np.testing.assert_array_equal(given[0].top_items, released["top_items"])
    np.testing.assert_array_equal(given[0].weights, ReleasedEase.from_run(tmp_path / "dp-ease").weights)
    results = json.loads((tmp_path / RESULTS).read_text())
    chosen = results["tuned"]["tfidf"]["preferences"]
    assert chosen["release_weight"] in RELEASE_GRID
    assert {g["release_weight"] for g in chosen["grid"]} == set(RELEASE_GRID)
    assert all(r["method"].endswith("DP-EASE similarity), " + r["answers"]) for r in results["signup"])
    assert all(r["release_weight"] == chosen["release_weight"] for r in results["signup"])


def test_coldstart_eval_without_a_release_scores_sign_up_by_content_alone(
    shop: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = _capture_signup(monkeypatch)
    _run(["coldstart-eval", *shop, "--set", "model=gmf", "--no-federated", "--collaborative", "none", "--text", "tfidf",
          "--reveal", "0,3", "--out", str(tmp_path)])
    assert given == [None] and not (tmp_path / "dp-ease").exists()


def test_coldstart_eval_with_dp_ease_and_no_collaborative_says_what_to_do(shop: list[str], tmp_path: Path) -> None:
    result = runner.invoke(app, ["coldstart-eval", *shop, "--collaborative", "none", "--out", str(tmp_path)],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "--no-federated" in result.output and "model=neumf" in result.output, result.output
    assert not (tmp_path / RESULTS).exists()


def test_federated_reference_refuses_dp_ease(shop: list[str], tmp_path: Path) -> None:
    values = dict(arg.split("=", 1) for arg in shop[1::2])
    config = parse_run_config(values)
    data = load_dataset(config.data).positives(config.data.rating_threshold)
    with pytest.raises(ConfigError, match="model = neumf or gmf"):
        train_federated_reference(config, data, np.arange(10), tmp_path)


@pytest.mark.parametrize(("model", "label"), [("dp-ease", "DP-EASE, 50 users"), ("neumf", "DP-FedAvg (neumf), 50 users")])
def test_sweep_plot_names_the_model(model: str, label: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures: list[Any] = []
    monkeypatch.setattr(sweep_module, "save_png", lambda path, fig: figures.append(fig))

    def point(config: Any, run_dir: Path) -> dict[str, Any]:  # the sweep's bookkeeping only: no training
        return {"clients": 50, "epsilon": config.privacy.epsilon if config.privacy.enabled else float("inf"),
                "noise_multiplier": 1.0, "rounds": 2, "hr@10": 0.5, "ndcg@10": 0.3, "full_ndcg@10": 0.1,
                "recall@20": 0.2, "seconds": 1.0}

    sweep_module.run_sweep(parse_run_config({"model": model}), epsilons=[1.0, 8.0], populations=[50], out_dir=tmp_path,
                           run_point=point)
    labels = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert labels == [label]


def test_sweep_table_of_dp_ease_names_releases(shop: list[str], tmp_path: Path) -> None:
    text = _run(["sweep", *shop, "--epsilons", "8", "--users", "0", "--out", str(tmp_path)])
    assert "sweep of dp-ease" in text and "releases" in text and "z gram" in text
