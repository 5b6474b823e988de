"""The fast reader: pyarrow's multi-threaded CSV and Parquet readers, numpy checks.

Chosen on ``benchmarks/load_speed.py``: pandas' C parser is about as fast, but it
reads ``1.0`` or ``1e3`` into an int64 column, where pyarrow's typed parsing is as
strict as the reference. It reads only the columns it needs, straight into typed
arrays, and checks them vectorised. It accepts a file only when every check passes;
on anything else it returns ``None`` and the caller reads the file again with the
line-by-line reference (:mod:`fedrec.data.reference`), which names the bad line. So a
valid file is fast and a bad one still gets ``file:line: what is wrong``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fedrec.data import ids
from fedrec.data.interactions import Interactions
from fedrec.data.reference import MAX_STAMP
from fedrec.data.spec import DataSpec, Layout

logger = logging.getLogger(__name__)

# What pyarrow raises on a file it cannot parse (ArrowInvalid is a ValueError).
_PARSE_ERRORS = (ValueError, TypeError, OverflowError, IndexError, KeyError, NotImplementedError)


def _read_columns(layout: Layout, spec: DataSpec, *, text_ids: bool) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    id_type = pa.string() if text_ids else pa.int64()
    types = {layout.user: id_type, layout.item: id_type}
    if layout.rating:
        types[layout.rating] = pa.float64()
    if layout.timestamp:
        types[layout.timestamp] = pa.int64()
    if layout.parquet:
        import pyarrow.parquet as pq

        table = pq.read_table(layout.path, columns=list(types)).cast(pa.schema(list(types.items())))
    else:
        table = pa_csv.read_csv(
            layout.path,
            read_options=pa_csv.ReadOptions(
                encoding=spec.encoding, column_names=None if layout.header else list(layout.names),
                block_size=1 << 24,
            ),
            parse_options=pa_csv.ParseOptions(delimiter=layout.delimiter, ignore_empty_lines=True),
            convert_options=pa_csv.ConvertOptions(
                include_columns=list(types), column_types=types, null_values=[""], strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    out: dict[str, np.ndarray] = {}
    for name, kind in types.items():
        column = table.column(name)
        table = table.drop_columns([name])  # each column is freed once copied out
        if column.null_count:
            raise ValueError(f"column {name} has empty values")
        if kind == pa.string():
            column = pc.utf8_trim_whitespace(column)
            if column.length() and pc.min(pc.utf8_length(column)).as_py() == 0:
                raise ValueError(f"column {name} has empty values")
            out[name] = column.to_numpy(zero_copy_only=False)
        else:
            out[name] = column.to_numpy()
        del column
    return out


def _ids_ok(raw: np.ndarray) -> bool:
    """Integer ids must lie in 0 .. 2^62 (text ids are checked while reading)."""
    return raw.dtype.kind not in "iu" or not raw.shape[0] or bool(raw.min() >= 0 and raw.max() < ids.MAX_INT_ID)


def _columns(layout: Layout, spec: DataSpec) -> dict[str, np.ndarray] | None:
    text_ids = spec.id_type == "string"
    try:
        return _read_columns(layout, spec, text_ids=text_ids)
    except _PARSE_ERRORS as err:
        if text_ids:
            logger.info("fast reader declined %s (%s)", layout.path.name, type(err).__name__)
            return None
    try:  # integer parsing failed: text ids (SKUs, UUIDs), or a bad line
        return _read_columns(layout, spec, text_ids=True)
    except _PARSE_ERRORS as err:
        logger.info("fast reader declined %s (%s)", layout.path.name, type(err).__name__)
        return None


def read_fast(layout: Layout, spec: DataSpec, *, name: str) -> Interactions | None:
    """The file's interactions, or ``None`` if any check fails (then read the reference)."""
    columns = _columns(layout, spec)
    if columns is None:
        return None
    user_raw, item_raw = columns.pop(layout.user), columns.pop(layout.item)
    n = user_raw.shape[0]
    if n == 0 or not (_ids_ok(user_raw) and _ids_ok(item_raw)):
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
    key = users * n_items + items  # < n_users * n_items, within int64 for any real data set
    return bool(pd.Series(key, copy=False).duplicated().any())
