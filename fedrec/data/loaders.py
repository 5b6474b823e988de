"""Loaders: MovieLens 100K in its native format and any interactions CSV/TSV/Parquet.

Every problem in an input file is reported as a :class:`DataError` that names the
file and the line, never as a bare traceback. MovieLens is special only in its
parser; everything downstream sees :class:`Interactions`.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedrec.data.interactions import Interactions, ItemMetadata, UserMetadata
from fedrec.data.items import read_item_file
from fedrec.data.reader import read_fast
from fedrec.data.reference import float_field, read_lines, read_reference
from fedrec.data.spec import NONE, DataPreset, DataSpec, Layout, resolve_layout, spec_problems
from fedrec.errors import DataError

logger = logging.getLogger(__name__)

ML100K = "ml-100k"
ML100K_FILES = ("u.data", "u.item", "u.user", "u.genre")
_YEAR = re.compile(r"(\d{4})")


def _int_field(value: str, *, what: str, where: str) -> int:
    try:
        out = int(value.strip())
    except ValueError:
        raise DataError(f"{where}: {what} {value!r} is not an integer id") from None
    if out < 0 or out >= 2**62:
        raise DataError(f"{where}: {what} {out} is out of range (0 .. 2^62)")
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


def sibling_item_file(path: Path, layout: Layout, spec: DataSpec) -> Path | None:
    """MovieLens' ``movies.csv`` beside its ``ratings.csv`` (preset movielens-csv, or auto on its header),
    or RecBole's ``NAME.item`` beside ``NAME.inter``."""
    if spec.preset is not DataPreset.MOVIELENS_CSV and path.suffix.lower() == ".inter":
        candidate = path.with_suffix(".item")
        return candidate if candidate.is_file() else None
    movielens = spec.preset is DataPreset.MOVIELENS_CSV or (
        spec.preset is DataPreset.AUTO and layout.user == "userId" and layout.item == "movieId"
    )
    candidate = path.parent / "movies.csv"
    return candidate if movielens and candidate.is_file() and candidate != path else None


def load_csv(
    path: str | Path, spec: DataSpec | None = None, *, name: str | None = None, fast: bool = True
) -> Interactions:
    """Load interactions from a CSV/TSV (header or not) or Parquet file described by ``spec``.

    Columns not named in ``spec`` are recognised from the header; the choice is in
    ``result.extra["note"]``. The fast reader handles valid files; a file it declines
    is read line by line, which names the first bad line (``fast=False`` reads it so
    from the start: the reference the tests and ``benchmarks/load_speed.py`` compare with).
    """
    path = Path(path)
    spec = spec or DataSpec()
    problems = spec_problems(spec)
    if problems:
        raise DataError("; ".join(problems))
    if not path.is_file():
        raise DataError(f"{path}: interactions file not found (check dataset and data-dir)")
    layout = resolve_layout(path, spec)
    label = name or path.stem
    data = read_fast(layout, spec, name=label) if fast else None
    if data is None:
        if layout.parquet:
            raise DataError(
                f"{path}: a column has an empty, negative, non-finite or out-of-scale value, or a duplicate "
                "(user, item) pair with duplicates=error; export it as CSV and run `fedrec data check` on it to "
                "find the row"
            )
        data = read_reference(layout, spec, name=label)
    notes = [layout.note]
    if data.extra.get("duplicates"):
        notes.append(data.extra["duplicates"])
        logger.info("%s: %s", path.name, data.extra["duplicates"])
    item_path = _item_path(spec.item_file, path) if spec.item_file else sibling_item_file(path, layout, spec)
    if item_path is not None:
        meta, note = read_item_file(item_path, spec, data.item_ids, item_col=layout.item)
        data = replace(data, item_meta=meta)
        notes.append(note + ("" if spec.item_file else " (found beside the interactions; item-file=none skips it)"))
    return replace(data, extra={**data.extra, "note": "; ".join(notes), "rated": "1" if layout.rating else ""})


def _item_path(item_file: str, interactions: Path) -> Path | None:
    if item_file.lower() == NONE:
        return None
    path = Path(item_file).expanduser()
    if not path.is_file() and not path.is_absolute() and (interactions.parent / path).is_file():
        path = interactions.parent / path  # named relative to the interactions file
    if not path.is_file():
        raise DataError(f"item file {item_file!r} not found (item-file; relative to the working folder or the data)")
    return path


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
    for lineno, line in read_lines(root / "u.genre", "latin-1"):
        if line.strip():
            name, _, idx = line.partition("|")
            if not idx.strip().isdigit() or int(idx) != len(genre_names):
                raise DataError(f"{root / 'u.genre'}:{lineno}: expected 'name|{len(genre_names)}'")
            genre_names.append(name)
    item_rows: dict[int, tuple[str, float, np.ndarray]] = {}
    item_path = root / "u.item"
    for lineno, line in read_lines(item_path, "latin-1"):
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
    for lineno, line in read_lines(data_path, "latin-1"):
        if not line.strip():
            continue
        where = f"{data_path}:{lineno}"
        fields = line.split("\t")
        if len(fields) != 4:
            raise DataError(f"{where}: expected 4 tab-separated fields, found {len(fields)}")
        rating = float_field(fields[2], what="rating", where=where)
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
    for lineno, line in read_lines(path, "latin-1"):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        fields = line.split("|")
        if len(fields) != 5:
            raise DataError(f"{where}: expected 5 '|'-separated fields, found {len(fields)}")
        by_id[_int_field(fields[0], what="user id", where=where)] = (
            float_field(fields[1], what="age", where=where),
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
