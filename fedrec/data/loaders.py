"""Loaders: MovieLens 100K in its native format and any interactions CSV/TSV.

Every problem in an input file is reported as a :class:`DataError` that names the
file and the line, never as a bare traceback. MovieLens is special only in its
parser; everything downstream sees :class:`Interactions`.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedrec.data.interactions import Interactions, ItemMetadata, UserMetadata
from fedrec.errors import DataError

logger = logging.getLogger(__name__)

ML100K = "ml-100k"
ML100K_FILES = ("u.data", "u.item", "u.user", "u.genre")
_YEAR = re.compile(r"(\d{4})")


@dataclass(frozen=True)
class CsvColumns:
    """Column names of an interactions file; rating and timestamp are optional."""

    user: str = "user"
    item: str = "item"
    rating: str | None = "rating"
    timestamp: str | None = "timestamp"


def _read_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    try:
        with path.open("r", encoding=encoding, newline="") as fh:
            for lineno, line in enumerate(fh, start=1):
                yield lineno, line.rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid {encoding} text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def _int_field(value: str, *, what: str, where: str) -> int:
    try:
        out = int(value.strip())
    except ValueError:
        raise DataError(f"{where}: {what} {value!r} is not an integer id") from None
    if out < 0 or out >= 2**62:
        raise DataError(f"{where}: {what} {out} is out of range (0 .. 2^62)")
    return out


def _float_field(value: str, *, what: str, where: str) -> float:
    try:
        out = float(value.strip())
    except ValueError:
        raise DataError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(out):
        raise DataError(f"{where}: {what} {value!r} is not finite")
    return out


def _build(
    name: str,
    path: Path,
    rows: list[tuple[int, int, float, int]],
    lines: list[int],
    *,
    item_universe: np.ndarray | None = None,
) -> tuple[Interactions, dict[int, int]]:
    """Check duplicates, map ids to contiguous indices, return arrays."""
    if not rows:
        raise DataError(f"{path}: no interactions found (the file is empty)")
    seen: dict[tuple[int, int], int] = {}
    for (u, i, _, _), line in zip(rows, lines):
        first = seen.setdefault((u, i), line)
        if first != line:
            raise DataError(
                f"{path}:{line}: duplicate interaction (user {u}, item {i}) also on line {first}"
            )
    raw = np.array([(r[0], r[1]) for r in rows], dtype=np.int64)
    user_ids, users = np.unique(raw[:, 0], return_inverse=True)
    if item_universe is None:
        item_ids, items = np.unique(raw[:, 1], return_inverse=True)
    else:
        item_ids = item_universe
        items = np.searchsorted(item_universe, raw[:, 1])
        bad = (items >= item_ids.shape[0]) | (item_ids[np.minimum(items, item_ids.shape[0] - 1)] != raw[:, 1])
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}:{lines[k]}: item {raw[k, 1]} is not in the item file")
    ratings = np.array([r[2] for r in rows], dtype=np.float32)
    stamps = np.array([r[3] for r in rows], dtype=np.int64)
    data = Interactions(
        name=name,
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        ratings=ratings,
        timestamps=stamps,
        user_ids=user_ids,
        item_ids=item_ids,
    )
    return data, {int(v): k for k, v in enumerate(item_ids)}


def load_csv(
    path: str | Path,
    *,
    columns: CsvColumns = CsvColumns(),
    delimiter: str | None = None,
    rating_range: tuple[float, float] | None = None,
    item_metadata: str | Path | None = None,
    encoding: str = "utf-8",
    name: str | None = None,
) -> Interactions:
    """Load interactions from a CSV/TSV file with a header row.

    Parameters
    ----------
    path
        The interactions file. The delimiter is guessed from the extension
        (``.tsv`` is tab, otherwise comma) unless given.
    columns
        Header names of the user, item, rating and timestamp columns; rating and
        timestamp may be ``None`` (every row is then a positive with weight 1 and
        row order stands in for time).
    rating_range
        Inclusive (low, high) bounds; a rating outside them is an error.
    item_metadata
        Optional CSV with columns ``item,title,genres,year`` (genres ``|``-separated).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: interactions file not found")
    sep = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    lines = _read_lines(path, encoding)
    try:
        _, header_line = next(lines)
    except StopIteration:
        raise DataError(f"{path}: the file is empty (expected a header row)") from None
    header = next(csv.reader([header_line], delimiter=sep))
    wanted = [c for c in (columns.user, columns.item, columns.rating, columns.timestamp) if c]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataError(
            f"{path}:1: missing column(s) {', '.join(missing)}; the header has {', '.join(header)} "
            "(set the column names with --user-col/--item-col/--rating-col/--time-col)"
        )
    pos = {c: header.index(c) for c in wanted}
    rows: list[tuple[int, int, float, int]] = []
    linenos: list[int] = []
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        fields = next(csv.reader([line], delimiter=sep))
        if len(fields) < len(header):
            raise DataError(f"{where}: expected {len(header)} fields, found {len(fields)} (truncated line?)")
        if not fields[pos[columns.user]].strip():
            raise DataError(f"{where}: empty user id")
        user = _int_field(fields[pos[columns.user]], what="user id", where=where)
        item = _int_field(fields[pos[columns.item]], what="item id", where=where)
        rating = 1.0
        if columns.rating:
            rating = _float_field(fields[pos[columns.rating]], what="rating", where=where)
            if rating_range and not rating_range[0] <= rating <= rating_range[1]:
                raise DataError(f"{where}: rating {rating:g} outside {rating_range[0]:g}..{rating_range[1]:g}")
        stamp = len(rows)
        if columns.timestamp:
            stamp = _int_field(fields[pos[columns.timestamp]], what="timestamp", where=where)
        rows.append((user, item, rating, stamp))
        linenos.append(lineno)
    data, item_index = _build(name or path.stem, path, rows, linenos)
    if item_metadata is not None:
        data = _with_item_csv(data, Path(item_metadata), item_index, encoding)
    return data


