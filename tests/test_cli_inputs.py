"""Bad input at the command line: one clear error, a non-zero exit, nothing that looks
like a finished run. The commands run in-process through Typer's test runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.experiments.results import RESULTS

runner = CliRunner()


def _fails_cleanly(args: list[str], out: Path | None = None, *, contains: str = "") -> str:
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    text = result.output
    assert result.exit_code != 0, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text
    assert text.strip(), "an error must say what is wrong"
    assert contains.lower() in text.lower(), text
    if out is not None:
        assert not (out / RESULTS).exists()
    return text


@pytest.fixture()
def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "binary.toml": b"\xff\xfe\x00garbage\x80",
        "broken.toml": b"num-rounds = [1, 2\n",
        "unknown.toml": b"num-round = 3\n",
        "negative.toml": b"epsilon = -1.0\n",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(content)
    (tmp_path / "a-directory.toml").mkdir()
    paths["a-directory.toml"] = tmp_path / "a-directory.toml"
    return paths


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        (["--set", "num-rounds"], "key=value"),
        (["--set", "num-rounds=ten"], "num-rounds"),
        (["--set", "epsilon=0"], "epsilon"),
        (["--set", "delta=1"], "delta"),
        (["--set", "dleta=1e-5"], "unknown key"),
        (["--set", "clients-per-round=-4"], "clients-per-round"),
        (["--engine", "warp"], "unknown engine"),
        (["--engine", "inprocess", "--ray-address", "auto"], "--ray-address"),
        (["--data", "/nonexistent/fedrec-data"], "does not exist"),
        (["--resume", "/nonexistent/run"], "not a fedrec run directory"),
    ],
)
def test_simulate_rejects_bad_arguments(tmp_path: Path, data_dir: Path, args: list[str], contains: str) -> None:
    out = tmp_path / "out"
    _fails_cleanly(["simulate", "--out", str(out), *args], out, contains=contains)


@pytest.mark.parametrize(
    ("name", "contains"),
    [
        ("binary.toml", "binary.toml"),
        ("broken.toml", "broken.toml"),
        ("unknown.toml", "num-round"),
        ("negative.toml", "epsilon"),
        ("a-directory.toml", "a-directory.toml"),
        ("missing.toml", "not found"),
    ],
)
def test_simulate_rejects_bad_config_files(tmp_path: Path, data_dir: Path, bad_files: dict[str, Path], name: str, contains: str) -> None:
    out = tmp_path / "out"
    _fails_cleanly(["simulate", "--config", str(bad_files.get(name, tmp_path / name)), "--out", str(out)], out, contains=contains)


def test_resume_with_a_config_or_of_a_broken_run_dir_fails_cleanly(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.json").write_text("{not json")
    _fails_cleanly(["simulate", "--resume", str(run)], contains="unreadable")
    _fails_cleanly(["simulate", "--resume", str(run), "--set", "seed=1"], contains="--resume")


def test_audit_of_something_that_is_not_a_run(tmp_path: Path) -> None:
    assert runner.invoke(app, ["audit", str(tmp_path / "missing")]).exit_code == 5
    (tmp_path / "file").write_bytes(os.urandom(64))
    assert runner.invoke(app, ["audit", str(tmp_path / "file")]).exit_code == 5


_token = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_known = st.sampled_from(["num-rounds", "epsilon", "delta", "clients-per-round", "seed", "max-users", "lr", "mlp-layers", "dp", "dataset"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sets=st.lists(_token | st.builds(lambda k, v: f"{k}={v}", _known, _token), min_size=1, max_size=4))
def test_fuzzed_settings_never_crash_the_cli(tmp_path: Path, sets: list[str]) -> None:
    # No data directory exists, so nothing can train: every outcome must be a clean error.
    out = tmp_path / "out"
    args = ["simulate", "--data", str(tmp_path / "no-data"), "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    result = runner.invoke(app, args, env={"COLUMNS": "400", "FEDREC_DATA_DIR": ""})
    if result.exit_code == 0:  # e.g. dataset=synthetic needs no data: then it must have finished
        assert (out / RESULTS).is_file()
        return
    assert result.exception is None or isinstance(result.exception, SystemExit), (sets, repr(result.exception))
    assert "Traceback" not in result.output and "error" in result.output.lower(), (sets, result.output)
    assert not (out / RESULTS).exists()
