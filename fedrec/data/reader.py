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

import codecs
import io
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from fedrec.data.duplicates import merge, repeated_rows
from fedrec.data.ids import MAX_INT_ID, encode
from fedrec.data.interactions import Interactions
from fedrec.data.reference import MAX_STAMP
from fedrec.data.spec import WHITESPACE, DataSpec, Duplicates, IdType, Layout

logger = logging.getLogger(__name__)

# What pyarrow raises on a file it cannot parse (ArrowInvalid is a ValueError).
_PARSE_ERRORS = (ValueError, TypeError, OverflowError, IndexError, KeyError, NotImplementedError)


class _Declined(Exception):
    """A value the reference must judge (it names the line): no second fast attempt."""


_TAB_TO_SPACE = bytes.maketrans(b"\t", b" ")


class _SingleSpaced(io.RawIOBase):
    """A whitespace-delimited file as pyarrow can parse it: every run of spaces and tabs
    one space, none at the start or end of a line. Works on bytes, a block of lines at a
    time, with ``bytes`` methods only (no regular expressions: they are ten times slower)."""

    def __init__(self, path: Any, block: int = 1 << 22) -> None:
        self._raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._block = block
        self._pending = b""  # the tail of the last block, after its last line break
        self._out = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()

    def _next(self) -> bytes:
        """The next block of whole lines, single-spaced (the file's last line may lack a break)."""
        while True:
            data = self._raw.read(self._block)
            if not data:
                data, self._pending = self._pending, b""
                last = True
                break
            data = self._pending + data
            cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
            self._pending = data[cut:]
            if cut:
                data, last = data[:cut], False
                break
        data = data.translate(_TAB_TO_SPACE)
        while b"  " in data:
            data = data.replace(b"    ", b" ").replace(b"  ", b" ")
        for old, new in ((b" \r", b"\r"), (b" \n", b"\n"), (b"\r ", b"\r"), (b"\n ", b"\n")):
            data = data.replace(old, new)
        if data.startswith(b" "):  # every block starts a line
            data = data[1:]
        if last and data.endswith(b" "):
            data = data[:-1]
        self._done = last
        return data

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            if self._done:
                return 0
            self._out = self._next()
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def _batches(layout: Layout, spec: DataSpec, types: dict[str, Any]) -> Iterator[Any]:
    """Record batches of the needed columns, a few MiB each (never the whole file at once)."""
    import pyarrow.csv as pa_csv

    if layout.parquet:
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(layout.path).iter_batches(batch_size=1 << 20, columns=list(types))
        return
    source: Any = layout.path
    if layout.delimiter == WHITESPACE:
        if "\t \r\n0a".encode(codecs.lookup(spec.encoding).name) != b"\t \r\n0a":
            raise _Declined("whitespace in an encoding whose bytes are not ASCII's")
        source = io.BufferedReader(_SingleSpaced(layout.path), buffer_size=1 << 22)
        parse = pa_csv.ParseOptions(delimiter=" ", quote_char=False, ignore_empty_lines=True)
    else:
        parse = pa_csv.ParseOptions(delimiter=layout.delimiter, ignore_empty_lines=True)
    yield from pa_csv.open_csv(
        source,
        read_options=pa_csv.ReadOptions(
            encoding=spec.encoding, column_names=None if layout.header else list(layout.names), block_size=1 << 22,
        ),
        parse_options=parse,
        convert_options=pa_csv.ConvertOptions(
            include_columns=list(types), column_types=types, null_values=[""], strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _read_columns(layout: Layout, spec: DataSpec, *, text_ids: bool) -> dict[str, np.ndarray]:
    """The needed columns as numpy arrays: ids int64 (or stripped text), ratings float32, time int64.

    Read batch by batch and copied out at once, so the peak is the arrays plus a batch,
    not the arrays twice (pyarrow's table and numpy's copy).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    id_type = pa.string() if text_ids else pa.int64()
    types: dict[str, Any] = {layout.user: id_type, layout.item: id_type}
    if layout.rating:
        types[layout.rating] = pa.float64()
    if layout.timestamp:  # CSV: text, integer seconds or ISO-8601 (_stamps); Parquet: as stored
        types[layout.timestamp] = pa.int64() if layout.parquet else pa.string()
    scale = spec.scale()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in types}
    for batch in _batches(layout, spec, types):
        for name, kind in types.items():
            column = batch.column(name)
            if column.type != kind:
                column = column.cast(kind)  # Parquet: int32 ids, or a safe cast that fails on 1.5
            if column.null_count:
                raise ValueError(f"column {name} has empty values")
            if name == layout.timestamp and kind == pa.string():
                parts[name].append(_stamps(column))
            elif kind == pa.string():
                if pc.any(pc.match_substring_regex(column, r"[\r\n]")).as_py():
                    # a quoted value spanning lines: the line-by-line reference judges (and names) it
                    raise _Declined("a line break inside a quoted value")
                column = pc.utf8_trim_whitespace(column)
                if len(column) and pc.min(pc.utf8_length(column)).as_py() == 0:
                    raise ValueError(f"column {name} has empty values")
                parts[name].append(column.to_numpy(zero_copy_only=False))
            elif name == layout.rating:
                values = column.to_numpy()  # float64: checked before float32 rounds it
                if not np.all(np.isfinite(values)) or (scale and (values.min() < scale[0] or values.max() > scale[1])):
                    raise _Declined("a rating is not finite or outside rating-scale")
                parts[name].append(values.astype(np.float32))
            else:
                parts[name].append(column.to_numpy())
        del batch
    out: dict[str, np.ndarray] = {}
    for name in types:
        chunks = parts.pop(name)
        out[name] = np.concatenate(chunks) if chunks else np.empty(0, dtype=object if text_ids else np.int64)
        del chunks
    return out


def _stamps(column: Any) -> np.ndarray:
    """Seconds since 1970 (int64) from a text column of integers (a fraction dropped:
    ``881250949.0``) or ISO-8601 dates or date-times, as
    :func:`fedrec.data.reference.stamp_field` reads them (UTC where no zone is given,
    fractions of a second dropped); anything else the reference judges."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for attempt in range(2):
        try:
            values = np.asarray(column.cast(pa.int64()).to_numpy(), dtype=np.int64)
        except _PARSE_ERRORS:
            if attempt:
                break
            column = pc.replace_substring_regex(pc.utf8_trim_whitespace(column), r"^([0-9]+)\.[0-9]*$", r"\1")
            continue
        if values.shape[0] and values.min() == 0 and pc.any(pc.starts_with(column, "-")).as_py():
            raise _Declined("a timestamp written -0")  # pyarrow reads it as 0; the reference refuses it
        return values
    for kind in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):  # zoned, then naive (read as UTC)
        try:
            micros = np.asarray(column.cast(kind).cast(pa.int64()).to_numpy(), dtype=np.int64)
        except _PARSE_ERRORS:
            continue
        return micros // 1_000_000
    raise _Declined("a timestamp is neither integer seconds nor ISO-8601")


def _ids_ok(raw: np.ndarray) -> bool:
    """Integer ids must lie in 0 .. 2^62 (text ids are checked while reading)."""
    return raw.dtype.kind not in "iu" or not raw.shape[0] or bool(raw.min() >= 0 and raw.max() < MAX_INT_ID)


def _columns(layout: Layout, spec: DataSpec) -> dict[str, np.ndarray] | None:
    text_ids = spec.id_type is IdType.STRING
    try:
        return _read_columns(layout, spec, text_ids=text_ids)
    except _Declined:
        return None
    except _PARSE_ERRORS as err:
        if text_ids:
            logger.info("fast reader declined %s (%s)", layout.path.name, type(err).__name__)
            return None
    try:  # integer parsing failed: text ids (SKUs, UUIDs), or a bad line
        return _read_columns(layout, spec, text_ids=True)
    except _Declined:
        return None
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
        ratings = columns.pop(layout.rating)  # float32; finite and within rating-scale as read
    else:
        ratings = np.ones(n, dtype=np.float32)
    if layout.timestamp:
        stamps = columns.pop(layout.timestamp)
        if stamps.min() < 0 or stamps.max() >= MAX_STAMP:
            return None
    else:
        stamps = np.arange(n, dtype=np.int64)
    user_ids, users = encode(user_raw, id_type=spec.id_type)
    del user_raw
    item_ids, items = encode(item_raw, id_type=spec.id_type)
    del item_raw
    stamps = stamps.astype(np.int64, copy=False)
    extra: dict[str, str] = {}
    repeated = repeated_rows(users, items, item_ids.shape[0])
    if repeated.shape[0]:
        if spec.duplicates is Duplicates.ERROR:
            return None  # the reference names both lines
        users, items, ratings, stamps, extra["duplicates"] = merge(
            users, items, ratings, stamps, policy=spec.duplicates, rows=repeated
        )
    return Interactions(
        name=name, users=users, items=items, ratings=ratings, timestamps=stamps, user_ids=user_ids, item_ids=item_ids,
        timed=layout.timestamp is not None, extra=extra,
    )
