"""EASE: an item-item linear autoencoder in closed form (Steck 2019, "Embarrassingly
Shallow Autoencoders for Sparse Data", WWW, Sec. 3, Eq. 8).

Given the item Gram matrix ``G = X^T X`` (items x items) and an L2 weight ``lam``,

    P = (G + lam I)^-1,    B = I - P diag(1 / diag(P)),

that is ``B[i, j] = -P[i, j] / P[j, j]`` off the diagonal and ``B[j, j] = 0``: each item's
column is the ridge regression of that item on all the others, with no self-loop. A
user's scores are ``x_u @ B`` for their 0/1 history ``x_u``.
"""

from __future__ import annotations

import numpy as np

from fedrec.errors import FedrecError


def ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """The EASE item-item weights ``B`` (items x items, zero diagonal) for ``gram``.

    ``gram`` must be symmetric (it is used as given; a noisy Gram is symmetrised by its
    caller) and ``gram + lam I`` invertible, which ``lam`` > 0 guarantees for a positive
    semi-definite ``gram``. Returns a new float64 array.
    """
    gram = np.asarray(gram, dtype=np.float64)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise FedrecError(f"the Gram matrix must be square, got shape {gram.shape}")
    if not lam > 0:
        raise FedrecError(f"EASE's lambda must be > 0, got {lam}")
    regularised = gram + lam * np.eye(gram.shape[0])
    try:
        precision = np.linalg.inv(regularised)  # (I, I)
    except np.linalg.LinAlgError:
        raise FedrecError("the regularised Gram matrix is singular: raise lambda") from None
    weights = -precision / np.diag(precision)[None, :]  # column j divided by P[j, j]
    np.fill_diagonal(weights, 0.0)
    return weights
