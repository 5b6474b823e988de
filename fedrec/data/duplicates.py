"""Several rows of one (user, item) pair: merged by the ``duplicates`` setting.

Rows of a pair are ordered by (timestamp, line); without a time column the line alone
orders them. ``last`` keeps the latest row, ``first`` the earliest; ``sum`` adds the
ratings (play or click counts) and ``max`` keeps the highest, both with the pair's
latest time. The kept rows stay in file order (a merged pair sits where its latest row
was). ``error`` merges nothing: the reader names both lines instead.
"""

from __future__ import annotations

import numpy as np

from fedrec.data.spec import Duplicates


def merge_note(rows: int, pairs: int, policy: Duplicates) -> str:
    """The one-line note on a merge: ``rows`` rows with a repeated pair became ``pairs`` rows."""
    how = {
        Duplicates.LAST: "kept the most recent row of each",
        Duplicates.FIRST: "kept the earliest row of each",
        Duplicates.SUM: "added their ratings, kept the latest time",
        Duplicates.MAX: "kept the highest rating, with the latest time",
    }[policy]
    return (f"duplicates: {rows} rows repeat a (user, item) pair, merged into {pairs} "
            f"(duplicates={policy.value}: {how})")


def repeated_rows(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """The rows whose (user, item) pair repeats, grouped by pair, in file order within a
    pair (empty: no pair repeats).

    One in-place sort of the pairs' keys finds whether any repeats (no hash table; rows
    of a user are mostly together, so it is fast); only a file with repeats pays a
    stable argsort for their rows.
    """
    if users.shape[0] < 2:
        return np.empty(0, dtype=np.int64)
    key = users * n_items + items  # < n_users * n_items, within int64 for any real data set
    key.sort()
    if not np.any(key[1:] == key[:-1]):
        return np.empty(0, dtype=np.int64)
    key = users * n_items + items
    order = np.argsort(key, kind="stable")
    key = key[order]
    same = key[1:] == key[:-1]
    del key
    involved = np.zeros(users.shape[0], dtype=bool)
    involved[1:] |= same
    involved[:-1] |= same
    return order[involved]


def merge(
    users: np.ndarray, items: np.ndarray, ratings: np.ndarray, stamps: np.ndarray, *, policy: Duplicates,
    rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """The rows with each repeated pair merged by ``policy`` (not ``error``), and the note.

    ``rows`` are the rows of repeated pairs from :func:`repeated_rows`; only they are sorted.
    """
    pair_users, pair_items = users[rows], items[rows]
    starts = np.concatenate([[True], (pair_users[1:] != pair_users[:-1]) | (pair_items[1:] != pair_items[:-1])])
    group = np.cumsum(starts) - 1
    order = rows[np.lexsort((rows, stamps[rows], group))]  # by pair, then time, then line
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [rows.shape[0]]]) - 1
    kept_at = first if policy is Duplicates.FIRST else last
    pick = order[kept_at]
    dropped = np.delete(order, kept_at)  # a merged pair stays where its kept row was: file order throughout
    if policy in (Duplicates.SUM, Duplicates.MAX):
        ratings, stamps = ratings.copy(), stamps.copy()
        if policy is Duplicates.SUM:
            ratings[pick] = np.add.reduceat(ratings[order].astype(np.float64), first).astype(np.float32)
        else:
            ratings[pick] = np.maximum.reduceat(ratings[order], first)
        stamps[pick] = stamps[order[last]]
    note = merge_note(int(rows.shape[0]), int(first.shape[0]), policy)
    return (np.delete(users, dropped), np.delete(items, dropped), np.delete(ratings, dropped),
            np.delete(stamps, dropped), note)
