"""What a device contributes to DP-EASE: two vectors of L2 norm exactly C (or zero).

Phase 1, item counts: the user's 0/1 item vector ``x`` scaled to ``C x / ||x||``.
Phase 2, co-occurrence: the upper triangle (diagonal included) of the user's pair matrix
over the released top items ``K``, packed row by row, scaled to norm C. The pair matrix
is ``x_K x_K^T`` with each pair weighted by ``pair_decay ** gap``, ``gap`` the distance
between the two items' positions in the user's time-ordered history (1 everywhere for
``pair_decay = 1``): items consumed close together count more, as in sequence-aware
item-item models. The full symmetric matrix would repeat every off-diagonal value, which
doubles its squared norm: at the same C each value would carry ~1/sqrt(2) of the signal
against the same noise.

Scaling each user's vector to norm C (per-user normalisation, each user weighs the same)
is the largest weight per value that the clipping bound allows; a user with no items in
``K`` contributes zeros. Either way the L2 norm is at most C, which is the sensitivity of
the sum to adding or removing one user (McMahan et al. 2018, Sec. 3; Dwork and Roth
2014, Thm. A.1 for the Gaussian mechanism).
"""

from __future__ import annotations

import numpy as np

COUNTS = "item_counts"  # name of the phase-1 array
GRAM = "gram_upper"  # name of the phase-2 array


def packed_size(k: int) -> int:
    """Entries in the packed upper triangle (diagonal included) of a k x k matrix."""
    return k * (k + 1) // 2


def packed_index(rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Position of (row, col), row <= col, in the row-by-row packed upper triangle."""
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    return rows * k - rows * (rows - 1) // 2 + (cols - rows)


def unpack_symmetric(packed: np.ndarray, k: int) -> np.ndarray:
    """The symmetric (k, k) matrix whose upper triangle is ``packed`` (a new array)."""
    if packed.shape != (packed_size(k),):
        raise ValueError(f"packed upper triangle of {k} items needs {packed_size(k)} values, got {packed.shape}")
    rows, cols = np.triu_indices(k)  # row-major order, the packing order
    out = np.zeros((k, k), dtype=np.float64)
    out[rows, cols] = packed
    out[cols, rows] = packed
    return out


def _normalised(indices: np.ndarray, *, size: int, name: str, clipping_norm: float) -> dict[str, np.ndarray]:
    """A float32 vector of ``size`` zeros with ``clipping_norm / sqrt(len(indices))`` at
    ``indices``: L2 norm C, shrunk by one part in a million so that float32 rounding of
    the value can never push the norm above C."""
    out = np.zeros(size, dtype=np.float32)
    if indices.shape[0]:
        out[indices] = np.float32(clipping_norm / np.sqrt(indices.shape[0]) * (1 - 1e-6))
    return {name: out}


def last_positions(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct items, position of each one's last occurrence) of a time-ordered history."""
    items = np.asarray(items, dtype=np.int64)
    reversed_unique, first_from_end = np.unique(items[::-1], return_index=True)
    return reversed_unique, items.shape[0] - 1 - first_from_end


def recency_weights(items: np.ndarray, *, decay: float) -> tuple[np.ndarray, np.ndarray]:
    """(distinct items, weight) of a time-ordered history: ``decay ** k`` for the item whose
    last occurrence is ``k`` interactions before the newest (all 1 for ``decay = 1``)."""
    distinct, position = last_positions(items)
    back = (np.asarray(items).shape[0] - 1 - position).astype(np.float64)
    return distinct, np.power(decay, back)


def count_statistic(train_items: np.ndarray, *, n_items: int, clipping_norm: float) -> dict[str, np.ndarray]:
    """Phase 1: ``C x / ||x||`` over all ``n_items`` (dense: the upload does not reveal
    which items the user has; zeros for a user with none)."""
    mine = np.unique(np.asarray(train_items, dtype=np.int64))
    return _normalised(mine, size=n_items, name=COUNTS, clipping_norm=clipping_norm)


def pair_values(positions: np.ndarray, *, decay: float) -> np.ndarray:
    """``decay ** |p_i - p_j|`` for every pair (i <= j, row-major upper triangle) of items
    at time positions ``positions``."""
    rows, cols = np.triu_indices(positions.shape[0])
    return np.power(decay, np.abs(positions[rows] - positions[cols]).astype(np.float64))


def pair_entries(
    places: np.ndarray, times: np.ndarray, *, clipping_norm: float, pair_decay: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One user's nonzero co-occurrence entries: (row, col, float32 value) with row <= col
    places in K, the values scaled so the packed upper triangle has norm C (shrunk by one
    part in a million, as :func:`_normalised`). ``places`` are the K positions of the
    user's distinct items in K and ``times`` their last positions in the history."""
    order = np.argsort(places, kind="stable")
    places, times = places[order], times[order]
    rows, cols = np.triu_indices(places.shape[0])
    if rows.shape[0] == 0:
        return places[rows], places[cols], np.zeros(0, dtype=np.float32)
    if pair_decay == 1.0:
        values = np.full(rows.shape[0], np.float32(clipping_norm / np.sqrt(rows.shape[0]) * (1 - 1e-6)))
    else:
        weights = pair_values(times, decay=pair_decay)
        values = (weights * (clipping_norm / np.linalg.norm(weights) * (1 - 1e-6))).astype(np.float32)
    return places[rows], places[cols], values


def gram_statistic(
    train_items: np.ndarray, *, top_items: np.ndarray, clipping_norm: float, pair_decay: float = 1.0,
) -> dict[str, np.ndarray]:
    """Phase 2: the packed upper triangle of the pair matrix over ``top_items`` (the
    released item list, in its order), scaled to norm C; dense, zeros if the user has none
    of them. ``train_items`` is the user's history in time order."""
    k = int(top_items.shape[0])
    where = {int(item): p for p, item in enumerate(top_items)}
    distinct, times = last_positions(train_items)
    keep = np.array([int(i) in where for i in distinct], dtype=bool)
    places = np.array([where[int(i)] for i in distinct[keep]], dtype=np.int64)
    rows, cols, values = pair_entries(places, times[keep], clipping_norm=clipping_norm, pair_decay=pair_decay)
    out = np.zeros(packed_size(k), dtype=np.float32)
    out[packed_index(rows, cols, k)] = values
    return {GRAM: out}
