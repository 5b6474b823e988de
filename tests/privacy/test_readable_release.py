"""Released metrics a person can read: clamped to [0, 1], with the noise sigma of their
release read from its signed ledger entry, labelled not informative when sigma exceeds a
quarter of the range; the same on the terminal, in results.json, demo.json and the audit page."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.privacy import eval_release
from fedrec.privacy.eval_release import PRIVATE, clipped_metrics, noisy_mean, release_metrics
from fedrec.privacy.ledger import LEDGER, read_entries
from fedrec.privacy.readable import (
    METRIC_MECHANISM,
    ShownMetric,
    audit_metrics,
    devices_for_noise_std,
    metric_release,
    metric_releases,
    readable_results,
    released_lines,
    released_summary,
    shown_metric,
)
from fedrec.privacy.report import audit_document
from fedrec.privacy.report_html import render_html
from fedrec.privacy.session import PrivacySession

NAMES = ("hr@10", "ndcg@10")


def test_the_mechanism_name_is_eval_releases() -> None:
    assert METRIC_MECHANISM == eval_release.MECHANISM


def test_a_shown_metric_is_clamped_and_says_its_noise() -> None:
    # 10 devices, 5 metrics, z = 20: sigma = 20 sqrt(5) / 10 = 4.472
    sigma = 20 * math.sqrt(5) / 10
    high = shown_metric("hr@10", 2.003, noise_std=sigma, devices=10)
    assert (high.value, high.raw, high.clamped, high.informative) == (1.0, 2.003, True, False)
    assert high.text() == "HR@10 1.000 (clamped; noise σ 4.47 — not informative at 10 devices)"
    low = shown_metric("full_ndcg@10", -6.242, noise_std=sigma, devices=10)
    assert low.value == 0.0 and low.text() == "full NDCG@10 0.000 (clamped; noise σ 4.47 — not informative at 10 devices)"
    good = shown_metric("ndcg@10", 0.31249, noise_std=0.0047, devices=943)
    assert good.informative and not good.clamped and good.text() == "NDCG@10 0.312 (noise σ 0.0047 at 943 devices)"
    assert shown_metric("ndcg@10", 0.3).text() == "NDCG@10 0.300"  # exact (a simulation): no noise to state
    assert shown_metric("hr@10", math.nan).text() == "HR@10 not released"
    assert shown_metric("hr@10", "6.9").text() == "HR@10 not released"  # not a number from JSON
    edge = ShownMetric("hr@10", 0.5, noise_std=0.25, devices=1)
    assert edge.informative and not ShownMetric("hr@10", 0.5, noise_std=0.2501, devices=1).informative


def test_devices_needed_for_a_sigma_of_one_hundredth() -> None:
    # z sqrt(d) / 0.01: 20 sqrt(5) / 0.01 = 4472.1 -> 4473; 10 sqrt(4) / 0.01 = 2000 exactly
    assert devices_for_noise_std(noise_multiplier=20.0, n_metrics=5) == 4473
    assert devices_for_noise_std(noise_multiplier=10.0, n_metrics=4) == 2000
    assert 20.0 * math.sqrt(5) / 4473 <= 0.01 < 20.0 * math.sqrt(5) / 4472


def _session(run_dir: Path, *, budget: float = 1e6) -> PrivacySession:
    return PrivacySession(
        run_dir=run_dir, key=Ed25519PrivateKey.generate(), accountant="rdp", delta=1e-5, budget=budget, population=4,
        sample_rate=1.0, noise_multiplier=1.0, clipping_norm=1.0, config_hash="c" * 64, evaluation=PRIVATE,
    )


def test_a_hand_computed_release_is_clamped_with_the_ledgers_sigma(tmp_path: Path) -> None:
    """3 of 4 devices asked reply; z = 2, d = 2: sigma = 2 sqrt(2) / 4 = 0.7071."""
    s = _session(tmp_path)
    replies = [{"hr@10": 1.0, "ndcg@10": 0.5}, {"hr@10": 0.0, "ndcg@10": 0.25}, {"hr@10": 1.0, "ndcg@10": 1.0}]
    released = release_metrics(s, lambda: replies, names=NAMES, purpose="evaluation: test metrics after round 3",
                               noise_multiplier=2.0, expected_users=4, rng=np.random.default_rng(7))
    s.close(stopped_by_budget=False)
    assert released is not None
    # by hand: (sum + the generator's draws) / 4
    noise = np.random.default_rng(7).normal(0.0, 2.0 * math.sqrt(2), size=2)
    expected = {"hr@10": (2.0 + noise[0]) / 4, "ndcg@10": (1.75 + noise[1]) / 4}
    assert released == pytest.approx(expected)
    entries = read_entries(tmp_path / LEDGER).entries
    entry = entries[-2]
    assert (entry["clients"], entry["devices_asked"], entry["noise_multiplier"]) == (3, 4, 2.0)
    release = metric_release(entry)
    assert release is not None and (release.split, release.round) == ("test", 3)
    assert release.noise_std == pytest.approx(2.0 * math.sqrt(2) / 4)
    out = readable_results({"dataset": "x", **released, "validation": {}}, entries)
    for name in NAMES:
        shown = out["released"]["test"]["metrics"][name]
        assert out[name] == min(max(expected[name], 0.0), 1.0) == shown["value"]
        assert shown["raw"] == pytest.approx(expected[name])
        assert shown["clamped"] == (not 0.0 <= expected[name] <= 1.0)
        assert shown["noise_std"] == pytest.approx(0.7071, abs=1e-4) and shown["informative"] is False
        assert shown["text"].endswith("noise σ 0.707 — not informative at 4 devices)")
    assert out["released"]["test"]["devices_asked"] == 4


def test_an_entry_without_devices_asked_gives_an_upper_bound() -> None:
    entry = {"kind": "release", "release": 1, "mechanism": METRIC_MECHANISM, "purpose": "evaluation: val metrics after round 2",
             "noise_multiplier": 20.0, "clipping_norm": math.sqrt(5), "clients": 8}
    release = metric_release(entry)
    assert release is not None and not release.devices_recorded
    assert release.noise_std == pytest.approx(20 * math.sqrt(5) / 8)
    assert metric_release({**entry, "mechanism": "gaussian-sum/item-counts"}) is None
    # the split is what the purpose begins with, whatever a tuning try's label says
    tuning = metric_release({**entry, "purpose": "evaluation: validation metrics of tuning try 1 (x=test)"})
    assert tuning is not None and (tuning.split, tuning.round) == ("val", None)
    assert metric_release({**entry, "purpose": "something else: test"}).split is None
    assert metric_release({**entry, "clients": 0}) is None


def test_exact_results_are_left_alone() -> None:
    results = {"hr@10": 0.4, "curve": [{"round": 1.0, "hr@10": 0.3}]}
    assert readable_results(results, []) == results
    assert released_lines(results) == [] and released_summary(results) == {}


def _entry(number: int, purpose: str, *, z: float, d: int, n: int) -> dict[str, object]:
    return {"kind": "release", "release": number, "mechanism": METRIC_MECHANISM, "purpose": purpose,
            "noise_multiplier": z, "clipping_norm": math.sqrt(d), "clients": n, "devices_asked": n, "sample_rate": 1.0}


SHOWN_NUMBER = re.compile(r"^(?:full )?[A-Za-z]+@\d+ (-?[0-9.]+)")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    z=st.floats(min_value=1e-3, max_value=1e4), n=st.integers(min_value=1, max_value=10**6),
    d=st.integers(min_value=1, max_value=5), replies=st.integers(min_value=0, max_value=12),
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=60, max_size=60),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_no_released_metric_is_shown_outside_its_range(
    z: float, n: int, d: int, replies: int, values: list[float], seed: int
) -> None:
    names = ("hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10", "recall@20")[:d]
    rows = [{name: values[(u * d + j) % len(values)] for j, name in enumerate(names)} for u in range(replies)]
    raw = noisy_mean(clipped_metrics(rows, names), noise_multiplier=z, expected_users=n, rng=np.random.default_rng(seed))
    metrics = dict(zip(names, map(float, raw)))
    entries = [{"kind": "header"}, _entry(1, "evaluation: val metrics after round 1", z=z, d=d, n=n),
               _entry(2, "evaluation: test metrics after round 1", z=z, d=d, n=n)]
    results = {**metrics, "validation": dict(metrics), "curve": [{"round": 1.0, **metrics}]}
    out = readable_results(results, entries)
    sigma = z * math.sqrt(d) / n
    for where in (out, out["validation"], out["curve"][0]):
        assert all(0.0 <= where[name] <= 1.0 for name in names)
    for block in (out["released"]["test"], out["released"]["validation"], out["released"]["curve"][0]):
        assert block["noise_std"] == pytest.approx(sigma)
        for name, m in block["metrics"].items():
            assert m["raw"] == metrics[name] and 0.0 <= m["value"] <= 1.0
            assert 0.0 <= float(SHOWN_NUMBER.match(m["text"]).group(1)) <= 1.0
            assert ("not informative" in m["text"]) == (sigma > 0.25)
            assert f"noise σ {sigma:.3g}" in m["text"]
    lines = released_lines(out)
    assert len(lines) == 1 + d and all(0.0 <= float(SHOWN_NUMBER.match(line).group(1)) <= 1.0 for line in lines[1:])
    # the audit page: every value shown is in range, whatever results.json claims at top level
    shown = audit_metrics(entries, {**metrics, "released": out["released"]})
    assert [m["name"] for m in shown] == list(names) and all(0.0 <= m["value"] <= 1.0 for m in shown)
    page = render_html({"evaluation": {"private": True, "statement": "s", "releases": [1, 2], "metrics": shown},
                        **_doc_skeleton()})
    assert all(0.0 <= float(v) <= 1.0 for v in re.findall(r'class="metric-value">([^<]+)<', page))


def _doc_skeleton() -> dict[str, object]:
    """The smallest report dict render_html takes (no rounds, no releases)."""
    return {
        "schema": "s", "run_dir": "r", "problems": [], "warnings": [], "rounds": 0, "recorded_epsilon": None,
        "closed": True, "stopped_by_budget": False, "resumes": 0, "unused_rounds": 0, "rejected": None,
        "verdict": {"status": "verified", "code": 0, "reason": "ok", "entries_verified": True},
        "key": {"header_fingerprint": None, "checked_fingerprint": None, "source": "run folder", "matches": None},
        "run": {"run_id": None, "config_hash": None}, "phases": [], "per_round": [], "resume_events": [],
        "epsilon": {"accountant": "rdp", "headline": None, "prv": None, "rdp": None, "delta": None, "budget": None,
                    "rounds_only": None},
        "other_releases": [], "empirical": None,
    }


def test_tuning_tries_and_round_log_rows_use_their_own_release() -> None:
    entries = [_entry(3, "evaluation: validation metrics of tuning try 1 (a)", z=1.0, d=2, n=100),
               _entry(6, "evaluation: validation metrics of tuning try 2 (b)", z=50.0, d=2, n=100)]
    results = {"tries": [{"try": 1, "validation": {"ndcg@10": 0.2}, "releases": [1, 2, 3]},
                         {"try": 2, "validation": {"ndcg@10": -0.4}, "releases": [4, 5, 6]}]}
    out = readable_results(results, entries)
    assert [t["validation"]["ndcg@10"] for t in out["tries"]] == [0.2, 0.0]
    first, second = out["released"]["tries"]
    assert first["noise_std"] == pytest.approx(math.sqrt(2) / 100) and first["informative"]
    assert second["noise_std"] == pytest.approx(50 * math.sqrt(2) / 100) and not second["informative"]
    log = readable_results({"round_log": [{"round": 1.0, "ndcg@10": 3.0}, {"round": 2.0, "loss": 1.0}]},
                           [_entry(1, "evaluation: val metrics after round 1", z=1.0, d=1, n=1)])["round_log"]
    assert log == [{"round": 1.0, "ndcg@10": 1.0}, {"round": 2.0, "loss": 1.0}]


# ---- end to end: a 10-device release at the demo's settings ---------------------------------------------------

# the demo's privacy settings (server/demo.py: 10 devices, all in every round, 5 rounds, epsilon 50 by RDP, the
# default eval-noise-multiplier 20); a smaller NeuMF than its default, which changes nothing in the release
DEMO = {"model": "neumf", "num-rounds": 5, "clients-per-round": 10, "eval-every": 0, "epsilon": 50.0, "accountant": "rdp",
        "gmf-dim": 8, "mlp-layers": "16,8"}


def _check_run(run_dir: Path, results: dict[str, object], *, releases: int) -> None:
    """Headline metrics in range; sigma = the ledger entry's z C / n; terminal audit, JSON
    and page all show sigma for every metric release."""
    from fedrec.evaluation.metrics import METRIC_NAMES

    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["released"] == results["released"]
    for name in METRIC_NAMES:
        assert 0.0 <= on_disk[name] <= 1.0, (name, on_disk[name])
        assert on_disk["released"]["test"]["metrics"][name]["value"] == on_disk[name]
    for row in on_disk["curve"]:
        assert all(0.0 <= row[n] <= 1.0 for n in METRIC_NAMES if n in row and not math.isnan(row[n]))
    entries = read_entries(run_dir / LEDGER).entries
    metric_entries = [e for e in entries if e.get("mechanism") == METRIC_MECHANISM]
    assert len(metric_entries) == len(metric_releases(entries)) == releases
    test_entry = [e for e in metric_entries if "test" in e["purpose"]][-1]
    sigma = test_entry["noise_multiplier"] * test_entry["clipping_norm"] / test_entry["devices_asked"]
    assert test_entry["devices_asked"] == 10 and sigma == pytest.approx(20 * math.sqrt(len(METRIC_NAMES)) / 10)
    assert on_disk["released"]["test"]["noise_std"] == pytest.approx(sigma)
    assert on_disk["released"]["test"]["informative"] is False
    # the terminal audit
    out = CliRunner().invoke(app, ["audit", str(run_dir)], terminal_width=400)
    assert out.exit_code == 0, out.output
    sigma_lines = [line for line in out.output.splitlines() if line.startswith("release ")]
    assert len(sigma_lines) == releases and all(f"noise σ {sigma:.3g}" in line for line in sigma_lines)
    assert all("not informative" in line for line in sigma_lines)
    lines = out.output.splitlines()
    shown = lines[lines.index("test metrics (results.json, not signed; clamped to [0, 1]):") + 1:]
    assert len(shown) >= len(METRIC_NAMES)
    assert all(0.0 <= float(SHOWN_NUMBER.match(line.strip()).group(1)) <= 1.0 for line in shown[: len(METRIC_NAMES)])
    # the audit document and page
    doc = audit_document(run_dir, prv_points=0)
    metric_rows = [r for r in doc["other_releases"] if r["mechanism"] == METRIC_MECHANISM]
    assert len(metric_rows) == releases and all(r["noise_std"] == pytest.approx(sigma) for r in metric_rows)
    assert [m["name"] for m in doc["evaluation"]["metrics"]] == list(METRIC_NAMES)
    assert all(0.0 <= m["value"] <= 1.0 and m["noise_std"] == pytest.approx(sigma) for m in doc["evaluation"]["metrics"])
    page = render_html(doc)
    assert page.count('class="metric-sigma"') == releases
    assert all(float(v) == pytest.approx(sigma, rel=1e-2) for v in re.findall(r'class="metric-sigma">([^<]+)<', page))
    assert all(0.0 <= float(v) <= 1.0 for v in re.findall(r'class="metric-value">([^<]+)<', page))
    assert "not informative" in page


def test_a_ten_device_deployment_at_the_demos_settings_shows_no_metric_outside_its_range(
    data_dir: Path, tmp_path: Path
) -> None:
    from fedrec.config import parse_run_config
    from fedrec.experiments.run import run_and_report
    from fedrec.federation.rounds import InProcessTransport

    class DeviceFleet(InProcessTransport):
        private_evaluation = True  # stands in for real devices: their metrics are releases

    config = parse_run_config({**DEMO, "data-dir": str(data_dir), "max-users": 10, "seed": 0,
                               "ledger-key": str(tmp_path / "keys" / "ledger.pem")})
    run_dir = tmp_path / "run"
    results = run_and_report(config, DeviceFleet(config, 10), out_dir=run_dir, engine="test", references=False)
    _check_run(run_dir, results, releases=2)  # final validation and test (eval-every 0)
    summary = released_summary(results)
    assert summary["metrics_informative"] is False and set(summary["metrics"]) == set(results["released"]["test"]["metrics"])


def test_a_ten_device_dp_ease_deployment_shows_no_metric_outside_its_range(data_dir: Path, tmp_path: Path) -> None:
    from fedrec.config import parse_run_config
    from fedrec.deploy.catalog import run_catalog
    from fedrec.dpease.report import run_ease_and_report
    from fedrec.dpease.run import InProcessStatistics
    from fedrec.federation.device import simulated_population

    class DeviceStatistics(InProcessStatistics):
        private_evaluation = True

    config = parse_run_config({"model": "dp-ease", "data-dir": str(data_dir), "max-users": 10, "seed": 0,
                               "epsilon": 50.0, "ledger-key": str(tmp_path / "keys" / "ledger.pem")})
    split = simulated_population(config).split
    run_dir = tmp_path / "run"
    results = run_ease_and_report(config, run_dir, engine="test",
                                  transport=DeviceStatistics(split, clipping_norm=config.privacy.clipping_norm),
                                  catalog=run_catalog(config))  # the devices are simulated from the data set
    _check_run(run_dir, results, releases=2)
    assert all(0.0 <= v <= 1.0 for v in results["validation"].values())
    assert results["released"]["validation"]["metrics"]["hr@10"]["value"] == results["validation"]["hr@10"]
