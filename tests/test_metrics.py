from __future__ import annotations

import math

import numpy as np

from fedrec.evaluation.metrics import full_rank, rank_of, user_metrics


def test_ranks_hand_computed() -> None:
    pos = np.array([0.9, 0.5, 0.1])
    neg = np.array([[0.1, 0.2, 0.3], [0.6, 0.5, 0.4], [0.2, 0.3, 0.4]])
    # user 0 beats all; user 1 has one higher and one tie (ties count against); user 2 last.
    assert rank_of(pos, neg).tolist() == [0, 2, 3]


def test_metrics_hand_computed() -> None:
    m = user_metrics(np.array([0, 2, 9, 10]), np.array([0, 15, 19, 20]))
    assert m["hr@10"].tolist() == [1, 1, 1, 0]
    assert np.allclose(m["ndcg@10"], [1.0, 1 / math.log2(4), 1 / math.log2(11), 0.0])
    assert m["full_hr@10"].tolist() == [1, 0, 0, 0]
    assert m["recall@20"].tolist() == [1, 1, 1, 0]


def test_constant_scores_get_no_credit() -> None:
    scores = np.zeros((1, 100))
    negatives = np.arange(1, 100)[None, :]
    assert rank_of(scores[:, 0], scores[:, negatives[0]])[0] == 99


def test_full_rank_masks_training_items() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    # item 2 is the target; items 0 and 1 are training items and must not count.
    assert full_rank(scores, target=np.array([2]), exclude=[np.array([0, 1])]).tolist() == [0]
    assert full_rank(scores, target=np.array([2]), exclude=[np.array([0])]).tolist() == [1]
