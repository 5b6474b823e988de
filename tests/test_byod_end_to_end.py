"""Bring your own data end to end: a generated CSV + item file through the same data
section to a `serve-fallback` answer with the data set's own ids and titles, to device
folders and to on-device recommendations; and every option an error names exists."""

from __future__ import annotations

import ast
import csv
import importlib.util
import re
from pathlib import Path

import click
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import RunConfig, data_keys, parse_run_config
from fedrec.data.sources import load_dataset
from fedrec.deploy.fleet import DATA_FILE, split_fleet
from fedrec.deploy.recommend import recommend
from fedrec.deploy.settings import KEYS, SECURE_AGGREGATION
from fedrec.fallback import BlendConfig, ContentRecommender, FeatureConfig, build_catalog
from fedrec.fallback.service import create_app

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_example", REPO / "tests" / "data" / "make_example.py")
assert _spec is not None and _spec.loader is not None
make_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_example)
generate = make_example.generate
EXAMPLE = REPO / "tests" / "data" / "example"
runner = CliRunner()


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bookshop")
    generate(folder)
    return folder


def test_shipped_example_is_what_the_generator_makes(example: Path) -> None:
    for name in ("ratings.csv", "books.csv"):
        assert (EXAMPLE / name).read_bytes() == (example / name).read_bytes()


def books(folder: Path) -> dict[str, str]:
    with (folder / "books.csv").open(newline="") as fh:
        return {row["sku"]: row["title"] for row in csv.DictReader(fh)}


def config_for(folder: Path) -> RunConfig:
    return parse_run_config(
        {"dataset": "ratings.csv", "data-dir": str(folder), "item-file": "books.csv", "rating-threshold": 3.5}
    )


def test_serve_fallback_answers_with_own_ids_and_titles(example: Path, tmp_path: Path) -> None:
    config = config_for(example)
    data = load_dataset(config.data).positives(config.data.rating_threshold)
    catalog = build_catalog(data, features=FeatureConfig(text="tfidf"), run_dir=tmp_path)
    client = TestClient(create_app(catalog, ContentRecommender(catalog, BlendConfig(popularity_weight=0.5))))
    assert client.get("/health").json()["genres"] == sorted(
        ["Cooking", "Fantasy", "History", "Mystery", "Poetry", "Romance", "Science Fiction", "Travel"]
    )
    answer = client.post("/recommend", json={"liked_items": ["BK-0001", "BK-0002"], "genres": ["History"], "k": 5})
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    titles = books(example)
    assert len(items) == 5 and all(titles[it["item_id"]] == it["title"] for it in items)
    assert {"BK-0001", "BK-0002"}.isdisjoint(it["item_id"] for it in items)
    unknown = client.post("/recommend", json={"liked_items": ["BK-9999"]})
    assert unknown.status_code == 422 and "BK-0000" in unknown.text  # says what ids look like


def test_device_folders_and_on_device_recommend_keep_own_ids(example: Path, tmp_path: Path) -> None:
    import numpy as np

    config = config_for(example)
    data = load_dataset(config.data)
    fleet = split_fleet(data, tmp_path, devices=2, rating_threshold=3.5, rng=np.random.default_rng(0))
    rows = (fleet[0].data_path).read_text().splitlines()
    assert rows[0] == "user,item,rating,timestamp" and rows[1].startswith("cust-") and ",BK-" in rows[1]
    recs = recommend(fleet[0].folder, k=3, data_file=DATA_FILE)
    titles = books(example)
    assert recs.source == "popularity" and all(titles[r.item_id] == r.title for r in recs.items)


