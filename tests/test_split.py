from __future__ import annotations

import numpy as np
import pytest

from fedrec.data import leave_one_out, sample_negatives
from fedrec.data.interactions import Interactions
from fedrec.data.synthetic import SyntheticSpec, generate
from fedrec.errors import DataError
from fedrec.training.local import epoch_examples


def test_held_out_items_are_the_latest_and_never_trained_on(ml100k, ml100k_split) -> None:
    split = ml100k_split
    assert split.n_users == 943
    for u in range(0, split.n_users, 37):
        user = split.users[u]
        mask = ml100k.users == user
        stamps = dict(zip(ml100k.items[mask].tolist(), ml100k.timestamps[mask].tolist()))
        latest = max(stamps.values())
        # the held-out items are the latest (ties in time broken at random)
        assert stamps[int(split.test_item[u])] == latest
        assert stamps[int(split.val_item[u])] >= max(t for i, t in stamps.items() if i != split.test_item[u] and i != split.val_item[u])
        train = split.train_of(u)
        seq = ml100k.items[mask]
        assert split.test_item[u] not in train and split.val_item[u] not in train
        assert sorted(train.tolist()) == sorted(set(seq.tolist()) - {int(split.test_item[u]), int(split.val_item[u])})
        assert [stamps[i] for i in train.tolist()] == sorted(stamps[i] for i in train.tolist())  # time order


def test_evaluation_negatives_are_unseen_and_distinct(ml100k_split) -> None:
    split = ml100k_split
    for u in range(split.n_users):
        c = split.client(u)
        seen = set(c.train_items.tolist()) | {c.val_item, c.test_item}
        for negs in (c.val_negatives, c.test_negatives):
            assert len(set(negs.tolist())) == 99
            assert not seen & set(negs.tolist())


def test_training_negatives_never_positives_nor_evaluation_candidates(ml100k_split) -> None:
    # The leak: if a test candidate is a training negative, training pushes it down.
    rng = np.random.default_rng(1)
    for u in range(0, ml100k_split.n_users, 50):
        c = ml100k_split.client(u)
        forbidden = set(c.training_exclusions().tolist())
        items, labels = epoch_examples(
            positives=c.train_items, excluded=c.training_exclusions(), n_items=c.n_items, num_negatives=8, rng=rng
        )
        negatives = set(items[labels == 0].tolist())
        assert not negatives & forbidden
        assert set(items[labels == 1].tolist()) == set(c.train_items.tolist())


def test_negative_sampling_is_uniform_over_allowed_items() -> None:
    excluded = np.array([0, 2, 4])
    draws = sample_negatives(n_items=6, excluded=excluded, count=30_000, rng=np.random.default_rng(0))
    counts = np.bincount(draws, minlength=6)
    assert counts[[0, 2, 4]].sum() == 0
    assert np.allclose(counts[[1, 3, 5]] / 30_000, 1 / 3, atol=0.015)


def test_split_is_deterministic_given_the_seed(ml100k) -> None:
    a = leave_one_out(ml100k, rng=np.random.default_rng(5))
    b = leave_one_out(ml100k, rng=np.random.default_rng(5))
    c = leave_one_out(ml100k, rng=np.random.default_rng(6))
    assert np.array_equal(a.test_negatives, b.test_negatives)
    assert not np.array_equal(a.test_negatives, c.test_negatives)


def _per_user_negatives(data: Interactions, *, seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation negatives recomputed user by user: the split's tie-break draw, then
    for each splittable user ``choice`` on the sorted unseen items, validation then test."""
    rng = np.random.default_rng(seed)
    rng.random(size=data.users.shape[0])
    val, test = [], []
    for user in range(data.n_users):
        if np.count_nonzero(data.users == user) < 3:
            continue
        seen = np.unique(data.items[data.users == user])
        allowed = np.setdiff1d(np.arange(data.n_items), seen)
        val.append(rng.choice(allowed, size=count, replace=False))
        test.append(rng.choice(allowed, size=count, replace=False))
    return np.array(val), np.array(test)


@pytest.mark.parametrize("mode", ["time", "random", "order"])
def test_vectorised_evaluation_negatives_are_the_per_user_draws_and_leak_free(mode: str) -> None:
    data = generate(SyntheticSpec(n_users=300, n_items=150, mean_interactions=12), rng=np.random.default_rng(3))
    # a repeated interaction and a user too short to split: the unseen items are the distinct ones
    data = Interactions(
        name="t", users=np.concatenate([data.users, [7, 300, 300]]),
        items=np.concatenate([data.items, [data.items[data.users == 7][0], 1, 2]]),
        ratings=np.ones(data.users.shape[0] + 3, dtype=np.float32), timestamps=np.concatenate([data.timestamps, [5, 6, 7]]),
        user_ids=np.arange(301), item_ids=data.item_ids,
    )
    split = leave_one_out(data, rng=np.random.default_rng(11), num_eval_negatives=40, mode=mode)
    assert split.n_users == 300
    val, test = _per_user_negatives(data, seed=11, count=40)
    assert np.array_equal(split.val_negatives, val) and np.array_equal(split.test_negatives, test)
    for u in range(split.n_users):
        seen = set(data.items[data.users == split.users[u]].tolist())
        for negatives in (split.val_negatives[u], split.test_negatives[u]):
            assert len(set(negatives.tolist())) == 40 and not seen & set(negatives.tolist())
    again = leave_one_out(data, rng=np.random.default_rng(11), num_eval_negatives=40, mode=mode)
    other = leave_one_out(data, rng=np.random.default_rng(12), num_eval_negatives=40, mode=mode)
    assert np.array_equal(again.test_negatives, split.test_negatives)
    assert not np.array_equal(other.test_negatives, split.test_negatives)


def test_too_few_unseen_items_for_the_negatives_is_a_clear_error() -> None:
    data = generate(SyntheticSpec(n_users=50, n_items=150, mean_interactions=12), rng=np.random.default_rng(3))
    with pytest.raises(DataError, match="unseen items, cannot draw 149 evaluation negatives"):
        leave_one_out(data, rng=np.random.default_rng(0), num_eval_negatives=149)
