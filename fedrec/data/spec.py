"""How an interactions file is laid out: presets, header recognition, the column note.

A :class:`DataSpec` describes any interactions file (CSV, TSV or Parquet) and its
optional item file. Empty strings mean "recognise it": the delimiter from the file's
extension or its first line, the columns from common header names
(``userId,movieId,rating,timestamp``, ``user_id,item_id``, ``user,item``, ...).
:func:`resolve_layout` reads only the first line and returns the columns it took with
a one-line note saying so. The run-config keys of every field are in
:class:`fedrec.config.DataSettings`; messages name those keys.
"""

from __future__ import annotations

import codecs
import csv
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fedrec.errors import DataError


class DataPreset(StrEnum):
    """``data-preset``: a known layout, or ``auto`` (recognised from the header)."""

    AUTO = "auto"  # columns from the header; MovieLens' userId,movieId also finds movies.csv beside it
    GENERIC = "generic"  # columns from the header, no MovieLens item file
    ML_100K = "ml-100k"  # the MovieLens 100K folder (u.data, u.item)
    MOVIELENS_CSV = "movielens-csv"  # MovieLens' ratings.csv and movies.csv columns


class IdType(StrEnum):
    """``id-type``: how user and item ids are read."""

    AUTO = "auto"  # integers when every id is one, else text
    STRING = "string"  # always text ("007" and "7" are two ids)


NONE = "none"  # rating-col / time-col = none: the file has no such column
DELIMITERS = {",": ",", "\t": "\t", "tab": "\t", "\\t": "\t", ";": ";", "|": "|", " ": " ", "space": " "}
_SNIFF = (",", "\t", ";", "|")
PARQUET_SUFFIXES = (".parquet", ".pq")

# Normalised header names (lower case, letters and digits only) recognised with no flags.
ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "uid", "users", "customer", "customerid", "visitorid", "reviewerid", "memberid",
             "accountid", "clientid", "personid"),
    "item": ("item", "itemid", "iid", "items", "movie", "movieid", "product", "productid", "asin", "sku", "book",
             "bookid", "isbn", "track", "trackid", "song", "songid", "article", "articleid", "contentid", "videoid"),
    "rating": ("rating", "ratings", "score", "stars", "rate", "value", "bookrating", "preference", "weight"),
    "timestamp": ("timestamp", "time", "ts", "unixtime", "unixreviewtime", "datetime", "epoch", "createdat"),
}
ITEM_ALIASES: dict[str, tuple[str, ...]] = {
    "title": ("title", "name", "movietitle", "booktitle", "productname", "itemname"),
    "genres": ("genres", "genre", "categories", "category", "tags", "tag"),
    "text": ("text", "description", "overview", "plot", "summary", "content", "abstract", "blurb"),
    "year": ("year", "releaseyear", "yearofpublication", "published"),
}


def normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


@dataclass(frozen=True)
class DataSpec:
    """Everything needed to read one interactions file (and its item file)."""

    preset: DataPreset = DataPreset.AUTO
    delimiter: str = ""  # "" = from the extension or the first line
    user_col: str = ""  # "" = recognised from the header
    item_col: str = ""
    rating_col: str = ""  # "none" = no ratings: every row is a positive of weight 1
    time_col: str = ""  # "none" = no time: row order stands in for it
    id_type: IdType = IdType.AUTO
    rating_scale: str = ""  # "lo..hi": a rating outside is an error; "" = any finite number
    encoding: str = "utf-8"
    item_file: str = ""
    item_id_col: str = ""
    title_col: str = ""
    genres_col: str = ""
    text_col: str = ""
    year_col: str = ""  # "" = a year column if there is one, else a trailing "(1995)" in the title
    genre_sep: str = "|"

    def __post_init__(self) -> None:
        # a spec written with plain strings (DataSpec(id_type="string")) holds the typed
        # value; an unknown one is left for spec_problems to report with the others
        for name, enum in (("preset", DataPreset), ("id_type", IdType)):
            value = getattr(self, name)
            if not isinstance(value, enum) and value in {e.value for e in enum}:
                object.__setattr__(self, name, enum(value))

    def scale(self) -> tuple[float, float] | None:
        return parse_scale(self.rating_scale)


