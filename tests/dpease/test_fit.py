"""The fit: a noisy Gram with no eigenvalue above the noise edge releases the DP
popularity prior alone (at a tiny epsilon the ranking is the prior's); EASE shrunk
towards a target built from public item content only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrec.config import parse_run_config
from fedrec.data.location import resolve_data_dir
from fedrec.dpease.central import simulate_release
from fedrec.dpease.fit import (
    content_target,
    cooccurrence_signal,
    ease_weights_towards,
    fit_release,
    item_content,
    noise_edge,
    public_item_content,
    signal_directions,
    signal_limited,
)
from fedrec.dpease.statistics import packed_size
from fedrec.errors import DataError
from fedrec.federation.device import simulated_population
from fedrec.models.ease import ease_weights

SYNTHETIC = {
    "model": "dp-ease", "dataset": "synthetic", "synthetic-users": 150, "synthetic-items": 200,
    "synthetic-interactions": 12, "num-eval-negatives": 20, "seed": 1,
}


def _has_ml100k() -> bool:
    try:
        return (resolve_data_dir(None) / "ml-100k").is_dir()
    except DataError:
        return False


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


def _gram(rng: np.random.Generator, users: int = 40, k: int = 8) -> np.ndarray:
    x = (rng.random((users, k)) < 0.3).astype(float)
    return x.T @ x


def test_shrinking_towards_zero_is_ease() -> None:
    gram = _gram(np.random.default_rng(0))
    assert np.allclose(ease_weights_towards(gram, 3.0, np.zeros_like(gram)), ease_weights(gram, 3.0))


def test_shrinking_towards_a_target_solves_each_column_s_ridge_regression() -> None:
    rng = np.random.default_rng(1)
    gram, lam = _gram(rng), 2.5
    k = gram.shape[0]
    target = rng.random((k, k))
    np.fill_diagonal(target, 0.0)
    weights = ease_weights_towards(gram, lam, target)
    for j in range(k):  # column j: min ||x_j - X_{-j} b||^2 + lam ||b - t_{-j,j}||^2 over the other items
        others = np.delete(np.arange(k), j)
        lhs = gram[np.ix_(others, others)] + lam * np.eye(k - 1)
        rhs = gram[others, j] + lam * target[others, j]
        assert np.allclose(weights[others, j], np.linalg.solve(lhs, rhs))
        assert weights[j, j] == 0.0


def test_the_content_target_is_a_column_stochastic_similarity() -> None:
    vectors = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    target = content_target(vectors)
    assert np.all(np.diag(target) == 0) and np.all(target >= 0)
    assert np.allclose(target.sum(axis=0), [1.0, 1.0, 1.0, 0.0])  # item 3 is similar to none
    assert target[1, 0] == pytest.approx(1.0)  # item 0's only positive neighbour


@pytest.mark.skipif(not _has_ml100k(), reason="needs MovieLens 100K (FEDREC_DATA_DIR)")
def test_the_content_prior_reads_only_public_item_data() -> None:
    base = {"model": "dp-ease", "dataset": "ml-100k", "ease-content-weight": 1.0}
    everyone = public_item_content(parse_run_config(base))
    fewer = public_item_content(parse_run_config({**base, "max-users": 100, "seed": 5}))  # other users, other split
    assert everyone is not None and fewer is not None
    assert np.array_equal(everyone, fewer)
    meta = simulated_population(parse_run_config(base)).interactions.item_meta
    assert np.array_equal(everyone, item_content(meta))
    assert public_item_content(parse_run_config({**base, "ease-content-weight": 0.0})) is None
    assert public_item_content(parse_run_config(SYNTHETIC | {"ease-content-weight": 1.0})) is None  # no metadata


def test_top_first_puts_every_top_item_above_the_tail_and_keeps_both_orders() -> None:
    from fedrec.dpease.fit import EaseRelease

    rng = np.random.default_rng(4)
    top = np.array([5, 2, 7])
    weights = rng.normal(size=(3, 3))
    np.fill_diagonal(weights, 0.0)
    prior = rng.normal(size=10)
    prior[[0, 1]] = 50.0  # tail items whose noisy counts came out high
    plain = EaseRelease(top_items=top, weights=weights, prior=prior)
    first = EaseRelease(top_items=top, weights=weights, prior=prior, top_first=True)
    history = (rng.random((6, 10)) < 0.4).astype(np.float64)
    a, b = plain.score(history), first.score(history)
    tail = np.setdiff1d(np.arange(10), top)
    assert (b[:, top].min(axis=1) > b[:, tail].max(axis=1)).all()
    assert (a[:, top].min(axis=1) < a[:, tail].max(axis=1)).any()  # without it the noisy tail can outrank them
    for u in range(6):  # one shift per user: the order inside the top items and inside the tail is the same
        assert (np.argsort(a[u, top]) == np.argsort(b[u, top])).all()
        np.testing.assert_array_equal(a[u, tail], b[u, tail])
    # released with the model: a device reading model.npz scores the same way; older releases did not rank top first
    assert EaseRelease.from_arrays(first.to_arrays()).top_first
    old = {k: v for k, v in first.to_arrays().items() if k != "top_first"}
    assert not EaseRelease.from_arrays(old).top_first


def test_top_first_is_post_processing_of_the_released_arrays_only() -> None:
    # same counts, top items and Gram -> the same released arrays but the flag; scoring uses only them
    from fedrec.dpease.statistics import packed_size as size

    rng = np.random.default_rng(5)
    counts = rng.normal(10.0, 3.0, size=30)
    top = np.argsort(-counts)[:6]
    gram = np.abs(rng.normal(5.0, 1.0, size=size(6)))
    kwargs = {
        "counts": counts, "top_items": top, "gram_packed": gram, "count_noise_std": 1.0, "gram_noise_std": 0.0,
        "noise_scale": 2.0, "base_scale": 5.0, "eigen_floor": 0.5, "prior_weight": 0.001,
    }
    a, b = fit_release(**kwargs), fit_release(**kwargs, top_first=True)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.prior, b.prior)
    np.testing.assert_array_equal(a.top_items, b.top_items)


def test_the_signal_limit_keeps_the_prefix_whose_cooccurrence_clears_the_noise_edge() -> None:
    rng = np.random.default_rng(0)
    counts = 40 * (1.0 + np.arange(5000)) ** -0.5 + rng.normal(0, 1, size=5000)
    top = np.argsort(-counts, kind="stable")[:1500]
    signal = cooccurrence_signal(counts, top, users=300, clipping_norm=2.0, gram_noise_std=1.5)
    s = counts.sum() / (300 * 2.0)  # the mean square root of a history length the counts imply
    k = 40
    assert signal[k - 1] == pytest.approx(math.sqrt(2) * s * counts[top[:k]].mean() / (2 * 1.5 * math.sqrt(k)))
    assert np.all(np.diff(signal) < 0)  # a longer list never has more signal per noise edge
    kept = signal_limited(counts, top, users=300, clipping_norm=2.0, gram_noise_std=1.5, ratio=3.0)
    assert 0 < kept.shape[0] < top.shape[0]
    np.testing.assert_array_equal(kept, top[: kept.shape[0]])
    assert signal[kept.shape[0] - 1] >= 3.0 > signal[kept.shape[0]]
    # more noise on the co-occurrence: fewer items; no noise or no limit: all of them
    assert signal_limited(counts, top, users=300, clipping_norm=2.0, gram_noise_std=3.0, ratio=3.0).shape[0] < kept.shape[0]
    assert signal_limited(counts, top, users=300, clipping_norm=2.0, gram_noise_std=0.0, ratio=3.0).shape[0] == 1500
    assert signal_limited(counts, top, users=300, clipping_norm=2.0, gram_noise_std=1.5, ratio=0.0).shape[0] == 1500


def test_the_run_and_the_simulated_release_use_the_same_signal_limited_items() -> None:
    config = parse_run_config({**SYNTHETIC, "epsilon": 2.0, "ease-signal-ratio": 3.0})
    split = simulated_population(config).split
    limited = simulate_release(config, split).top_items
    unlimited = simulate_release(parse_run_config({**SYNTHETIC, "epsilon": 2.0, "ease-signal-ratio": 0}), split).top_items
    assert limited.shape[0] < unlimited.shape[0]
    np.testing.assert_array_equal(limited, unlimited[: limited.shape[0]])
