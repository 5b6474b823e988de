"""Reference recommenders: EASE against hand-computed weights, its l2 chosen on validation only."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction as F

import numpy as np
import pytest

from fedrec.data.split import leave_one_out
from fedrec.data.synthetic import SyntheticSpec, generate
from fedrec.evaluation.scoring import evaluate_scorer
from fedrec.experiments.baselines import (
    EASE,
    ease_items,
    ease_l2_grid,
    ease_scores,
    ease_weights,
    fit_ease,
    user_item_matrix,
)

# Three users, three items: user 0 has items {0, 1}, user 1 {1, 2}, user 2 all three.
X = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=np.float32)


def _as_float(rows: list[list[F]]) -> np.ndarray:
    return np.array([[float(v) for v in row] for row in rows])


def test_ease_weights_match_a_hand_computed_case_l2_1() -> None:
    # X^T X = [[2,2,1],[2,3,2],[1,2,2]]; + I = [[3,2,1],[2,4,2],[1,2,3]], det 16,
    # adjugate [[8,-4,0],[-4,8,-4],[0,-4,8]] -> P = [[1/2,-1/4,0],[-1/4,1/2,-1/4],[0,-1/4,1/2]];
    # B_ij = -P_ij / P_jj with every P_jj = 1/2.
    expected = [[F(0), F(1, 2), F(0)], [F(1, 2), F(0), F(1, 2)], [F(0), F(1, 2), F(0)]]
    np.testing.assert_allclose(ease_weights(X, l2=1.0), _as_float(expected), atol=1e-12)


def test_ease_weights_match_a_hand_computed_case_l2_2_asymmetric() -> None:
    # X^T X + 2I = [[4,2,1],[2,5,2],[1,2,4]], det 51, adjugate [[16,-6,-1],[-6,15,-6],[-1,-6,16]].
    # The diagonal of P differs (16/51, 15/51, 16/51), so B is not symmetric: column j is
    # divided by P_jj, e.g. B_01 = 6/15 but B_10 = 6/16.
    expected = [
        [F(0), F(6, 15), F(1, 16)],
        [F(6, 16), F(0), F(6, 16)],
        [F(1, 16), F(6, 15), F(0)],
    ]
    np.testing.assert_allclose(ease_weights(X, l2=2.0), _as_float(expected), atol=1e-12)


def test_ease_weights_with_fewer_users_than_items_hand_computed() -> None:
    # One user with items {0, 1} of three: X^T X + I = [[2,1,0],[1,2,0],[0,0,1]],
    # P = [[2/3,-1/3,0],[-1/3,2/3,0],[0,0,1]], so B_01 = B_10 = (1/3) / (2/3) = 1/2.
    expected = [[F(0), F(1, 2), F(0)], [F(1, 2), F(0), F(0)], [F(0), F(0), F(0)]]
    np.testing.assert_allclose(ease_weights(np.array([[1, 1, 0]], dtype=np.float32), l2=1.0), _as_float(expected), atol=1e-12)


def test_fewer_users_than_items_agrees_with_the_item_item_inverse() -> None:
    rng = np.random.default_rng(0)
    user_items = (rng.random((12, 30)) < 0.3).astype(np.float32)
    gram = user_items.T.astype(np.float64) @ user_items + 4.0 * np.eye(30)
    p = np.linalg.inv(gram)  # the slow, obvious reference
    reference = -p / np.diag(p)[None, :]
    np.fill_diagonal(reference, 0.0)
    np.testing.assert_allclose(ease_weights(user_items, l2=4.0), reference, atol=1e-9)


def test_all_user_scores_equal_the_rows_times_the_weights() -> None:
    rng = np.random.default_rng(1)
    user_items = (rng.random((12, 30)) < 0.3).astype(np.float32)
    for l2 in (0.5, 4.0, 60.0):
        np.testing.assert_allclose(ease_scores(user_items, l2=l2), user_items @ ease_weights(user_items, l2=l2), atol=1e-9)
    # the hand-computed case above: user 0 has items {0, 1}, so scores (1/2, 1/2, 1/2 + 0)
    np.testing.assert_allclose(ease_scores(X, l2=1.0)[0], [0.5, 0.5, 0.5], atol=1e-12)


def test_default_l2_grid_scales_with_interactions_per_item() -> None:
    split = _split()
    per_item = split.train_items.shape[0] / split.n_items  # type: ignore[attr-defined]
    grid = ease_l2_grid(split)  # type: ignore[arg-type]
    assert grid == sorted(grid) and grid[0] == pytest.approx(per_item, abs=0.1)


def test_non_positive_l2_is_refused() -> None:
    with pytest.raises(ValueError, match="l2 > 0"):
        ease_weights(X, l2=0.0)


def _split() -> object:
    data = generate(SyntheticSpec(n_users=600, n_items=300, mean_interactions=20), rng=np.random.default_rng(3))
    return leave_one_out(data, rng=np.random.default_rng(3))


def test_l2_is_chosen_on_validation_users_only() -> None:
    split = _split()
    model, tried = fit_ease(split, l2s=(1.0, 30.0, 1000.0))  # type: ignore[arg-type]
    assert set(tried) == {1.0, 30.0, 1000.0}
    assert tried[model.l2] == max(tried.values())
    # Poison every test label: the choice and every validation score must not move.
    rng = np.random.default_rng(9)
    poisoned = replace(
        split,  # type: ignore[type-var]
        test_item=rng.integers(0, split.n_items, split.n_users),  # type: ignore[attr-defined]
        test_negatives=rng.integers(0, split.n_items, split.test_negatives.shape),  # type: ignore[attr-defined]
    )
    model_p, tried_p = fit_ease(poisoned, l2s=(1.0, 30.0, 1000.0))
    assert model_p.l2 == model.l2 and tried_p == tried
    # ... although the poisoning does change what a test evaluation would see
    assert evaluate_scorer(model_p.score, poisoned)["ndcg@10"] != evaluate_scorer(model.score, split)["ndcg@10"]



def test_ease_items_is_none_when_the_catalogue_fits_and_the_most_frequent_otherwise() -> None:
    split = _split()
    assert ease_items(split, max_items=10_000) is None  # type: ignore[arg-type]
    items = ease_items(split, max_items=50)  # type: ignore[arg-type]
    assert items is not None and items.shape == (50,)
    counts = np.bincount(split.train_pairs()[1], minlength=split.n_items)  # type: ignore[attr-defined]
    assert counts[items].min() >= np.delete(counts, items).max()  # no left-out item is more frequent
    # the cost bound alone restricts too: 600 users, M items cost min(600, M)^2 max(600, M) flops
    bounded = ease_items(split, max_items=10_000, max_flops=100**2 * 600)  # type: ignore[arg-type]
    assert bounded is not None and bounded.shape == (100,)
    assert ease_items(split, max_items=10_000, max_cells=600 * 40).shape == (40,)  # type: ignore[arg-type, union-attr]


def test_restricted_ease_is_ease_on_those_columns_with_the_rest_below_by_popularity() -> None:
    split = _split()
    items = ease_items(split, max_items=60)  # type: ignore[arg-type]
    assert items is not None
    model = EASE(split, l2=20.0, items=items)  # type: ignore[arg-type]
    users = np.arange(split.n_users)  # type: ignore[attr-defined]
    scores = model.score(users)
    x = user_item_matrix(split)[:, items]  # type: ignore[arg-type]
    np.testing.assert_allclose(scores[:, items], x @ ease_weights(x, l2=20.0), atol=1e-4)
    rest = np.setdiff1d(np.arange(split.n_items), items)  # type: ignore[attr-defined]
    assert (scores[:, rest].max(axis=1) < scores[:, items].min(axis=1)).all()
    counts = np.bincount(split.train_pairs()[1], minlength=split.n_items)[rest]  # type: ignore[attr-defined]
    order = np.argsort(-scores[0, rest], kind="stable")
    assert (np.diff(counts[order]) <= 0).all()  # the rest in popularity order


def test_references_say_what_ease_was_restricted_to_and_what_was_left_out() -> None:
    from fedrec.experiments.references import cheap_references, left_out

    split = _split()
    refs = cheap_references(split, knn=False, ease_max_items=60)  # type: ignore[arg-type]
    assert refs["ease"].detail["items_fitted"] == 60 and refs["ease"].detail["catalogue"] == split.n_items  # type: ignore[attr-defined]
    assert "items_fitted" not in cheap_references(split, knn=False)["ease"].detail  # type: ignore[arg-type]
    assert left_out(split, knn=False) == {}  # type: ignore[arg-type]