def parse_scale(text: str) -> tuple[float, float] | None:
    """``"0.5..5"`` -> (0.5, 5.0); ``""`` -> None; a ValueError names the expected form."""
    if not text.strip():
        return None
    low, sep, high = text.partition("..")
    try:
        if not sep:
            raise ValueError(text)
        bounds = (float(low), float(high))
    except ValueError:
        raise ValueError(f"{text!r} is not LOW..HIGH (e.g. 0.5..5)") from None
    if not bounds[0] < bounds[1]:
        raise ValueError(f"{text!r}: LOW must be below HIGH")
    return bounds


def spec_problems(spec: DataSpec) -> list[str]:
    """Every problem with the spec's values, by run-config key (no file is read)."""
    problems = []
    for key, mode, enum in (("data-preset", spec.preset, DataPreset), ("id-type", spec.id_type, IdType)):
        if not isinstance(mode, enum):
            problems.append(f"{key}: {str(mode)!r} must be one of {', '.join(enum)}")
    if spec.delimiter and spec.delimiter not in DELIMITERS:
        problems.append(f"delimiter: {spec.delimiter!r} must be one of , tab ; | space (or empty: recognised)")
    try:
        parse_scale(spec.rating_scale)
    except ValueError as err:
        problems.append(f"rating-scale: {err}")
    try:
        codecs.lookup(spec.encoding)
    except LookupError:
        problems.append(f"encoding: {spec.encoding!r} is not a known text encoding (e.g. utf-8, latin-1)")
    if not spec.genre_sep:
        problems.append("genre-sep: must not be empty (e.g. |)")
    for key, value in (("user-col", spec.user_col), ("item-col", spec.item_col)):
        if value.lower() == NONE:
            problems.append(f"{key}: an interactions file needs this column; name it or leave it empty")
    return problems


@dataclass(frozen=True)
class Layout:
    """The columns taken from one file: names as in its header (or positions, headerless)."""

    path: Path
    delimiter: str
    header: bool
    names: tuple[str, ...]  # every column of the file, in order
    user: str
    item: str
    rating: str | None
    timestamp: str | None
    note: str

    @property
    def parquet(self) -> bool:
        return self.path.suffix.lower() in PARQUET_SUFFIXES

    def used(self) -> list[str]:
        return [c for c in (self.user, self.item, self.rating, self.timestamp) if c]


def _first_line(path: Path, encoding: str) -> str:
    try:
        with path.open("rb") as fh:
            raw = fh.readline(1 << 20)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    try:
        line = raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}:1: not valid {encoding} text ({err.reason}); set encoding= (e.g. latin-1)") from None
    return re.split(r"\r\n|\r|\n", line.lstrip("\ufeff"), maxsplit=1)[0]


def _delimiter(spec: DataSpec, path: Path, line: str) -> str:
    if spec.delimiter:
        return DELIMITERS[spec.delimiter]
    if path.suffix.lower() in (".tsv", ".tab") or path.name == "u.data":
        return "\t"
    counts = {d: line.count(d) for d in _SNIFF}
    best = max(_SNIFF, key=lambda d: counts[d])  # ties: the earlier, so comma first
    return best if counts[best] else ","


def _pick(names: list[str], wanted: str, explicit: str, role: str, key: str, path: Path) -> str | None:
    if explicit.lower() == NONE:
        return None
    if explicit:
        if explicit not in names:
            raise DataError(
                f"{path}:1: no column {explicit!r} ({key}); the header has {', '.join(names)}"
            )
        return explicit
    by_norm = {normalise(n): n for n in reversed(names)}
    for alias in ALIASES[wanted]:
        if alias in by_norm:
            return by_norm[alias]
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def preset_columns(preset: DataPreset) -> DataSpec | None:
    """Column names a preset fixes (None: the preset leaves them to recognition)."""
    if preset is DataPreset.MOVIELENS_CSV:
        return DataSpec(user_col="userId", item_col="movieId", rating_col="rating", time_col="timestamp",
                        item_id_col="movieId", title_col="title", genres_col="genres", genre_sep="|")
    return None


