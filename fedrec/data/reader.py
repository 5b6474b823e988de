"""The fast reader: pandas' C parser for CSV/TSV, pyarrow for Parquet, numpy checks.

Chosen on ``benchmarks/load_speed.py``. It reads only the four columns it needs,
straight into typed arrays, and checks them vectorised. It accepts a file only when
every check passes; on anything else it returns ``None`` and the caller reads the file
again with the line-by-line reference (:mod:`fedrec.data.reference`), which names the
bad line. So a valid file is fast and a bad one still gets ``file:line: what``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from fedrec.data import ids
from fedrec.data.interactions import Interactions
from fedrec.data.reference import MAX_STAMP
from fedrec.data.spec import DataSpec, Layout
from fedrec.errors import DataError

logger = logging.getLogger(__name__)

# What pandas and pyarrow raise on a file they cannot parse (ParserError, EmptyDataError
# and UnicodeDecodeError are ValueErrors; pyarrow's ArrowInvalid is one too).
_PARSE_ERRORS = (ValueError, TypeError, OverflowError, IndexError, KeyError)


def _read_columns(layout: Layout, spec: DataSpec, *, text_ids: bool) -> dict[str, np.ndarray]:
    id_dtype: Any = str if text_ids else np.int64
    dtypes: dict[str, Any] = {layout.user: id_dtype, layout.item: id_dtype}
    if layout.rating:
        dtypes[layout.rating] = np.float64
    if layout.timestamp:
        dtypes[layout.timestamp] = np.int64
    if layout.parquet:
        return _read_parquet(layout, dtypes)
    frame = pd.read_csv(
        layout.path, sep=layout.delimiter, header=0 if layout.header else None,
        names=None if layout.header else list(layout.names), usecols=list(dtypes), dtype=dtypes,
        encoding=spec.encoding, engine="c", skip_blank_lines=True, keep_default_na=False, na_values=[""],
        on_bad_lines="error", low_memory=False,
    )
    return {name: frame.pop(name).to_numpy() for name in dtypes}


def _read_parquet(layout: Layout, dtypes: dict[str, Any]) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(layout.path, columns=list(dtypes))
    out: dict[str, np.ndarray] = {}
    for name, dtype in dtypes.items():
        column = table.column(name)
        if dtype is str:
            column = column.cast(pa.string())
        elif column.null_count:
            raise ValueError(f"column {name} has empty values")
        out[name] = column.to_numpy(zero_copy_only=False)
        if dtype is not str:
            out[name] = out[name].astype(dtype, casting="safe" if out[name].dtype.kind in "iu" else "unsafe")
    return out


def _ids_ok(raw: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """Checked id column (stripped text, or int64 in range) or None if a value is bad."""
    if raw.dtype.kind in "iu":
        if raw.shape[0] and (raw.min() < 0 or raw.max() >= ids.MAX_INT_ID):
            return None, False
        return raw, True
    text = pd.Series(raw, dtype=object)
    if text.isna().any():
        return None, False
    stripped = text.str.strip()
    if (stripped.str.len() == 0).any():
        return None, False
    return stripped.to_numpy(dtype=object), True


def read_fast(layout: Layout, spec: DataSpec, *, name: str) -> Interactions | None:
    """The file's interactions, or ``None`` if any check fails (then read the reference)."""
    text_ids = spec.id_type == "string"
    try:
        columns = _read_columns(layout, spec, text_ids=text_ids)
    except _PARSE_ERRORS as err:
        if text_ids:
            logger.info("fast reader declined %s (%s)", layout.path, type(err).__name__)
            return None
        try:  # integer parsing failed: text ids (SKUs, UUIDs) or a bad line
            columns = _read_columns(layout, spec, text_ids=True)
        except _PARSE_ERRORS as err2:
            logger.info("fast reader declined %s (%s)", layout.path, type(err2).__name__)
            return None
    except DataError:
        raise
    n = columns[layout.user].shape[0]
    if n == 0:
        return None
    user_raw, ok_u = _ids_ok(columns.pop(layout.user))
    item_raw, ok_i = _ids_ok(columns.pop(layout.item))
    if not (ok_u and ok_i) or user_raw is None or item_raw is None:
        return None
    if layout.rating:
        rating = columns.pop(layout.rating)
        scale = spec.scale()
        if not np.all(np.isfinite(rating)):
            return None
        if scale and (rating.min() < scale[0] or rating.max() > scale[1]):
            return None
        ratings = rating.astype(np.float32)
        del rating
    else:
        ratings = np.ones(n, dtype=np.float32)
    if layout.timestamp:
        stamps = columns.pop(layout.timestamp)
        if stamps.min() < 0 or stamps.max() >= MAX_STAMP:
            return None
    else:
        stamps = np.arange(n, dtype=np.int64)
    user_ids, users = ids.encode(user_raw, id_type=spec.id_type)
    del user_raw
    item_ids, items = ids.encode(item_raw, id_type=spec.id_type)
    del item_raw
    if n > 1 and _has_duplicates(users, items, item_ids.shape[0]):
        return None
    return Interactions(
        name=name, users=users, items=items, ratings=ratings, timestamps=stamps.astype(np.int64, copy=False),
        user_ids=user_ids, item_ids=item_ids,
    )


def _has_duplicates(users: np.ndarray, items: np.ndarray, n_items: int) -> bool:
    key = users * n_items + items  # < n_users * n_items, which fits in int64 for any real data set
    return bool(pd.Series(key, copy=False).duplicated().any())
