"""The fit's fallback: a noisy Gram with no eigenvalue above the noise edge releases the
DP popularity prior alone, so at a tiny epsilon the ranking is the prior's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrec.client import simulated_population
from fedrec.config import parse_run_config
from fedrec.dpease.central import simulate_release
from fedrec.dpease.fit import fit_release, noise_edge, signal_directions
from fedrec.dpease.statistics import packed_size

SYNTHETIC = {
    "model": "dp-ease", "dataset": "synthetic", "synthetic-users": 150, "synthetic-items": 200,
    "synthetic-interactions": 12, "num-eval-negatives": 20, "seed": 1,
}


def _noise(k: int, std: float, rng: np.random.Generator) -> np.ndarray:
    upper = np.triu(rng.normal(0.0, std, size=(k, k)))
    return upper + np.triu(upper, 1).T


@pytest.mark.parametrize("k", [20, 150, 400])
def test_pure_noise_stays_below_the_edge(k: int) -> None:
    rng = np.random.default_rng(k)
    for _ in range(10):
        assert signal_directions(_noise(k, 0.7, rng), noise_std=0.7) == 0


def test_a_planted_direction_above_the_edge_is_found() -> None:
    rng = np.random.default_rng(3)
    k, std = 200, 0.5
    direction = rng.normal(size=k)
    direction /= np.linalg.norm(direction)
    signal = 2.0 * noise_edge(std, k) * np.outer(direction, direction)
    assert signal_directions(signal + _noise(k, std, rng), noise_std=std) == 1
    assert signal_directions(signal, noise_std=0.0) == k  # without noise every direction counts


def test_a_gram_of_pure_noise_releases_the_prior_alone() -> None:
    rng = np.random.default_rng(0)
    n_items, k, std = 50, 30, 2.0
    counts = rng.normal(10.0, 5.0, size=n_items)
    top = np.argsort(-counts)[:k]
    packed = rng.normal(0.0, std, size=packed_size(k))
    release = fit_release(
        counts=counts, top_items=top, gram_packed=packed, count_noise_std=1.0, gram_noise_std=std,
        noise_scale=2.0, base_scale=5.0, eigen_floor=0.5, prior_weight=0.001,
    )
    assert release.top_items.shape == (0,)
    history = (rng.random((5, n_items)) < 0.2).astype(float)
    scores = release.score(history)
    assert np.array_equal(np.argsort(-scores, axis=1, kind="stable"), np.tile(np.argsort(-counts, kind="stable"), (5, 1)))


def test_at_a_tiny_epsilon_the_ranking_is_the_dp_prior_and_at_a_large_one_it_is_not() -> None:
    split = simulated_population(parse_run_config(SYNTHETIC)).split
    history = np.zeros((split.n_users, split.n_items))
    users, items = split.train_pairs()
    history[users, items] = 1.0
    tiny = simulate_release(parse_run_config({**SYNTHETIC, "epsilon": 0.05, "ease-item-threshold": 0.0}), split)
    assert tiny.top_items.shape == (0,)  # the noisy Gram carries nothing above the noise
    scores = tiny.score(history)
    assert np.allclose(scores, tiny.prior[None, :])
    plain = simulate_release(parse_run_config({**SYNTHETIC, "dp": "off"}), split)
    assert plain.top_items.shape[0] > 0 and not math.isclose(float(np.abs(plain.weights).sum()), 0.0)
