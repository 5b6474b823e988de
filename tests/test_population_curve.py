"""A small population curve (two sizes, two epsilons) end to end: every point a real
audited run, the ratios to the noiseless model, the planner's prediction beside them."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

from fedrec.privacy.audit import OK, audit_run

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("population_curve", REPO / "simulations" / "population_curve.py")
assert _spec is not None and _spec.loader is not None
curve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(curve)


def test_a_small_curve_writes_audited_points_ratios_and_predictions(tmp_path: Path) -> None:
    settings = ["--epsilons", "8,inf", "--items", "300", "--interactions", "12", "--eval-users", "150"]
    first = curve.main(["--users", "200", *settings, "--out", str(tmp_path / "small")])
    # the larger population joins the first curve without running it again
    out = tmp_path / "curve"
    rows = curve.main(["--users", "600", *settings, "--add-to", str(tmp_path / "small" / "curve.csv"), "--out", str(out)])
    assert [(r["users"], r["epsilon_target"]) for r in rows] == [(200, math.inf), (200, 8.0), (600, math.inf), (600, 8.0)]
    for kept, ran in zip(rows[:2], first):
        assert {k: kept[k] for k in curve.COLUMNS} == pytest.approx({k: ran[k] for k in curve.COLUMNS}, nan_ok=True)
    with (out / "curve.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and (out / "curve.png").stat().st_size > 0
    for row in rows:
        if math.isinf(row["epsilon_target"]):
            assert row["audit"] == "no DP" and row["ratio_full_ndcg@10"] == 1.0 and row["predicted_ratio"] == 1.0
            continue
        assert row["audit"] == "verified" and audit_run(Path(row["run_dir"])).code == OK
        assert row["epsilon"] == pytest.approx(8.0, abs=0.01)
        assert row["ratio_full_ndcg@10"] == pytest.approx(row["full_ndcg@10"] / row["noiseless_full_ndcg@10"])
        # the prediction lies between the popularity floor and the noiseless model
        floor = row["popularity_full_ndcg@10"] / row["noiseless_full_ndcg@10"]
        assert min(floor, 1.0) <= row["predicted_ratio"] <= max(floor, 1.0)
    # popularity and EASE are the same for every epsilon of a population (same split, same users)
    assert rows[0]["ease_full_ndcg@10"] == rows[1]["ease_full_ndcg@10"] > 0


def test_the_crossing_is_where_the_ratio_stays_above_the_level() -> None:
    rows = [{"users": n, "epsilon_target": 8.0, "ratio_full_ndcg@10": r} for n, r in ((10, 0.92), (100, 0.88), (1000, 0.95), (10_000, 0.97))]
    assert curve.crossing(rows, epsilon=8.0, level=0.9) == 1000.0  # 10 reaches it, 100 falls back below
    assert curve.crossing(rows, epsilon=8.0, level=0.99) is None
    assert curve.crossing(rows, epsilon=4.0, level=0.9) is None


def test_adding_to_a_curve_replaces_its_populations_and_keeps_one_data_set() -> None:
    kept = [{"dataset": "synthetic", "users": n, "epsilon_target": e} for n in (10, 100) for e in (math.inf, 8.0)]
    new = [{"dataset": "synthetic", "users": 100, "epsilon_target": e, "new": True} for e in (8.0, math.inf)]
    rows = curve.merged(kept, new, dataset="synthetic")
    assert [(r["users"], r["epsilon_target"], "new" in r) for r in rows] == [
        (10, math.inf, False), (10, 8.0, False), (100, math.inf, True), (100, 8.0, True)]
    with pytest.raises(SystemExit, match="ml-100k"):
        curve.merged(kept, new, dataset="ml-100k")
