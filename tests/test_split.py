from __future__ import annotations

import numpy as np

from fedrec.data import leave_one_out, sample_negatives
from fedrec.training import epoch_examples


def test_held_out_items_are_the_latest_and_never_trained_on(ml100k, ml100k_split) -> None:
    split = ml100k_split
    assert split.n_users == 943
    for u in range(0, split.n_users, 37):
        user = split.users[u]
        mask = ml100k.users == user
        order = np.lexsort((ml100k.items[mask], ml100k.timestamps[mask]))
        seq = ml100k.items[mask][order]
        assert split.test_item[u] == seq[-1] and split.val_item[u] == seq[-2]
        train = split.train_of(u)
        assert split.test_item[u] not in train and split.val_item[u] not in train
        assert sorted(train.tolist()) == sorted(seq[:-2].tolist())


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
