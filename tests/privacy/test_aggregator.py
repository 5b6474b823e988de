"""The round loop's aggregators: plain mean, and DP that owns its numbers and reports
what practitioners ask for when DP hurts (clipped share, update norms, signal/noise)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fedrec.config import RunConfig
from fedrec.federation.rounds import InProcessTransport, run_federated
from fedrec.privacy.aggregator import MeanAggregator, round_diagnostics
from fedrec.privacy.dp_fedavg import DPFedAvg, Part, clipped_sum


def _updates() -> list[dict[str, np.ndarray]]:
    # norms 0.5, 1.0, 3.0, 4.0 (3-4-5 style vectors)
    return [{"w": np.array([0.3, 0.4], np.float32) * s} for s in (1, 2, 6, 8)]


def test_clipped_share_and_norm_quantiles() -> None:
    like = {"w": np.zeros(2, np.float32)}
    summed = clipped_sum((Part(u) for u in _updates()), max_norm=2.0, like=like)
    assert summed.clipped == 2 and summed.contributors == 4
    np.testing.assert_allclose(summed.norms, [0.5, 1.0, 3.0, 4.0], rtol=1e-6)
    info = round_diagnostics(summed, snr=1.0)
    assert info["clipped_share"] == 0.5
    assert info["update_norm_median"] == pytest.approx(2.0, rel=1e-6)
    assert info["update_norm_p10"] < info["update_norm_median"] < info["update_norm_p90"]
    # the clipped sum: 0.5 + 1.0 + 2.0 + 2.0 along the same direction
    np.testing.assert_allclose(summed.total["w"], np.array([0.6, 0.8]) * 5.5, rtol=1e-6)


def test_signal_to_noise_is_the_sum_norm_over_the_expected_noise_norm() -> None:
    like = {"w": np.zeros(2, np.float32)}
    summed = clipped_sum((Part(u) for u in _updates()), max_norm=2.0, like=like)
    dp = DPFedAvg(noise_multiplier=0.5, clipping_norm=2.0, expected_clients=4.0)
    assert dp.signal_to_noise(summed) == pytest.approx(5.5 / (0.5 * 2.0 * math.sqrt(2)), rel=1e-6)
    assert DPFedAvg(noise_multiplier=0.0, clipping_norm=2.0, expected_clients=4.0).signal_to_noise(summed) == math.inf


def test_the_mean_aggregator_is_fedavg_and_idle_without_replies() -> None:
    like = {"w": np.zeros(2, np.float32)}
    agg = MeanAggregator()
    assert agg.aggregate([], like=like, round_=1, local_epsilon=0.0) is None
    ups = _updates()
    got = agg.aggregate([Part(ups[0]), Part({"w": ups[1]["w"] + ups[2]["w"]}, contributors=2)], like=like, round_=1, local_epsilon=0.0)
    assert got is not None
    np.testing.assert_allclose(got["w"], (ups[0]["w"] + ups[1]["w"] + ups[2]["w"]) / 3, rtol=1e-6)


def test_a_dp_run_logs_the_diagnostics_every_round(tiny_config: RunConfig, tmp_path: Path) -> None:
    from fedrec.federation.device import simulated_population

    n = simulated_population(tiny_config).split.n_users
    model = tiny_config.model.build(simulated_population(tiny_config).split.n_items)
    _, history, _ = run_federated(tiny_config, InProcessTransport(tiny_config, n), model=model, run_dir=tmp_path / "run")
    for info in history.rounds:
        assert {"clipped_share", "update_norm_median", "signal_to_noise", "epsilon"} <= set(info)
        assert 0 <= info["clipped_share"] <= 1 or math.isnan(info["clipped_share"])
        assert info["signal_to_noise"] > 0