def _with_item_csv(data: Interactions, path: Path, index: dict[int, int], encoding: str) -> Interactions:
    lines = _read_lines(path, encoding)
    try:
        _, header_line = next(lines)
    except StopIteration:
        raise DataError(f"{path}: the item file is empty (expected header item,title,genres,year)") from None
    header = next(csv.reader([header_line]))
    if "item" not in header:
        raise DataError(f"{path}:1: missing column item; the header has {', '.join(header)}")
    titles = [""] * data.n_items
    genre_lists: list[list[str]] = [[] for _ in range(data.n_items)]
    year = np.full(data.n_items, np.nan, dtype=np.float32)
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        row = dict(zip(header, next(csv.reader([line]))))
        item = _int_field(row.get("item", ""), what="item id", where=where)
        k = index.get(item)
        if k is None:
            continue  # metadata for an item nobody interacted with
        titles[k] = row.get("title", "")
        genre_lists[k] = [g for g in row.get("genres", "").split("|") if g]
        if row.get("year", "").strip():
            year[k] = _float_field(row["year"], what="year", where=where)
    names = sorted({g for gs in genre_lists for g in gs})
    genres = np.zeros((data.n_items, len(names)), dtype=np.float32)
    for k, gs in enumerate(genre_lists):
        for g in gs:
            genres[k, names.index(g)] = 1.0
    meta = ItemMetadata(titles=tuple(titles), genre_names=tuple(names), genres=genres, year=year)
    return replace(data, item_meta=meta)


