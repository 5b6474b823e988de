"""The centralized MF reference: negatives, optimizer, selection on validation only, learning."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedrec.data.split import LeaveOneOutSplit, leave_one_out
from fedrec.data.synthetic import SyntheticSpec, generate
from fedrec.evaluation.scoring import evaluate_scorer
from fedrec.experiments.baselines import Popularity
from fedrec.training.mf import MFConfig, _Adam, exclusion_mask, negative_counts, train_mf

FAST = MFConfig(dim=16, max_epochs=10, eval_every=2, patience=10, lr=0.03, batch_users=32)


@pytest.fixture(scope="module")
def split() -> LeaveOneOutSplit:
    data = generate(SyntheticSpec(n_users=600, n_items=300, mean_interactions=20), rng=np.random.default_rng(5))
    return leave_one_out(data, rng=np.random.default_rng(5))


def test_negatives_never_hit_an_evaluation_candidate_and_are_uniform() -> None:
    excluded = torch.zeros(3, 10, dtype=torch.bool)
    excluded[0, [0, 1, 2]] = True
    excluded[1, 9] = True
    excluded[2, :9] = True  # one item left
    users = torch.tensor([0, 1, 2]).repeat_interleave(7000)
    counts = negative_counts(users, excluded, generator=torch.Generator().manual_seed(0))
    assert counts.sum(1).tolist() == [7000.0, 7000.0, 7000.0]
    assert counts[excluded].sum() == 0
    assert counts[2, 9] == 7000
    # 1000 expected per allowed item of user 0: a 5-sigma band (sd ~ 29)
    assert counts[0, 3:].min() > 850 and counts[0, 3:].max() < 1150


def test_exclusions_are_the_splits_training_exclusions(split: LeaveOneOutSplit) -> None:
    mask = exclusion_mask(split)
    for u in (0, 17, split.n_users - 1):
        assert np.array_equal(np.flatnonzero(mask[u].numpy()), split.client(u).training_exclusions())


def test_a_user_with_nothing_left_to_draw_is_refused() -> None:
    with pytest.raises(ValueError, match="no item left"):
        negative_counts(torch.tensor([0]), torch.ones(1, 4, dtype=torch.bool), generator=torch.Generator())


def test_hand_written_adam_matches_torch_adam() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, generator=g, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    mine, reference = _Adam([a], lr=0.05), torch.optim.Adam([b], lr=0.05)
    for step in range(5):
        target = torch.randn(5, 3, generator=torch.Generator().manual_seed(step))
        ((a - target) ** 3).sum().backward()
        mine.step()
        ((b - target) ** 3).sum().backward()
        reference.step()
        reference.zero_grad()
    torch.testing.assert_close(a, b)


def test_learns_beyond_popularity_and_is_deterministic(split: LeaveOneOutSplit) -> None:
    first = train_mf(split, config=FAST, generator=torch.Generator().manual_seed(1))
    again = train_mf(split, config=FAST, generator=torch.Generator().manual_seed(1))
    assert first.test == again.test and first.curve == again.curve
    popularity = evaluate_scorer(Popularity(split).score, split)
    assert first.test["ndcg@10"] > popularity["ndcg@10"] + 0.05
    assert [e["epoch"] for e in first.curve] == [2.0, 4.0, 6.0, 8.0, 10.0]


def test_epochs_are_chosen_on_validation_users_only(split: LeaveOneOutSplit) -> None:
    clean = train_mf(split, config=FAST, generator=torch.Generator().manual_seed(2))
    rng = np.random.default_rng(4)
    poisoned = replace(
        split,
        test_item=rng.integers(0, split.n_items, split.n_users),
        test_negatives=rng.integers(0, split.n_items, split.test_negatives.shape),
    )
    # the training exclusions hold the test item and negatives, so only their sampled
    # metrics may change: keep the exclusions as they were
    dirty = train_mf(poisoned, config=FAST, generator=torch.Generator().manual_seed(2), excluded=exclusion_mask(split))
    assert dirty.best_epoch == clean.best_epoch
    assert [e["ndcg@10"] for e in dirty.curve] == [e["ndcg@10"] for e in clean.curve]
    assert dirty.test["ndcg@10"] != clean.test["ndcg@10"]
