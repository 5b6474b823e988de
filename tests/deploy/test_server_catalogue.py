"""A deployment's server reads the public catalogue and nothing else of the data set.

The DP-EASE content target comes from ``catalog.json`` (what ``fedrec deploy split``
ships to every device); a simulation builds the same catalogue from the data set it
holds, so both give the same arrays. The deployment ServerApp runs here over the
in-process grid (:class:`tests.deploy.test_secagg.InlineGrid`) after the data set is
deleted from disk.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import RunConfig, parse_run_config
from fedrec.data import Interactions
from fedrec.data.sources import prepare
from fedrec.deploy.bundle import app_config
from fedrec.deploy.catalog import CATALOG, catalog_from, load_catalog, run_catalog, simulated_catalog
from fedrec.deploy.device import DeviceFiles, DeviceState, save_state
from fedrec.deploy.settings import deploy_catalog, split_deploy_settings
from fedrec.dpease.fit import _simulated_content, catalogue_content, content_target, public_item_content
from fedrec.dpease.report import run_ease_and_report
from fedrec.errors import ConfigError, FedrecError
from fedrec.experiments.results import MODEL, read_arrays
from server.deploy import main as deployment_server
from server.statistics import GridStatistics
from tests.deploy.test_secagg import InlineGrid

DEVICES = 3


pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _forget_loaded_data() -> None:
    """Drop every per-process cache of the data set, so nothing read before is reused."""
    prepare.cache_clear()
    simulated_catalog.cache_clear()
    _simulated_content.cache_clear()


def test_the_catalogue_carries_the_item_content_exactly(ml100k: Interactions, tmp_path: Path) -> None:
    catalog = catalog_from(ml100k, rating_threshold=4.0)
    catalog.save(tmp_path / CATALOG)
    loaded = load_catalog(tmp_path / CATALOG)
    assert ml100k.item_meta is not None and loaded.meta is not None
    assert loaded.meta.titles == ml100k.item_meta.titles and loaded.meta.genre_names == ml100k.item_meta.genre_names
    np.testing.assert_array_equal(loaded.meta.genres, ml100k.item_meta.genres)
    np.testing.assert_array_equal(loaded.meta.year, ml100k.item_meta.year)  # NaN where unknown, in the same places
    assert np.isnan(loaded.meta.year).any() and loaded.meta.texts == ml100k.item_meta.texts


def test_a_catalogue_without_item_content_loads_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / CATALOG
    path.write_text('{"item_ids": [1, 2], "titles": ["a", "b"], "popularity": [3, 1]}')
    assert load_catalog(path).meta is None
    path.write_text('{"item_ids": [1, 2], "titles": ["a", "b"], "popularity": [3, 1], '
                    '"genre_names": ["x"], "genres": [[[0, 1.0]]], "year": [null, 1990]}')
    with pytest.raises(FedrecError, match="not a valid catalogue"):
        load_catalog(path)


@pytest.mark.parametrize("extra", [{}, {"max-users": 100, "seed": 5}])
def test_simulated_and_deployment_content_targets_are_the_same_arrays(
    data_dir: Path, tmp_path: Path, extra: dict[str, Any],
) -> None:
    config = parse_run_config({"model": "dp-ease", "data-dir": str(data_dir), **extra})
    out = CliRunner().invoke(app, ["deploy", "split", "--out", str(tmp_path / "d"), "--devices", "2", "--data", str(data_dir)])
    assert out.exit_code == 0, out.output
    shipped = load_catalog(tmp_path / "d" / "device-000" / CATALOG)
    simulated = public_item_content(config)
    deployed = catalogue_content(shipped, config)
    assert simulated is not None and deployed is not None and simulated.shape[0] == shipped.n_items
    np.testing.assert_array_equal(deployed, simulated)
    top = np.array([0, 49, 99, 180, 257, 1681])
    np.testing.assert_array_equal(content_target(deployed[top]), content_target(simulated[top]))


def test_no_catalogue_is_refused_unless_the_content_weight_is_zero_and_a_wrong_one_is_refused(
    ml100k: Interactions, tmp_path: Path,
) -> None:
    config = parse_run_config({"model": "dp-ease", "dp": "off"})
    assert catalogue_content(None, parse_run_config({"model": "dp-ease", "ease-content-weight": 0.0})) is None
    with pytest.raises(FedrecError, match="catalog=PATH"):
        catalogue_content(None, config)
    rest, deploy = split_deploy_settings({"min-devices": 3, "num-items": 1681, "catalog": str(tmp_path / CATALOG)})
    catalog_from(ml100k, rating_threshold=4.0).save(tmp_path / CATALOG)
    with pytest.raises(ConfigError, match="1682 items but num-items is 1681"):
        deploy_catalog(deploy)
    assert "catalog" not in rest


def _fleet(tmp_path: Path, data: Path) -> dict[int, dict[str, Any]]:
    out = CliRunner().invoke(app, ["deploy", "split", "--out", str(tmp_path / "devices"), "--devices", str(DEVICES),
                                   "--data", str(data)])
    assert out.exit_code == 0, out.output
    nodes = {}
    for k in range(DEVICES):
        files = DeviceFiles.beside(tmp_path / "devices" / f"device-{k:03d}" / "interactions.csv")
        save_state(files, DeviceState(device_seed=100 + k))
        nodes[10 + k] = {"data-path": str(files.data)}
    return nodes


def _serve(
    config: RunConfig, nodes: dict[int, dict[str, Any]], out_dir: Path, catalog: Path | None, grid: InlineGrid | None = None,
) -> dict[str, np.ndarray]:
    """The deployment ServerApp over the in-process grid; its model.npz."""
    run_config = app_config(config, out_dir=out_dir, min_devices=DEVICES, n_items=1682, catalog=catalog)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    deployment_server(grid or InlineGrid(nodes), context)
    return read_arrays(out_dir / MODEL)


def test_a_deployment_server_with_no_interactions_file_runs_dp_ease_with_its_content_target(
    data_dir: Path, tmp_path: Path,
) -> None:
    # the server's data set: a copy that is deleted before the deployment runs
    data = tmp_path / "server-data"
    shutil.copytree(data_dir / "ml-100k", data / "ml-100k")
    nodes = _fleet(tmp_path, data)
    server_catalog = tmp_path / "server" / CATALOG  # the server's copy of what every device has
    server_catalog.parent.mkdir()
    shutil.copyfile(tmp_path / "devices" / "device-000" / CATALOG, server_catalog)
    # DP off: with three devices any noise hides the co-occurrence and the content target would not show
    config = parse_run_config({"model": "dp-ease", "data-dir": str(data), "dp": "off", "seed": 2, "ease-item-threshold": 1.0})
    assert config.ease.content_weight > 0

    # with the data set on disk: the content from the data set (the simulation's path)
    _forget_loaded_data()
    grid = GridStatistics(InlineGrid(nodes), config, n_items=1682, expected_nodes=DEVICES, patience=1, client_order=False)
    run_ease_and_report(config, tmp_path / "with-data", engine="flower-deployment", transport=grid,
                        catalog=run_catalog(config))
    expected = read_arrays(tmp_path / "with-data" / MODEL)
    _forget_loaded_data()

    shutil.rmtree(data)
    assert not (data / "ml-100k" / "u.data").exists()
    inline = InlineGrid(nodes)
    with pytest.raises(FedrecError, match="catalog=PATH"):  # no catalogue: refused before any device is asked
        _serve(config, nodes, tmp_path / "no-catalogue", catalog=None, grid=inline)
    assert inline.sent == []
    model = _serve(config, nodes, tmp_path / "without-data", catalog=server_catalog)
    assert model["top_items"].shape[0] > 1 and np.abs(model["weights"]).sum() > 0
    assert expected.keys() == model.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(model[name], value, err_msg=name)
    # the content target is in the model: without it the same statistics give other weights
    plain = _serve(replace(config, ease=replace(config.ease, content_weight=0.0)), nodes, tmp_path / "plain", catalog=None)
    np.testing.assert_array_equal(plain["top_items"], model["top_items"])
    assert not np.allclose(plain["weights"], model["weights"]) and math.isfinite(float(np.abs(model["weights"]).max()))
