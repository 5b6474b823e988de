"""The slow, obvious reader: one line at a time with the ``csv`` module.

It is the definition of a valid interactions file. The fast reader
(:mod:`fedrec.data.reader`) must agree with it; when the fast reader meets anything it
does not accept, the file is read again here, which either names the first bad line
(``file:line: what is wrong``) or returns the data. Tests compare the two readers.
"""

from __future__ import annotations

import csv
import datetime
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedrec.data.duplicates import merge_note
from fedrec.data.ids import encode
from fedrec.data.interactions import Interactions
from fedrec.data.spec import DataSpec, Duplicates, Layout, split_fields
from fedrec.errors import DataError

MAX_STAMP = 2**62
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def read_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    try:
        with path.open("r", encoding=encoding, newline="") as fh:
            for lineno, line in enumerate(fh, start=1):
                yield lineno, line.rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not valid {encoding} text ({err.reason} at byte {err.start}); set encoding= (e.g. latin-1)"
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def float_field(value: str, *, what: str, where: str) -> float:
    try:
        out = float(value.strip())
    except ValueError:
        raise DataError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(out):
        raise DataError(f"{where}: {what} {value!r} is not finite")
    return out


def stamp_field(value: str, *, where: str) -> int:
    """Seconds since 1970: an integer as written, or an ISO-8601 date or date-time
    (``2024-01-26``, ``2024-01-26T21:01:15Z``, ``2024-01-26 21:01:15+02:00``; without a
    zone it is read as UTC; fractions of a second are dropped: ties are broken at random
    by the split)."""
    text = value.strip()
    whole, dot, fraction = text.partition(".")
    if text.isascii() and whole.isdigit() and (not dot or not fraction or fraction.isdigit()):
        # integer seconds, or seconds with a fraction (RecBole's timestamp:float): dropped
        out = int(whole) if len(whole) <= 20 else MAX_STAMP  # (Python refuses int() of 4300+ digits)
    else:
        out = iso_seconds(text, where=where)
    if not 0 <= out < MAX_STAMP:
        raise DataError(f"{where}: timestamp {value!r} is out of range (1970-01-01 .. 2^62 seconds)")
    return out


def iso_seconds(text: str, *, where: str) -> int:
    """Whole seconds since 1970-01-01 UTC of an ISO-8601 date or date-time."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise DataError(
            f"{where}: timestamp {text!r} is not an integer (seconds since 1970) nor an ISO-8601 date "
            "(e.g. 2024-01-26T21:01:15Z); time-col=none drops it"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return (moment - EPOCH) // datetime.timedelta(seconds=1)


def read_reference(layout: Layout, spec: DataSpec, *, name: str) -> Interactions:
    """Read ``layout.path`` line by line; a :class:`DataError` names the first bad line."""
    path = layout.path
    lines = read_lines(path, spec.encoding)
    if layout.header:
        next(lines, None)
    pos = {c: layout.names.index(c) for c in layout.used()}
    scale = spec.scale()
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[int] = []
    linenos: list[int] = []
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            fields = split_fields(line, layout.delimiter)
        except csv.Error as err:
            raise DataError(f"{where}: not a valid delimited line ({err})") from None
        if len(fields) < len(layout.names):
            raise DataError(f"{where}: expected {len(layout.names)} fields, found {len(fields)} (truncated line?)")
        user, item = fields[pos[layout.user]].strip(), fields[pos[layout.item]].strip()
        if not user:
            raise DataError(f"{where}: empty user id")
        if not item:
            raise DataError(f"{where}: empty item id")
        rating = 1.0
        if layout.rating:
            rating = float_field(fields[pos[layout.rating]], what="rating", where=where)
            if scale and not scale[0] <= rating <= scale[1]:
                raise DataError(f"{where}: rating {rating:g} outside {scale[0]:g}..{scale[1]:g} (rating-scale)")
        stamp = len(users)
        if layout.timestamp:
            stamp = stamp_field(fields[pos[layout.timestamp]], where=where)
        users.append(user)
        items.append(item)
        ratings.append(rating)
        stamps.append(stamp)
        linenos.append(lineno)
    if not users:
        raise DataError(f"{path}: no interactions found (the file has no data rows)")
    user_ids, user_index = encode(np.asarray(users, dtype=str), id_type=spec.id_type)
    item_ids, item_index = encode(np.asarray(items, dtype=str), id_type=spec.id_type)
    groups: dict[tuple[int, int], list[int]] = {}
    for row, (u, i) in enumerate(zip(user_index.tolist(), item_index.tolist())):
        rows = groups.setdefault((u, i), [])
        if rows and spec.duplicates is Duplicates.ERROR:
            raise DataError(
                f"{path}:{linenos[row]}: duplicate interaction (user {user_ids[u]}, item {item_ids[i]}) also on line "
                f"{linenos[rows[0]]}; set duplicates=last (or first, sum, max) to merge them"
            )
        rows.append(row)
    extra: dict[str, str] = {}
    if len(groups) < len(users):
        kept: list[tuple[int, float, int]] = []  # (row whose place the pair keeps, rating, time)
        for rows in groups.values():
            rows.sort(key=lambda r: (stamps[r], r))  # by time, then line
            if spec.duplicates is Duplicates.FIRST:
                kept.append((rows[0], float(np.float32(ratings[rows[0]])), stamps[rows[0]]))
            elif spec.duplicates is Duplicates.LAST:
                kept.append((rows[-1], float(np.float32(ratings[rows[-1]])), stamps[rows[-1]]))
            else:
                values = np.asarray([np.float32(ratings[r]) for r in rows], dtype=np.float64)
                total = float(np.add.reduce(values)) if spec.duplicates is Duplicates.SUM else float(values.max())
                kept.append((rows[-1], total, stamps[rows[-1]]))
        kept.sort()
        repeated = sum(len(rows) for rows in groups.values() if len(rows) > 1)
        pairs = sum(1 for rows in groups.values() if len(rows) > 1)
        extra["duplicates"] = merge_note(repeated, pairs, spec.duplicates)
        user_index = user_index[[r for r, _, _ in kept]]
        item_index = item_index[[r for r, _, _ in kept]]
        ratings = [v for _, v, _ in kept]
        stamps = [t for _, _, t in kept]
    return Interactions(
        name=name, users=user_index, items=item_index,
        ratings=np.asarray(ratings, dtype=np.float32), timestamps=np.asarray(stamps, dtype=np.int64),
        user_ids=user_ids, item_ids=item_ids, timed=layout.timestamp is not None, extra=extra,
    )
