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


def has_duplicates(users: np.ndarray, items: np.ndarray, n_items: int) -> bool:
    """Whether any (user, item) pair repeats; sorts one key array (no hash table)."""
    if users.shape[0] < 2:
        return False
    key = users * n_items + items  # < n_users * n_items, within int64 for any real data set
    key.sort()  # in place: rows of a user are mostly together, so this is fast
    return bool(np.any(key[1:] == key[:-1]))


def merge(
    users: np.ndarray, items: np.ndarray, ratings: np.ndarray, stamps: np.ndarray, *, n_items: int, policy: Duplicates
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """The rows with each repeated pair merged by ``policy`` (not ``error``), and the note.

    Call it only when :func:`has_duplicates` is true.
    """
    key = users * n_items + items
    order = np.lexsort((stamps, key))  # stable: equal times keep file order
    sorted_key = key[order]
    del key
    first = np.flatnonzero(np.concatenate([[True], sorted_key[1:] != sorted_key[:-1]]))
    last = np.concatenate([first[1:], [sorted_key.shape[0]]]) - 1
    sizes = last - first + 1
    repeated = int(sizes[sizes > 1].sum())
    pairs = int(np.count_nonzero(sizes > 1))
    del sorted_key
    pick = order[first] if policy is Duplicates.FIRST else order[last]
    if policy is Duplicates.SUM:
        merged = np.add.reduceat(ratings[order].astype(np.float64), first).astype(np.float32)
    elif policy is Duplicates.MAX:
        merged = np.maximum.reduceat(ratings[order], first)
    else:
        merged = ratings[pick]
    stamps_out = stamps[order[last]] if policy in (Duplicates.SUM, Duplicates.MAX) else stamps[pick]
    back = np.argsort(pick, kind="stable")  # file order of the kept rows
    pick = pick[back]
    return (users[pick], items[pick], np.asarray(merged[back], dtype=np.float32), stamps_out[back],
            merge_note(repeated, pairs, policy))
