"""The device's DP-EASE uploads: norm never above C, packing, fast vs slow sums."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data.split import ClientData, LeaveOneOutSplit
from fedrec.dpease.central import population_sums
from fedrec.dpease.statistics import (
    COUNTS,
    GRAM,
    count_statistic,
    gram_statistic,
    packed_index,
    packed_size,
    unpack_symmetric,
)
from fedrec.privacy.clipping import global_norm


def _split(rng: np.random.Generator, *, users: int = 30, items: int = 25) -> LeaveOneOutSplit:
    train = [rng.choice(items, size=int(rng.integers(0, 15)), replace=False) for _ in range(users)]
    indptr = np.concatenate([[0], np.cumsum([t.shape[0] for t in train])]).astype(np.int64)
    return LeaveOneOutSplit(
        n_items=items, users=np.arange(users), train_indptr=indptr,
        train_items=np.concatenate(train).astype(np.int64), val_item=np.zeros(users, np.int64),
        test_item=np.ones(users, np.int64), val_negatives=np.zeros((users, 3), np.int64),
        test_negatives=np.zeros((users, 3), np.int64),
    )


@pytest.mark.parametrize("clipping_norm", [1e-3, 1.0, 2.5, 1e4])
def test_uploads_never_exceed_the_clipping_norm(clipping_norm: float) -> None:
    rng = np.random.default_rng(1)
    top = rng.permutation(300)[:120]
    for n in [0, 1, 2, 3, 7, 50, 119, 300]:
        items = rng.choice(300, size=n, replace=False)
        counts = count_statistic(items, n_items=300, clipping_norm=clipping_norm)
        gram = gram_statistic(items, top_items=top, clipping_norm=clipping_norm)
        decayed = gram_statistic(items, top_items=top, clipping_norm=clipping_norm, pair_decay=0.7)
        assert global_norm(decayed) == pytest.approx(global_norm(gram), rel=1e-5, abs=0.0)
        assert global_norm(decayed) <= clipping_norm
        for upload in (counts, gram):
            norm = global_norm(upload)
            assert norm <= clipping_norm
            has_items = n > 0 if upload is counts else bool(np.isin(items, top).any())
            # per-user normalisation: exactly C (to float32) when there is anything to send
            assert norm == (pytest.approx(clipping_norm, rel=1e-5) if has_items else 0.0)


def test_uploads_are_dense_and_do_not_depend_on_history_order() -> None:
    top = np.array([4, 0, 2])
    a = gram_statistic(np.array([2, 4, 9]), top_items=top, clipping_norm=1.0)[GRAM]
    b = gram_statistic(np.array([9, 4, 2, 4]), top_items=top, clipping_norm=1.0)[GRAM]
    np.testing.assert_array_equal(a, b)
    assert a.shape == (packed_size(3),)
    assert count_statistic(np.array([1]), n_items=5, clipping_norm=1.0)[COUNTS].shape == (5,)


def test_gram_upload_is_the_upper_triangle_of_the_outer_product() -> None:
    top = np.array([7, 3, 5, 1])
    items = np.array([3, 1, 8])  # positions 1 and 3 in top; item 8 is not a top item
    full = unpack_symmetric(gram_statistic(items, top_items=top, clipping_norm=1.0)[GRAM].astype(np.float64), 4)
    x = np.array([0.0, 1.0, 0.0, 1.0])
    expected = np.outer(x, x) / np.sqrt(3)  # three values (two diagonal, one above) in the upload
    np.testing.assert_allclose(full, expected, rtol=1e-5)


def test_packing_round_trip() -> None:
    k = 6
    rows, cols = np.triu_indices(k)
    np.testing.assert_array_equal(packed_index(rows, cols, k), np.arange(packed_size(k)))
    packed = np.arange(packed_size(k), dtype=np.float64)
    full = unpack_symmetric(packed, k)
    np.testing.assert_array_equal(full, full.T)
    np.testing.assert_array_equal(full[rows, cols], packed)


@pytest.mark.parametrize("pair_decay", [1.0, 0.9])
def test_population_sums_equal_the_sum_of_device_uploads(pair_decay: float) -> None:
    """Fast (sparse products over the population) vs slow (one upload per device)."""
    rng = np.random.default_rng(2)
    split = _split(rng)
    clients: list[ClientData] = [split.client(u) for u in range(split.n_users)]
    slow_counts = sum(count_statistic(c.train_items, n_items=split.n_items, clipping_norm=1.5)[COUNTS].astype(np.float64) for c in clients)
    np.testing.assert_allclose(population_sums(split, clipping_norm=1.5, top_items=None), slow_counts, rtol=1e-6)
    top = np.array([3, 17, 0, 8, 21, 11])
    slow_gram = sum(
        gram_statistic(c.train_items, top_items=top, clipping_norm=1.5, pair_decay=pair_decay)[GRAM].astype(np.float64)
        for c in clients
    )
    fast_gram = population_sums(split, clipping_norm=1.5, top_items=top, pair_decay=pair_decay)
    np.testing.assert_allclose(fast_gram, slow_gram, rtol=1e-6, atol=1e-9)
