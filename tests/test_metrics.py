from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _masked_full_rank(scores: np.ndarray, target: np.ndarray, exclude: list[np.ndarray]) -> np.ndarray:
    """The definition: mask the excluded items (and the target) with -inf, rank among the rest."""
    masked = scores.astype(np.float64, copy=True)
    for u, items in enumerate(exclude):
        masked[u, items] = -np.inf
    rows = np.arange(scores.shape[0])
    pos = masked[rows, target].copy()
    masked[rows, target] = -np.inf
    return rank_of(pos, masked)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n_users=st.integers(1, 6), n_items=st.integers(1, 12))
def test_full_rank_equals_ranking_the_masked_scores(data: st.DataObject, n_users: int, n_items: int) -> None:
    # few distinct values (ties), -inf, +inf and NaN among them; excluded lists with repeats and the target itself
    values = st.sampled_from([0.0, 1.0, 2.0, -1.5, np.inf, -np.inf, np.nan])
    scores = np.array(data.draw(st.lists(st.lists(values, min_size=n_items, max_size=n_items),
                                         min_size=n_users, max_size=n_users)), dtype=data.draw(st.sampled_from([np.float32, np.float64])))
    target = np.array(data.draw(st.lists(st.integers(0, n_items - 1), min_size=n_users, max_size=n_users)))
    exclude = [np.array(data.draw(st.lists(st.integers(0, n_items - 1), max_size=n_items)), dtype=np.int64)
               for _ in range(n_users)]
    assert full_rank(scores, target=target, exclude=exclude).tolist() == _masked_full_rank(scores, target, exclude).tolist()


def test_paired_difference_against_a_hand_computed_case() -> None:
    from fedrec.evaluation.scoring import paired_difference

    model = {"ndcg@10": np.array([1.0, 0.5, 0.0, 0.5])}
    reference = {"ndcg@10": np.array([0.0, 0.5, 0.0, 0.0])}
    out = paired_difference(model, reference)["ndcg@10"]
    # differences 1, 0, 0, 0.5: mean 0.375, sample std sqrt(((0.625)^2 + 2 (0.375)^2 + (0.125)^2) / 3)
    assert out["difference"] == pytest.approx(0.375)
    assert out["standard_error"] == pytest.approx(np.sqrt((0.625**2 + 2 * 0.375**2 + 0.125**2) / 3) / 2)


@pytest.mark.parametrize(
    ("sampled", "full", "verdict"),
    [((0.11, 0.01), (0.027, 0.006), "beats"), ((0.002, 0.009), (-0.003, 0.005), "not clearly better"),
     ((-0.05, 0.01), (0.02, 0.005), "is below")],
)
def test_the_verdict_against_popularity_uses_the_paired_standard_error(
    sampled: tuple[float, float], full: tuple[float, float], verdict: str
) -> None:
    from fedrec.cli import _versus_popularity

    paired = {"ndcg@10": {"difference": sampled[0], "standard_error": sampled[1]},
              "full_ndcg@10": {"difference": full[0], "standard_error": full[1]}}
    popularity = {"ndcg@10": 0.2, "full_ndcg@10": 0.04}
    model = {"ndcg@10": 0.2 + sampled[0], "full_ndcg@10": 0.04 + full[0], "versus_popularity": paired}
    assert verdict in _versus_popularity(model, popularity)
    # without the paired differences (a NeuMF run) the ratio alone decides
    assert "beats" in _versus_popularity({"ndcg@10": 0.3, "full_ndcg@10": 0.05}, popularity)
