"""EASE (Steck 2019) against a hand-computed case and a slow reference."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.errors import FedrecError
from fedrec.models.ease import ease_weights


def test_two_items_by_hand() -> None:
    # G + I = [[3, 1], [1, 3]], inverse = [[3, -1], [-1, 3]] / 8, so B[0, 1] = (1/8) / (3/8)
    weights = ease_weights(np.array([[2.0, 1.0], [1.0, 2.0]]), 1.0)
    np.testing.assert_allclose(weights, [[0.0, 1 / 3], [1 / 3, 0.0]], atol=1e-12)


def test_three_items_by_hand() -> None:
    # G + 2 I = diag(3, 3, 3) + 1 at (0, 1) and (1, 0): item 2 is unrelated to the others
    gram = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    weights = ease_weights(gram, 2.0)
    # inverse of [[3, 1], [1, 3]] again: B[0, 1] = B[1, 0] = 1/3, nothing to or from item 2
    np.testing.assert_allclose(weights, [[0, 1 / 3, 0], [1 / 3, 0, 0], [0, 0, 0]], atol=1e-12)


def test_columns_are_ridge_regressions_on_the_other_items() -> None:
    """Steck 2019, Sec. 3: column j minimises ||X_j - X_{-j} b||^2 + lam ||b||^2."""
    rng = np.random.default_rng(0)
    x = (rng.random((60, 7)) < 0.3).astype(np.float64)
    lam = 3.0
    weights = ease_weights(x.T @ x, lam)
    for j in range(7):
        others = [i for i in range(7) if i != j]
        a = x[:, others]
        slow = np.linalg.solve(a.T @ a + lam * np.eye(6), a.T @ x[:, j])
        np.testing.assert_allclose(weights[others, j], slow, atol=1e-10)
        assert weights[j, j] == 0.0


def test_bad_inputs_say_what_to_do() -> None:
    with pytest.raises(FedrecError, match="lambda"):
        ease_weights(np.eye(2), 0.0)
    with pytest.raises(FedrecError, match="square"):
        ease_weights(np.ones((2, 3)), 1.0)
