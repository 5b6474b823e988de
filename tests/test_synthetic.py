"""The synthetic generator: deterministic, shaped like real logs, and learnable."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fedrec.config import parse_run_config
from fedrec.data import synthetic
from fedrec.data.split import leave_one_out
from fedrec.data.synthetic import (
    BLOCK,
    MIN_HISTORY,
    SyntheticSpec,
    _by_inverse_cdf,
    _first_distinct,
    _inverse_cdf,
    generate,
)
from fedrec.errors import ConfigError, DataError
from fedrec.evaluation.scoring import evaluate_scorer
from fedrec.experiments.baselines import ItemKNN, Popularity

SPEC = SyntheticSpec(n_users=2000, n_items=500, mean_interactions=20)


def test_same_seed_same_data_and_histories_are_valid() -> None:
    a = generate(SPEC, rng=np.random.default_rng(1))
    b = generate(SPEC, rng=np.random.default_rng(1))
    c = generate(SPEC, rng=np.random.default_rng(2))
    assert np.array_equal(a.items, b.items) and np.array_equal(a.timestamps, b.timestamps)
    assert not np.array_equal(a.items, c.items)
    lengths = np.bincount(a.users, minlength=SPEC.n_users)
    assert lengths.min() >= MIN_HISTORY and lengths.max() <= SPEC.n_items // 2
    assert abs(lengths.mean() - SPEC.mean_interactions) < 0.15 * SPEC.mean_interactions
    pairs = a.users * SPEC.n_items + a.items
    assert np.unique(pairs).shape[0] == pairs.shape[0]  # no item twice in a history


def test_popularity_and_activity_are_heavy_tailed() -> None:
    data = generate(SPEC, rng=np.random.default_rng(0))
    counts = np.sort(np.bincount(data.items, minlength=SPEC.n_items))[::-1]
    top_share = counts[: SPEC.n_items // 10].sum() / counts.sum()
    assert top_share > 0.3  # the top 10% of items hold far more than 10% of interactions
    lengths = np.bincount(data.users)
    assert lengths.max() > 5 * np.median(lengths)


def test_latent_structure_is_learnable_beyond_popularity() -> None:
    split = leave_one_out(generate(SPEC, rng=np.random.default_rng(0)), rng=np.random.default_rng(0))
    popularity = evaluate_scorer(Popularity(split).score, split)
    knn = evaluate_scorer(ItemKNN(split).score, split)
    assert knn["hr@10"] > popularity["hr@10"] + 0.05


def test_bad_shapes_are_refused_clearly() -> None:
    with pytest.raises(DataError, match="synthetic-items"):
        generate(SyntheticSpec(n_items=50), rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="synthetic-interactions"):
        parse_run_config({"dataset": "synthetic", "synthetic-items": 1000, "synthetic-interactions": 900})


def test_two_step_search_is_the_inverse_cdf_over_every_item() -> None:
    rng = np.random.default_rng(4)
    n_items = 203  # not a multiple of the block: the last block is padded with zero weights
    blocks = -(-n_items // BLOCK)
    weights = np.zeros((6, blocks * BLOCK), dtype=np.float32)
    weights[:, :n_items] = rng.lognormal(0.0, 2.0, size=(6, n_items)).astype(np.float32)
    sums = np.cumsum(weights.reshape(6, blocks, BLOCK).sum(axis=2), axis=1, dtype=np.float64)
    block_cdf = np.concatenate([np.zeros((6, 1)), sums], axis=1)  # a leading 0: the mass before the first block
    rows = np.array([0, 2, 5])
    uniforms = rng.random((3, 5000))
    drawn = _inverse_cdf(weights, block_cdf, rows, uniforms, n_items=n_items)
    for k, row in enumerate(rows):
        cdf = np.cumsum(weights[row, :n_items].astype(np.float64))
        expected = np.minimum(np.searchsorted(cdf, uniforms[k] * cdf[-1], side="right"), n_items - 1)
        assert np.array_equal(drawn[k], expected)


def test_a_users_items_follow_its_choice_weights() -> None:
    # one taste for every user, one item each: the items are draws from the weights
    rng = np.random.default_rng(5)
    n_items, users = 120, 40_000
    log_pop = (-0.8 * np.log1p(np.arange(n_items))).astype(np.float32)
    items = (rng.standard_normal((n_items, 4)) / 2).astype(np.float32)
    taste = np.repeat((rng.standard_normal((1, 4)) / 2).astype(np.float32), users, axis=0)
    drawn = np.concatenate([d[:, 0] for _, d in _by_inverse_cdf(log_pop, taste, items, np.ones(users, dtype=np.int64), 2.0, rng)])
    weights = np.exp(log_pop.astype(np.float64) + 2.0 * items.astype(np.float64) @ taste[0].astype(np.float64))
    expected = users * weights / weights.sum()
    counts = np.bincount(drawn, minlength=n_items)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < n_items + 5 * np.sqrt(2 * n_items)  # mean n_items - 1, sd sqrt(2 (n_items - 1))


def test_first_distinct_keeps_draw_order() -> None:
    drawn = np.array([[3, 1, 3, 2, 1], [4, 4, 4, 4, 4], [0, 1, 2, 3, 4]])
    values, count = _first_distinct(drawn, 5)
    assert count.tolist() == [3, 1, 5]
    assert values.tolist() == [[3, 1, 2, -1, -1], [4, -1, -1, -1, -1], [0, 1, 2, 3, 4]]


def test_generation_and_split_memory_per_user_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # a small chunk, so that its fixed working memory is small beside the data
    monkeypatch.setattr(synthetic, "SCORES_PER_CHUNK", 1 << 18)
    users = 40_000
    tracemalloc.start()
    data = generate(SyntheticSpec(n_users=users, n_items=1000, mean_interactions=20), rng=np.random.default_rng(0))
    generation = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    leave_one_out(data, rng=np.random.default_rng(1))
    split = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # about 20 interactions a user (user, item, time, rating: 28 bytes each); the split's
    # 2 x 99 negatives (1.6 KB) and its sorting of the interactions
    assert generation / users < 1.5 * 1024, f"generation: {generation / users:.0f} bytes per simulated user"
    assert split / users < 6 * 1024, f"split: {split / users:.0f} bytes per simulated user"
