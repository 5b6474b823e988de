"""The user's own ids: integers or text, mapped to dense indices and back.

Every loader gives ``user_ids`` / ``item_ids`` as *sorted* arrays: int64 when every id
of that column is a plain non-negative integer (``id-type = auto``), else text
(numpy unicode). Index ``k`` is the k-th smallest id, so a lookup is a binary search
and the mapping is saved with a run as two small CSV files.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.spec import IdType
from fedrec.experiments.results import write_atomic

MAX_INT_ID = 2**62
USER_IDS = "user_ids.csv"
ITEM_IDS = "item_ids.csv"
_DIGITS = re.compile(r"[0-9]{1,19}")


def is_int_id(text: str) -> bool:
    """A plain non-negative integer id (ASCII digits, below 2^62)."""
    return _DIGITS.fullmatch(text) is not None and int(text) < MAX_INT_ID


def encode(raw: np.ndarray, *, id_type: IdType) -> tuple[np.ndarray, np.ndarray]:
    """``raw`` ids (int64, or stripped non-empty text) -> (sorted unique ids, (n,) int64 index).

    With ``id_type = auto`` a text column whose every id is a plain integer becomes
    int64, so ``"7"`` in one file and ``7`` in another name the same item.
    """
    if raw.dtype.kind in "iu" and raw.shape[0] and 0 <= raw.min() and raw.max() <= 4 * raw.shape[0] + (1 << 20):
        # ids no larger than a few times their count (the usual case): a dense table, no hash, no sort
        present = np.zeros(int(raw.max()) + 1, dtype=bool)
        present[raw] = True
        uniques = np.flatnonzero(present)
        rank = np.cumsum(present, dtype=np.int64) - 1
        del present
        return uniques.astype(np.int64), rank[raw]
    codes, uniques = pd.factorize(raw, sort=True)
    codes = codes.astype(np.int64, copy=False)
    if raw.dtype.kind in "iu":
        return np.asarray(uniques, dtype=np.int64), codes
    texts = np.asarray(uniques, dtype=str)
    if id_type is IdType.AUTO and texts.shape[0] and all(is_int_id(t) for t in texts):
        numbers = texts.astype(np.int64)
        order = np.argsort(numbers, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.shape[0])
        if np.unique(numbers).shape[0] == numbers.shape[0]:
            return numbers[order], rank[codes]
        # "7" and "07" both present: the same integer id, merge them
        merged, inverse = np.unique(numbers, return_inverse=True)
        return merged, inverse.astype(np.int64)[codes]
    return texts, codes


def as_id_array(values: Sequence[object]) -> np.ndarray:
    """Ids read back from JSON or a form: int64 if all are integers, else text."""
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    return np.asarray([str(v) for v in values], dtype=str)


def lookup(ids: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, found) of each ``query`` id in the sorted ``ids``; int and text ids compare by text."""
    query = np.asarray(query)
    if ids.shape[0] == 0:
        return np.zeros(query.shape, dtype=np.int64), np.zeros(query.shape, dtype=bool)
    if (ids.dtype.kind in "iu") != (query.dtype.kind in "iu"):
        if ids.dtype.kind in "iu":  # text query against integer ids: only plain integers can match
            ok = np.array([is_int_id(str(q).strip()) for q in query], dtype=bool)
            as_int = np.array([int(str(q).strip()) if k else -1 for q, k in zip(query, ok)], dtype=np.int64)
            index, found = lookup(ids, as_int)
            return index, found & ok
        query = query.astype(np.int64).astype(str)
    pos = np.searchsorted(ids, query)
    clipped = np.minimum(pos, ids.shape[0] - 1)
    return clipped.astype(np.int64), ids[clipped] == query


def is_sorted_unique(ids: np.ndarray) -> bool:
    return bool(np.all(ids[1:] > ids[:-1]))


def shown(value: object) -> int | str:
    """An id as JSON and tables show it: int stays int, anything else is its text."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    return str(value)


def _ids_csv(ids: np.ndarray, titles: Sequence[str] | None) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "id"] + (["title"] if titles is not None else []))
    for k, value in enumerate(ids.tolist()):
        writer.writerow([k, value] + ([titles[k]] if titles is not None else []))
    return out.getvalue().encode()


def write_id_maps(out_dir: Path, *, user_ids: np.ndarray, item_ids: np.ndarray, titles: Sequence[str] | None) -> None:
    """``user_ids.csv`` and ``item_ids.csv`` (index -> the data set's own id) beside a run's results."""
    write_atomic(Path(out_dir) / USER_IDS, _ids_csv(user_ids, None))
    write_atomic(Path(out_dir) / ITEM_IDS, _ids_csv(item_ids, titles))


def read_id_map(path: Path) -> np.ndarray:
    """The ids of a saved map, index order (int64 where all are integers)."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    values = [r["id"] for r in rows]
    if values and all(is_int_id(v) for v in values):
        return np.asarray(values, dtype=np.int64)
    return np.asarray(values, dtype=str)