def resolve_layout(path: Path, spec: DataSpec) -> Layout:
    """Read the first line of ``path``; decide delimiter, header and the four columns."""
    preset = preset_columns(spec.preset)
    cols = {
        "user": spec.user_col or (preset.user_col if preset else ""),
        "item": spec.item_col or (preset.item_col if preset else ""),
        "rating": spec.rating_col or (preset.rating_col if preset else ""),
        "timestamp": spec.time_col or (preset.time_col if preset else ""),
    }
    keys = {"user": "user-col", "item": "item-col", "rating": "rating-col", "timestamp": "time-col"}
    if path.suffix.lower() in PARQUET_SUFFIXES:
        names = _parquet_names(path)
        delimiter, header = "", True
    else:
        line = _first_line(path, spec.encoding)
        if not line.strip():
            raise DataError(f"{path}:1: the first line is empty (expected a header such as user,item,rating,timestamp)")
        delimiter = _delimiter(spec, path, line)
        try:
            names = [n.strip() for n in next(csv.reader([line], delimiter=delimiter))]
        except csv.Error as err:
            raise DataError(f"{path}:1: not a valid first line ({err})") from None
        header = not all(_is_number(n) for n in names if n)
        if not header:  # headerless: user, item[, rating][, timestamp] by position (as u.data)
            names = [str(k + 1) for k in range(len(names))]
            roles = ("user", "item", "rating", "timestamp")
            picked = {r: (cols[r] or (names[k] if k < len(names) else None)) for k, r in enumerate(roles)}
            picked = {r: (None if v is None or v.lower() == NONE else v) for r, v in picked.items()}
            bad = [f"{keys[r]}={v}" for r, v in picked.items() if v is not None and v not in names]
            if bad or len(names) < 2:
                raise DataError(f"{path}:1: no header and {len(names)} column(s); name the columns by position "
                                f"(user-col=1, item-col=2, ...) or add a header line")
            note = (f"{path.name}: no header; took columns by position: "
                    + ", ".join(f"{v}->{r}" for r, v in picked.items() if v))
            return Layout(path, delimiter, False, tuple(names), picked["user"] or "", picked["item"] or "",
                          picked["rating"], picked["timestamp"], note)
    picked_h = {r: _pick(names, r, cols[r], r, keys[r], path) for r in cols}
    missing = [r for r in ("user", "item") if picked_h[r] is None]
    if missing:
        raise DataError(
            f"{path}:1: no {' or '.join(missing)} column recognised in the header ({', '.join(names)}); "
            f"name it with {' and '.join(keys[r] + '=COLUMN' for r in missing)} "
            f"(--set, a config file, or --{keys[missing[0]]} on `fedrec data check`)"
        )
    for role in ("rating", "timestamp"):
        if cols[role] and cols[role].lower() != NONE and picked_h[role] is None:
            raise DataError(f"{path}:1: no column {cols[role]!r} ({keys[role]}); the header has {', '.join(names)}")
    taken = ", ".join(f"{picked_h[r]}->{r}" for r in cols if picked_h[r])
    absent = [r for r in ("rating", "timestamp") if picked_h[r] is None]
    note = f"{path.name}: took {taken}"
    if absent:
        note += f" (no {' or '.join(absent)} column: " + "; ".join(
            {"rating": "every row is a positive", "timestamp": "row order stands in for time"}[r] for r in absent
        ) + ")"
    return Layout(path, delimiter, header, tuple(names), picked_h["user"] or "", picked_h["item"] or "",
                  picked_h["rating"], picked_h["timestamp"], note)


def _parquet_names(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: `pip install pyarrow` (or export the file as CSV)") from None
    try:
        return list(pq.read_schema(path).names)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0][:200]})") from None