def test_data_check_cli_takes_every_data_key_as_a_flag(example: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(example / "ratings.csv"), "--item-file", str(example / "books.csv"),
                                 "--rating-threshold=3.5", "--rating-scale", "0.5..5"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "took customer_id->user, sku->item, stars->rating, ts->timestamp" in result.output
    assert "200 users, 300 items" in result.output and "300 titles, 8 genres" in result.output


# ---- every option or key an error message names exists ----------------------------------

def cli_options() -> set[str]:
    names: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            names.update(o for o in getattr(param, "opts", []) if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return names | {f"--{k}" for k in data_keys()}  # `fedrec data check` takes every data key as a flag


def config_keys() -> set[str]:
    return set(RunConfig().to_flat()) | set(KEYS) | {SECURE_AGGREGATION, "out-dir", "resume"}


OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
KEY = re.compile(r"(?<![\w-])([a-z]+(?:-[a-z]+)*=|[a-z]+(?:-[a-z]+)+\))")  # key=VALUE, or (key-name) after a value


def named(message: str) -> tuple[set[str], set[str]]:
    return {f"--{m}" for m in OPTION.findall(message)}, {k.rstrip("=)") for k in KEY.findall(message)}


def bad_inputs(tmp: Path) -> list[tuple[str, dict[str, object]]]:
    cases: list[tuple[str, dict[str, object]]] = [
        ("when,what\n1,2\n", {}), ("user,item\n1,2\n", {"user-col": "uid"}), ("user,item\n1,2\n", {"rating-col": "r"}),
        ("user,item,rating\n1,2,9\n", {"rating-scale": "1..5"}), ("user,item,timestamp\n1,2,x\n", {}),
        ("user,item\n1,2\n", {"item-file": str(tmp / "missing.csv")}), ("1,2\n", {"user-col": "9"}),
        ("user,item\n1,2\n", {"item-file": str(tmp / "items.csv"), "title-col": "nope"}),
        ("user,item\n1,2\n", {"item-file": str(tmp / "items.csv"), "year-col": "year"}),
        ("user,item\n1,2\n", {"item-file": str(tmp / "noid.csv")}),
        ("user,item\n1,2\n\xff\n", {}), ("user,item,rating\n1,2,4\n1,2,5\n", {"duplicates": "error"}),
        ("u1 i1 5\nu2 i1 4\n", {}), ("1 2 5\n", {"user-col": "4"}), ("user,item\n1,2\n", {"user-col": "3"}),
    ]
    (tmp / "items.csv").write_text("item,title,year\n2,Two,soon\n")
    (tmp / "noid.csv").write_text("label\nTwo\n")
    return cases


def literals(source: Path) -> list[str]:
    """Every string literal of a module; an f-string's fields become '{}'."""
    out = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.JoinedStr):
            out.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
    return out


def test_error_messages_name_only_real_options_and_keys(tmp_path: Path) -> None:
    options, keys = cli_options(), config_keys()
    messages: list[str] = []
    for k, (text, values) in enumerate(bad_inputs(tmp_path)):
        path = tmp_path / f"x{k}.csv"
        path.write_bytes(text.encode("utf-8", "surrogateescape") if "\xff" not in text else text.encode("latin-1"))
        try:
            load_dataset(parse_run_config({"dataset": str(path), **values}).data)
        except Exception as err:  # noqa: BLE001 - any error's text is checked
            messages.append(str(err))
        else:
            pytest.fail(f"case {k} should fail")
    try:
        parse_run_config({"delimiter": "::", "rating-scale": "5..1", "encoding": "nope", "genre-sep": "", "user-col": "none"})
    except Exception as err:  # noqa: BLE001
        messages.append(str(err))
    # and every message written in the data layer's source (string literals with a space)
    for source in (REPO / "fedrec" / "data").glob("*.py"):
        messages += [m for m in literals(source) if " " in m and "\n" not in m]  # one-line messages, no docstrings
    assert len(messages) > 20
    for message in messages:
        opts, found_keys = named(message)
        assert opts <= options, f"{message!r} names {sorted(opts - options)}, not an option of fedrec"
        assert found_keys <= keys, f"{message!r} names {sorted(found_keys - keys)}, not a config key"
