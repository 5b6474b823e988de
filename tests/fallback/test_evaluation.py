"""Cold-start evaluation: held-out users are disjoint and seeded; metrics on a hand case."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data.interactions import Interactions
from fedrec.fallback.evaluation import ColdStartUser, cold_users, split_users, user_scores
from fedrec.fallback.profile import Demographics


def test_held_out_users_are_disjoint_seeded_and_never_in_train(ml100k: Interactions) -> None:
    a = split_users(ml100k, holdout_fraction=0.1, min_interactions=6, rng=np.random.default_rng(1))
    b = split_users(ml100k, holdout_fraction=0.1, min_interactions=6, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a.test, b.test)
    assert a.test.shape[0] == a.validation.shape[0] == round(0.1 * ml100k.n_users)
    assert not set(a.test) & set(a.validation)
    assert not (set(a.test) | set(a.validation)) & set(a.train)
    assert len(a.train) + len(a.test) + len(a.validation) == ml100k.n_users


def test_revealed_items_are_the_chronologically_first(ml100k: Interactions) -> None:
    users = cold_users(ml100k, np.array([0, 5]), max_reveal=5, num_negatives=99, rng=np.random.default_rng(0))
    for u in users:
        mine = ml100k.users == u.index
        times = dict(zip(ml100k.items[mine], ml100k.timestamps[mine]))
        first = [times[i] for i in u.query(3).given]
        assert max(first) <= min(times[i] for i in u.targets)
        np.testing.assert_array_equal(u.targets, u.sequence[5:])
        assert not set(u.negatives) & set(u.sequence)


def test_user_metrics_on_a_hand_computed_case() -> None:
    user = ColdStartUser(
        index=0, sequence=np.array([0, 1, 2]), targets=np.array([1, 2]), negatives=np.array([3, 4]), demographics=Demographics()
    )
    # items 0..5; unseen = 3, 4, 5. Target 1 beats all (rank 0); target 2 is beaten by item 5 only (rank 1)
    scores = np.array([9.0, 5.0, 2.0, 1.0, 0.0, 3.0])
    m = user_scores(scores, user)
    assert m["full_hr@10"] == 1.0
    assert m["full_ndcg@10"] == pytest.approx((1.0 + 1.0 / np.log2(3.0)) / 2)
    assert m["hr@10"] == 1.0 and m["ndcg@10"] == 1.0  # against negatives 3, 4 both targets are first
