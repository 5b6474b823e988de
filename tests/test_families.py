"""Every model family through the one contract: simulate, audit, recommend with a reason
per item, the empirical audit. The test family (tests/families/popularity.py) is
registered through the registry only; no command knows it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import parse_run_config
from fedrec.data import Interactions
from fedrec.deploy.device import LocalDevice
from fedrec.deploy.fleet import DATA_FILE, split_fleet
from fedrec.deploy.recommend import recommend
from fedrec.errors import FedrecError
from fedrec.experiments.results import MODEL, RESULTS, read_arrays
from fedrec.families import family_names, family_of, get_family, register, unregister
from fedrec.families.registry import BUILT_IN, FAMILIES_ENV
from tests.families.popularity import ENTRY, NAME, POPULARITY, PopularityFamily

runner = CliRunner()
FAMILIES = [*BUILT_IN, NAME]
SMALL = {  # seconds per run on ML-100K
    "max-users": "60", "num-rounds": "2", "clients-per-round": "20", "eval-every": "0", "gmf-dim": "4",
    "mlp-layers": "8,4", "epsilon": "8",
}


@pytest.fixture(autouse=True, scope="module")
def test_family() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAMILIES_ENV, ENTRY)  # every process of a run finds it, Flower's included
        yield


@pytest.fixture(scope="module", params=FAMILIES)
def simulated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[str, Path]:
    """(model, run folder) of one `fedrec simulate` of each family."""
    model = str(request.param)
    tmp = tmp_path_factory.mktemp(model)
    out = tmp / "run"
    text = _invoke(["simulate", *_settings(model, data_dir, tmp), "--out", str(out)])
    assert f"federated {model}" in text and f"{get_family(model).step}s" in text
    return model, out


def _settings(model: str, data_dir: Path, tmp_path: Path) -> list[str]:
    values = {**SMALL, "model": model, "data-dir": str(data_dir), "ledger-key": str(tmp_path / "key.pem")}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def _invoke(args: list[str]) -> str:
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, (result.output, repr(result.exception))
    return result.output


def test_the_registry_lists_every_family_and_the_config_takes_their_names() -> None:
    assert family_names()[:3] == ("neumf", "gmf", "dp-ease") and NAME in family_names()
    assert family_of(parse_run_config({"model": NAME})) == POPULARITY
    with pytest.raises(FedrecError, match="choose one of neumf, gmf, dp-ease"):
        get_family("bert")


def test_register_adds_a_family_in_this_process_and_refuses_a_built_in_name() -> None:
    other = PopularityFamily(name="popularity-other")
    register(other)
    try:
        assert parse_run_config({"model": "popularity-other"}).model.model == "popularity-other"
    finally:
        unregister("popularity-other")
    with pytest.raises(FedrecError, match="built-in"):
        register(PopularityFamily(name="dp-ease"))


def test_simulate_and_audit_run_every_family_through_the_same_commands(simulated: tuple[str, Path]) -> None:
    model, out = simulated
    results = json.loads((out / RESULTS).read_text())
    planned = get_family(model).planned_steps(parse_run_config({**SMALL, "model": model}))
    assert results["model"] == model and results["rounds"] == planned
    assert 0 < results["epsilon"] <= 8.0 + 1e-9 and "popularity" in results["references"]
    assert set(read_arrays(out / MODEL))  # what the family released
    audit = runner.invoke(app, ["audit", str(out)])
    assert audit.exit_code == 0, audit.output


def test_recommend_gives_a_reason_for_every_item_from_the_release_and_the_device_history(
    simulated: tuple[str, Path], data_dir: Path, ml100k: Interactions, tmp_path: Path
) -> None:
    model, out = simulated
    release = read_arrays(out / MODEL)
    config = parse_run_config({**SMALL, "model": model, "data-dir": str(data_dir)})
    folder = split_fleet(ml100k, tmp_path / "devices", devices=1, rating_threshold=0.0, rng=np.random.default_rng(4))[0].folder
    local = LocalDevice.open(folder / DATA_FILE, config)
    private = None
    if get_family(model).private_state:  # the device trains its own vectors on the release first
        private = local.device.train(shared=release, private=None, config=config, round_=1).private
    local.remember(shared=release, config=config, round_=2, private=private)
    recs = recommend(folder, k=5)
    assert recs.source == "federated" and len(recs.items) == 5
    assert all(rec.measure for rec in recs.items)  # every item says in what terms it was chosen
    if model != NAME:  # the popularity family has no history term; the others name history items
        assert any(rec.because for rec in recs.items)
        assert all(len(rec.because) == len(rec.weights) <= 3 for rec in recs.items)
    shown = _invoke(["recommend", "--device-dir", str(folder), "-k", "5"])
    assert "because of" in shown or model == NAME


@pytest.mark.parametrize("model", ["dp-ease", NAME])
def test_the_empirical_audit_of_a_release_bounds_epsilon_below_the_accountant_and_the_control_breaks_it(
    model: str, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "audit"
    text = _invoke(["audit-empirical", *_settings(model, data_dir, tmp_path), "--canaries", "60", "--items", "4",
                    "--control", "--out", str(out)])
    assert "control without DP" in text
    report = json.loads((out / "empirical_audit.json").read_text())
    assert report["dp"] and report["one_run_epsilon_lower_bound"] <= report["accountant_epsilon"]
    control = report["control"]  # the same attack without DP finds every canary
    assert control["auc"] == 1.0 and control["one_run_epsilon_lower_bound"] > max(1.0, report["one_run_epsilon_lower_bound"])
    page = tmp_path / "audit.html"
    assert runner.invoke(app, ["audit", str(out), "--html", str(page)]).exit_code == 0
    assert 'id="emp-control"' in page.read_text() and 'id="emp-one-run"' in page.read_text()


@pytest.mark.slow
def test_the_test_family_runs_on_flower_as_in_process(data_dir: Path, tmp_path: Path) -> None:
    """A family no server or client app knows, through Flower's simulation runtime: the
    devices (other processes) find it through the registry's environment entry, and the
    release, metrics and ledger equal the in-process engine's."""
    settings = ["--set", f"model={NAME}", "--set", "max-users=20", "--set", f"data-dir={data_dir}",
                "--set", f"ledger-key={tmp_path / 'key.pem'}"]
    runs = {}
    for engine in ("flower", "inprocess"):
        out = tmp_path / engine
        _invoke(["simulate", "--out", str(out), "--engine", engine, *settings])
        runs[engine] = json.loads((out / RESULTS).read_text())
    assert runs["flower"]["engine"] == "flower" and runs["flower"]["clients"] == 20
    for key in ("epsilon", "rounds", *[m for m in runs["inprocess"] if "@" in m]):
        assert runs["flower"][key] == runs["inprocess"][key], key
    flower, local = read_arrays(tmp_path / "flower" / MODEL), read_arrays(tmp_path / "inprocess" / MODEL)
    assert set(flower) == set(local) == {"popularity"}
    np.testing.assert_array_equal(flower["popularity"], local["popularity"])
    assert runner.invoke(app, ["audit", str(tmp_path / "flower")]).exit_code == 0
