"""DP-EASE over Flower's Grid, in one process: the real ClientApps answer the messages
(``tests.deploy.test_secagg.InlineGrid``), only the network is left out.

The Grid transport must give exactly the releases, ledger and metrics of the in-process
transport (same seed, same noise), a real device must send nothing but its statistic,
SecAgg+ must give the sum of the devices' statistics without any single one, and real
devices' metrics must leave only through DP releases in the ledger, within the budget.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from clients import device as device_module
from clients.app import app as simulation_app
from clients.records import to_record
from fedrec import protocol
from fedrec.config import RunConfig, parse_run_config
from fedrec.data import Interactions
from fedrec.deploy.catalog import Catalog, load_catalog, run_catalog
from fedrec.deploy.device import DeviceFiles, DeviceState, LocalDevice, load_state, save_state
from fedrec.deploy.fleet import split_fleet
from fedrec.deploy.recommend import recommend
from fedrec.dpease.fit import select_top_items
from fedrec.dpease.report import run_ease_and_report
from fedrec.dpease.run import InProcessStatistics, device_evaluate, device_statistic, run_dp_ease
from fedrec.dpease.statistics import COUNTS
from fedrec.evaluation.metrics import METRIC_NAMES
from fedrec.experiments.results import MODEL, read_arrays
from fedrec.families.ease import DpEaseFamily
from fedrec.federation.device import simulated_population
from fedrec.privacy.audit import OK, audit_run
from fedrec.privacy.dp_fedavg import Part
from fedrec.privacy.eval_release import MECHANISM, PRIVATE, clipped_metrics, evaluation_generator
from fedrec.privacy.ledger import LEDGER, read_entries
from fedrec.privacy.report import audit_document
from server.secagg import SecAggStatistics
from server.statistics import GridStatistics
from tests.deploy.test_secagg import InlineGrid

USERS = 12


pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _config(tmp_path: Path, **extra: Any) -> RunConfig:
    return parse_run_config(
        {
            "model": "dp-ease", "dataset": "synthetic", "synthetic-users": USERS, "synthetic-items": 120,
            "synthetic-interactions": 10, "num-eval-negatives": 10, "seed": 4, "epsilon": 8.0,
            "ease-item-threshold": 0.5, "ledger-key": str(tmp_path / "keys" / "ledger.pem"), **extra,
        }
    )


def _simulated_grid() -> InlineGrid:
    # node ids in the opposite order of the partitions: the transport must sort by client
    return InlineGrid({1000 - 7 * k: {"partition-id": k} for k in range(USERS)}, app=simulation_app)


def test_grid_gives_exactly_the_in_process_releases_ledger_and_metrics(tmp_path: Path) -> None:
    # a large budget: with 12 users at epsilon 8 no eigenvalue of the noisy Gram clears the
    # noise edge and the release is the prior alone; here both phases must carry signal
    config = _config(tmp_path, epsilon=100.0)
    split = simulated_population(config).split
    local = InProcessStatistics(split, clipping_norm=config.privacy.clipping_norm)
    grid = GridStatistics(_simulated_grid(), config, n_items=split.n_items, expected_nodes=USERS, patience=1, batch=5)
    catalog = run_catalog(config)
    expected, expected_history, expected_val, expected_test = run_dp_ease(config, local,
                                                                          catalog=catalog, run_dir=tmp_path / "local")
    release, history, val, test = run_dp_ease(config, grid, catalog=catalog, run_dir=tmp_path / "grid")
    assert history.top_items > 1 and not history.stopped_by_budget  # both phases ran, with a real Gram
    for name, value in expected.to_arrays().items():
        np.testing.assert_array_equal(release.to_arrays()[name], value, err_msg=name)
    assert [p["aggregated"] for p in history.phases] == [p["aggregated"] for p in expected_history.phases] == [USERS] * 2
    assert history.rejected == 0 and history.privacy["epsilon"] == expected_history.privacy["epsilon"]
    fields = ("kind", "mechanism", "noise_multiplier", "sample_rate", "clipping_norm", "clients")

    def releases(run: str) -> list[tuple[object, ...]]:
        entries = read_entries(tmp_path / run / LEDGER).entries
        return [tuple(e.get(f) for f in fields) for e in entries if e.get("kind") == "release"]

    assert releases("grid") == releases("local") and len(releases("grid")) == 2
    assert val == pytest.approx(expected_val, abs=1e-12) and test == pytest.approx(expected_test, abs=1e-12)
    # two phases, each one message per device carrying only the statistic
    assert [u["devices"] for u in grid.uploads] == [USERS, USERS]
    assert 4 * split.n_items <= grid.uploads[0]["bytes_per_device"] < 4 * split.n_items + 256  # float32 + npy header
    assert grid.upload_contents == {"arrays:arrays": ["gram_upper"]}


def test_a_failing_device_is_counted_and_left_out_of_the_sum(tmp_path: Path) -> None:
    config = _config(tmp_path, dp="off")
    split = simulated_population(config).split
    grid_nodes = _simulated_grid()
    broken = 1000 - 7 * 3
    grid_nodes.contexts[broken].node_config["partition-id"] = USERS + 50  # no such user: the app raises
    grid = GridStatistics(grid_nodes, config, n_items=split.n_items, expected_nodes=USERS, patience=1)
    replies = list(grid.statistics(grid.clients(), "counts", {}))
    assert sum(r is None for r in replies) == 1 and len(replies) == USERS


@pytest.fixture()
def fleet(ml100k: Interactions, tmp_path: Path) -> tuple[RunConfig, dict[int, dict[str, Any]]]:
    config = parse_run_config({"model": "dp-ease", "seed": 2, "clipping-norm": 0.5, "ledger-key": str(tmp_path / "k.pem")})
    devices = split_fleet(ml100k, tmp_path / "devices", devices=3, rating_threshold=0.0, rng=np.random.default_rng(3))
    for k, device in enumerate(devices):
        save_state(DeviceFiles.beside(device.data_path), DeviceState(device_seed=100 + k))
    return config, {10 + k: {"data-path": str(d.data_path)} for k, d in enumerate(devices)}


def fleet_catalog(nodes: dict[int, dict[str, Any]]) -> Catalog:
    """The public catalogue the fleet's devices hold (the server's copy of it)."""
    return load_catalog(DeviceFiles.beside(Path(next(iter(nodes.values()))["data-path"])).catalog)


def test_real_devices_answer_with_their_own_statistic_and_metrics(fleet: tuple[RunConfig, dict[int, dict[str, Any]]]) -> None:
    config, nodes = fleet
    grid = GridStatistics(InlineGrid(nodes), config, n_items=1682, expected_nodes=3, patience=1, client_order=False)
    data = {node: LocalDevice.open(cfg["data-path"], config).device.data for node, cfg in nodes.items()}
    counts = [r for r in grid.statistics(grid.clients(), "counts", {}) if isinstance(r, dict)]  # one dict per device
    for node, reply in zip(grid.clients(), counts, strict=True):
        expected = device_statistic(data[node], phase="counts", request={}, clipping_norm=0.5)
        np.testing.assert_array_equal(reply[COUNTS], expected[COUNTS])
        assert np.linalg.norm(reply[COUNTS]) <= 0.5
    total = np.sum([r[COUNTS].astype(np.float64) for r in counts], axis=0)
    request = {"top_items": select_top_items(total, noise_std=0.0, threshold=0.0, max_items=30), "pair_decay": np.array([0.9])}
    for node, gram in zip(grid.clients(), grid.statistics(grid.clients(), "gram", request), strict=True):
        expected = device_statistic(data[node], phase="gram", request=request, clipping_norm=0.5)
        assert isinstance(gram, dict) and gram.keys() == expected.keys()
        np.testing.assert_array_equal(gram["gram_upper"], expected["gram_upper"])
    release = {
        "top_items": request["top_items"], "weights": np.eye(30, dtype=np.float32) * 0.1,
        "prior": np.linspace(0, 1, 1682, dtype=np.float32),
    }
    metrics = grid.evaluate(grid.clients(), release, "test")
    assert sorted(metrics, key=str) == sorted((device_evaluate(d, release=release, which="test") for d in data.values()), key=str)
    for cfg in nodes.values():  # each device keeps the release and recommends from it, on the device
        state = load_state(DeviceFiles.beside(cfg["data-path"]))
        assert state.shared is not None and state.shared.keys() == release.keys()
        recs = recommend(Path(cfg["data-path"]).parent, k=5)
        assert recs.source == "federated" and "DP-EASE" in recs.reason, recs.reason


def test_outbox_guard_refuses_a_statistics_reply_with_anything_more(
    fleet: tuple[RunConfig, dict[int, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, nodes = fleet
    leaky = DpEaseFamily.device_statistic

    def with_extra(*args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        return {**leaky(*args, **kwargs), "history": np.arange(3)}

    monkeypatch.setattr(DpEaseFamily, "device_statistic", with_extra)  # what the device app calls
    config_record = ConfigRecord(
        {protocol.RUN_CONFIG: protocol.encode_run_config(config.to_flat()), protocol.SERVER_ROUND: 1, protocol.PHASE: "counts"}
    )
    msg = Message(
        RecordDict({protocol.ARRAYS: to_record({}), protocol.CONFIG: config_record}),
        dst_node_id=10, message_type=protocol.STATISTICS, group_id="1",
    )
    context = Context(run_id=1, node_id=10, node_config=nodes[10], state=RecordDict(), run_config={})
    with pytest.raises(Exception, match="outbox guard: a statistics reply may carry only the clipped statistic"):
        device_module.app(message=msg, context=context)


def test_secure_aggregation_gives_the_sum_of_the_device_statistics(
    fleet: tuple[RunConfig, dict[int, dict[str, Any]]], tmp_path: Path
) -> None:
    config, nodes = fleet
    grid = InlineGrid(nodes)
    secure = SecAggStatistics(
        grid, config, context=Context(1, 0, {}, RecordDict(), {}), n_items=1682, expected_nodes=3, timeout=60, patience=1
    )
    data = [LocalDevice.open(cfg["data-path"], config).device.data for cfg in nodes.values()]
    top = np.array([49, 99, 180, 257, 0, 3], dtype=np.int64)
    step = 2 * config.privacy.clipping_norm / 4194304  # SecAgg+'s quantization step
    for phase, request in (("counts", {}), ("gram", {"top_items": top, "pair_decay": np.array([0.9])})):
        [reply] = list(secure.statistics(secure.clients(), phase, request))
        assert isinstance(reply, Part) and reply.contributors == 3
        name = "item_counts" if phase == "counts" else "gram_upper"
        plain = np.sum([device_statistic(d, phase=phase, request=request, clipping_norm=0.5)[name] for d in data], axis=0)
        np.testing.assert_allclose(reply.update[name], plain, atol=3 * step + 1e-6)
    # the float statistic never left a device: the masked stage carries integers only
    masked = [m for m in grid.sent if Key.MASKED_PARAMETERS in m.content.config_records.get(RECORD_KEY_CONFIGS, {})]
    assert len(masked) == 6 and all(not any(len(r) for r in m.content.array_records.values()) for m in masked)
    # end to end: both releases from secure sums, in the ledger with all three devices
    release, history, _, test = run_dp_ease(config, secure, catalog=fleet_catalog(nodes), run_dir=tmp_path / "secure")
    assert [p["aggregated"] for p in history.phases] == [3.0, 3.0] and history.rejected == 0
    entries = read_entries(tmp_path / "secure" / LEDGER).entries
    assert [e["clients"] for e in entries if e.get("kind") == "release"] == [3, 3]
    assert 0.0 <= test["ndcg@10"] <= 1.0 and release.prior.shape == (1682,)


def _evaluations(grid: InlineGrid) -> int:
    """Evaluation replies the server has received."""
    return sum(r.metadata.message_type == protocol.EASE_EVALUATE for r in grid.sent)


def test_real_devices_release_their_metrics_through_the_ledger(
    fleet: tuple[RunConfig, dict[int, dict[str, Any]]], tmp_path: Path
) -> None:
    config, nodes = fleet
    inline = InlineGrid(nodes)
    grid = GridStatistics(inline, config, n_items=1682, expected_nodes=3, patience=1, client_order=False, private_evaluation=True)
    results = run_ease_and_report(config, tmp_path / "run", engine="flower-deployment", transport=grid,
                                  catalog=fleet_catalog(nodes))
    assert _evaluations(inline) == 6  # validation and test, each device asked once
    entries = read_entries(tmp_path / "run" / LEDGER).entries
    releases = [e for e in entries if e.get("kind") == "release"]
    assert entries[0]["evaluation"] == PRIVATE and entries[-1]["kind"] == "close" and not entries[-1]["stopped_by_budget"]
    assert [e["purpose"] for e in releases[2:]] == [
        "evaluation: val metrics of the DP-EASE release", "evaluation: test metrics of the DP-EASE release"]
    d = len(METRIC_NAMES)
    assert all(e["mechanism"] == MECHANISM and e["clipping_norm"] == math.sqrt(d) and e["sample_rate"] == 1.0
               and e["noise_multiplier"] == config.privacy.eval_noise_multiplier and e["clients"] == 3 for e in releases[2:])
    # the released metrics are the Gaussian sum of the devices' own metrics over the devices asked
    model = read_arrays(tmp_path / "run" / MODEL)
    data = [LocalDevice.open(cfg["data-path"], config).device.data for cfg in nodes.values()]
    rng = evaluation_generator(seed=config.seed, secure=False, resumes=0)
    for which, block in (("val", "validation"), ("test", "test")):
        exact = clipped_metrics([device_evaluate(x, release=model, which=which) for x in data], METRIC_NAMES)
        noise = rng.normal(0.0, config.privacy.eval_noise_multiplier * math.sqrt(d), size=d)
        raw = [results["released"][block]["metrics"][m]["raw"] for m in METRIC_NAMES]  # the shown values are clamped
        np.testing.assert_allclose(raw, (exact.sum(axis=0) + noise) / 3, rtol=1e-12)
        shown = results if which == "test" else results["validation"]
        assert all(shown[m] == min(max(r, 0.0), 1.0) for m, r in zip(METRIC_NAMES, raw, strict=True))
    # epsilon composes the two phases and both evaluations, calibrated to the budget in the ledger's order
    report = audit_run(tmp_path / "run")
    assert report.code == OK and report.releases == 4 and not results["stopped_by_budget"]
    assert results["epsilon"] == report.epsilon_prv and 0.95 * config.privacy.epsilon < report.epsilon_prv <= config.privacy.epsilon
    doc = audit_document(tmp_path / "run", prv_points=0)
    assert doc["evaluation"]["private"] is True and doc["evaluation"]["releases"] == [3, 4]


def test_an_evaluation_over_the_budget_asks_no_device_and_the_run_stops(
    fleet: tuple[RunConfig, dict[int, dict[str, Any]]], tmp_path: Path
) -> None:
    # fixed z = 1.5 for both phases (epsilon 4.10), then z = 2 per evaluation: the validation
    # fits a budget of 5 (4.73), the test would not (5.31)
    config, nodes = fleet
    config = replace(config, privacy=replace(config.privacy, epsilon=5.0, noise_multiplier=1.5, eval_noise_multiplier=2.0))
    inline = InlineGrid(nodes)
    grid = GridStatistics(inline, config, n_items=1682, expected_nodes=3, patience=1, client_order=False, private_evaluation=True)
    results = run_ease_and_report(config, tmp_path / "run", engine="flower-deployment", transport=grid,
                                  catalog=fleet_catalog(nodes))
    assert _evaluations(inline) == 3  # the validation only: no device was asked for test metrics
    assert all(math.isfinite(results["validation"][m]) for m in METRIC_NAMES)
    assert all(math.isnan(results[m]) for m in METRIC_NAMES) and results["stopped_by_budget"]
    entries = read_entries(tmp_path / "run" / LEDGER).entries
    assert [e["purpose"] for e in entries if e.get("kind") == "release"][2:] == ["evaluation: val metrics of the DP-EASE release"]
    report = audit_run(tmp_path / "run")
    assert report.code == OK and report.stopped_by_budget and report.releases == 3 and report.epsilon_prv <= 5.0
