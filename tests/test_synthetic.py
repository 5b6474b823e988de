"""The synthetic generator: deterministic, shaped like real logs, and learnable."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.config import parse_run_config
from fedrec.data.split import leave_one_out
from fedrec.data.synthetic import MIN_HISTORY, SyntheticSpec, generate
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