def load_movielens_100k(data_dir: str | Path) -> Interactions:
    """Load MovieLens 100K from ``data_dir/ml-100k`` (or ``data_dir`` itself).

    Reads ``u.data`` (ratings), ``u.item`` (titles, dates, genre flags; latin-1),
    ``u.genre`` and ``u.user`` (demographics).
    """
    root = Path(data_dir)
    if (root / ML100K).is_dir():
        root = root / ML100K
    missing = [f for f in ML100K_FILES if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"MovieLens 100K not found in {root} (missing {', '.join(missing)}). "
            "Run `fedrec data fetch ml-100k --data DIR` where a network is available, or download "
            "ml-100k.zip from https://grouplens.org/datasets/movielens/100k/ and unzip it into DIR "
            "so that DIR/ml-100k/u.data exists; then set FEDREC_DATA_DIR=DIR. "
            "(The licence forbids redistributing these files, so fedrec never ships them.)"
        )
    genre_names: list[str] = []
    for lineno, line in _read_lines(root / "u.genre", "latin-1"):
        if line.strip():
            name, _, idx = line.partition("|")
            if not idx.strip().isdigit() or int(idx) != len(genre_names):
                raise DataError(f"{root / 'u.genre'}:{lineno}: expected 'name|{len(genre_names)}'")
            genre_names.append(name)
    item_rows: dict[int, tuple[str, float, np.ndarray]] = {}
    item_path = root / "u.item"
    for lineno, line in _read_lines(item_path, "latin-1"):
        where = f"{item_path}:{lineno}"
        fields = line.split("|")
        if len(fields) != 5 + len(genre_names):
            raise DataError(f"{where}: expected {5 + len(genre_names)} '|'-separated fields, found {len(fields)}")
        item = _int_field(fields[0], what="item id", where=where)
        match = _YEAR.search(fields[2])
        flags = np.array([_int_field(f, what="genre flag", where=where) for f in fields[5:]], dtype=np.float32)
        item_rows[item] = (fields[1], float(match.group(1)) if match else math.nan, flags)
    rows: list[tuple[int, int, float, int]] = []
    linenos: list[int] = []
    data_path = root / "u.data"
    for lineno, line in _read_lines(data_path, "latin-1"):
        if not line.strip():
            continue
        where = f"{data_path}:{lineno}"
        fields = line.split("\t")
        if len(fields) != 4:
            raise DataError(f"{where}: expected 4 tab-separated fields, found {len(fields)}")
        rating = _float_field(fields[2], what="rating", where=where)
        if not 1 <= rating <= 5:
            raise DataError(f"{where}: rating {rating:g} outside 1..5")
        rows.append(
            (
                _int_field(fields[0], what="user id", where=where),
                _int_field(fields[1], what="item id", where=where),
                rating,
                _int_field(fields[3], what="timestamp", where=where),
            )
        )
        linenos.append(lineno)
    universe = np.array(sorted(item_rows), dtype=np.int64)
    data, _ = _build(ML100K, data_path, rows, linenos, item_universe=universe)
    meta = ItemMetadata(
        titles=tuple(item_rows[i][0] for i in universe),
        genre_names=tuple(genre_names),
        genres=np.stack([item_rows[i][2] for i in universe]),
        year=np.array([item_rows[i][1] for i in universe], dtype=np.float32),
    )
    return replace(data, item_meta=meta, user_meta=_load_ml_users(root / "u.user", data.user_ids))


def _load_ml_users(path: Path, user_ids: np.ndarray) -> UserMetadata:
    by_id: dict[int, tuple[float, str, str]] = {}
    for lineno, line in _read_lines(path, "latin-1"):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        fields = line.split("|")
        if len(fields) != 5:
            raise DataError(f"{where}: expected 5 '|'-separated fields, found {len(fields)}")
        by_id[_int_field(fields[0], what="user id", where=where)] = (
            _float_field(fields[1], what="age", where=where),
            fields[2],
            fields[3],
        )
    absent = [int(u) for u in user_ids if int(u) not in by_id]
    if absent:
        raise DataError(f"{path}: user {absent[0]} has ratings but no line here")
    return UserMetadata(
        age=np.array([by_id[int(u)][0] for u in user_ids], dtype=np.float32),
        gender=tuple(by_id[int(u)][1] for u in user_ids),
        occupation=tuple(by_id[int(u)][2] for u in user_ids),
    )
