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
from collections.abc import Sequence
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


class HeaderMode(StrEnum):
    """``header``: whether the first line names the columns."""

    AUTO = "auto"  # a first line made only of numbers is data, anything else a header
    YES = "yes"  # the first line is a header, whatever it holds
    NO = "no"  # the first line is data: columns by position (user-col=1, item-col=2, ...)


class Duplicates(StrEnum):
    """``duplicates``: what to do with several rows of one (user, item) pair."""

    LAST = "last"  # keep the most recent row (latest timestamp; the later line on a tie or without time)
    FIRST = "first"  # keep the earliest row
    SUM = "sum"  # add the ratings (play or click counts), keep the latest time
    MAX = "max"  # keep the highest rating, with the latest time
    ERROR = "error"  # refuse the file, naming both lines


class IdType(StrEnum):
    """``id-type``: how user and item ids are read."""

    AUTO = "auto"  # integers when every id is one, else text
    STRING = "string"  # always text ("007" and "7" are two ids)


NONE = "none"  # rating-col / time-col = none: the file has no such column
WHITESPACE = "whitespace"  # Layout.delimiter of a file split on runs of spaces and tabs (no quoting)
DELIMITERS = {",": ",", "\t": "\t", "tab": "\t", "\\t": "\t", ";": ";", "|": "|", " ": WHITESPACE,
              "space": WHITESPACE, WHITESPACE: WHITESPACE}
_SNIFF = (",", "\t", ";", "|")
_RUNS = re.compile(r"[ \t]+")
# RecBole atomic files name their columns "name:type" (user_id:token, rating:float, class:token_seq)
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
_RECBOLE = re.compile(r"^(.*):(" + "|".join(RECBOLE_TYPES) + r")$")
PARQUET_SUFFIXES = (".parquet", ".pq")

# Normalised header names (lower case, letters and digits only) recognised with no flags.
ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "uid", "users", "customer", "customerid", "visitorid", "reviewerid", "memberid",
             "accountid", "clientid", "personid"),
    "item": ("item", "itemid", "iid", "items", "movie", "movieid", "product", "productid", "asin", "sku", "book",
             "bookid", "isbn", "track", "trackid", "song", "songid", "article", "articleid", "contentid", "videoid",
             "artist", "artistid"),
    "rating": ("rating", "ratings", "score", "stars", "rate", "value", "bookrating", "preference", "weight",
               "plays", "playcount", "count", "clicks", "views", "listens", "quantity"),
    "timestamp": ("timestamp", "time", "ts", "unixtime", "unixreviewtime", "datetime", "epoch", "createdat"),
}
ITEM_ALIASES: dict[str, tuple[str, ...]] = {
    "title": ("title", "name", "movietitle", "booktitle", "productname", "itemname"),
    "genres": ("genres", "genre", "categories", "category", "tags", "tag", "class"),
    "text": ("text", "description", "overview", "plot", "summary", "content", "abstract", "blurb"),
    "year": ("year", "releaseyear", "yearofpublication", "published"),
}


def base_name(name: str) -> str:
    """A column name without a RecBole ``:type`` suffix (``user_id:token`` -> ``user_id``)."""
    match = _RECBOLE.match(name)
    return match.group(1) if match else name


def normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", base_name(name).lower())


def split_fields(line: str, delimiter: str) -> list[str]:
    """The fields of one line: ``csv`` rules for a delimiter, plain runs of spaces and tabs
    (no quoting) for :data:`WHITESPACE`."""
    if delimiter == WHITESPACE:
        line = line.strip(" \t")
        return _RUNS.split(line) if line else [""]
    return next(csv.reader([line], delimiter=delimiter))


def find_column(names: Sequence[str], wanted: str) -> str | None:
    """The column ``wanted`` names: a header name (with or without a RecBole ``:type``),
    else a position counted from 1 (``1`` is the first column)."""
    if wanted in names:
        return wanted
    by_base = [n for n in names if base_name(n) == wanted]
    if len(by_base) == 1:
        return by_base[0]
    if wanted.isascii() and wanted.isdigit() and 1 <= int(wanted) <= len(names):
        return names[int(wanted) - 1]
    return None


def columns_hint(names: Sequence[str]) -> str:
    """How a message lists the columns one may name."""
    return f"the columns are {', '.join(names)} (or give a position, 1 to {len(names)})"


@dataclass(frozen=True)
class DataSpec:
    """Everything needed to read one interactions file (and its item file)."""

    preset: DataPreset = DataPreset.AUTO
    delimiter: str = ""  # "" = from the extension or the first line
    header: HeaderMode = HeaderMode.AUTO
    user_col: str = ""  # "" = recognised from the header
    item_col: str = ""
    rating_col: str = ""  # "none" = no ratings: every row is a positive of weight 1
    time_col: str = ""  # "none" = no time column (timestamps are then row order; the split draws at random)
    id_type: IdType = IdType.AUTO
    duplicates: Duplicates = Duplicates.LAST
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
        for name, enum in (("preset", DataPreset), ("id_type", IdType), ("header", HeaderMode),
                           ("duplicates", Duplicates)):
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
    for key, mode, enum in (("data-preset", spec.preset, DataPreset), ("id-type", spec.id_type, IdType),
                            ("header", spec.header, HeaderMode), ("duplicates", spec.duplicates, Duplicates)):
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
    if path.suffix.lower() in (".tsv", ".tab", ".inter") or path.name == "u.data":
        return "\t"
    counts = {d: line.count(d) for d in _SNIFF}
    best = max(_SNIFF, key=lambda d: counts[d])  # ties: the earlier, so comma first
    if best == "\t" and " " in line and _all_numbers(split_fields(line, WHITESPACE)) \
            and not _all_numbers(line.split("\t")):
        return WHITESPACE  # numbers aligned with tabs and spaces: runs of either separate the columns
    if counts[best]:
        return best
    return WHITESPACE if " " in line else ","  # none of , tab ; | but spaces: split on runs of them


def pick_column(names: Sequence[str], explicit: str, aliases: Sequence[str], key: str, path: Path) -> str | None:
    """The header name for one role: ``explicit`` (the setting ``key``; a name or a
    1-based position; ``none``: the file has no such column) or else the first of the
    normalised ``aliases`` the header holds. A named column that is not there is an error
    that lists the header."""
    if explicit.lower() == NONE:
        return None
    if explicit:
        found = find_column(names, explicit)
        if found is None:
            raise DataError(f"{path}:1: no column {explicit!r} ({key}); {columns_hint(names)}")
        return found
    by_norm = {normalise(n): n for n in reversed(names)}
    return next((by_norm[a] for a in aliases if a in by_norm), None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _all_numbers(fields: list[str]) -> bool:
    return all(f.strip() and _is_number(f) for f in fields)


def preset_columns(preset: DataPreset) -> DataSpec | None:
    """Column names a preset fixes (None: the preset leaves them to recognition)."""
    if preset is DataPreset.MOVIELENS_CSV:
        return DataSpec(user_col="userId", item_col="movieId", rating_col="rating", time_col="timestamp",
                        item_id_col="movieId", title_col="title", genres_col="genres", genre_sep="|")
    return None


_KEYS = {"user": "user-col", "item": "item-col", "rating": "rating-col", "timestamp": "time-col"}
_ABSENT = {"rating": "every row is a positive", "timestamp": "no time order"}


def resolve_layout(path: Path, spec: DataSpec) -> Layout:
    """Read the first line of ``path``; decide delimiter, header and the four columns.

    A column key names a header name or a position counted from 1. Without a header
    (``header = no``, or a first line made only of numbers) the columns are taken by
    position as user, item, rating, timestamp unless named.
    """
    preset = preset_columns(spec.preset)
    cols = {
        "user": spec.user_col or (preset.user_col if preset else ""),
        "item": spec.item_col or (preset.item_col if preset else ""),
        "rating": spec.rating_col or (preset.rating_col if preset else ""),
        "timestamp": spec.time_col or (preset.time_col if preset else ""),
    }
    if path.suffix.lower() in PARQUET_SUFFIXES:
        names = _parquet_names(path)
        delimiter, header = "", True
    else:
        line = _first_line(path, spec.encoding)
        if not line.strip():
            raise DataError(f"{path}:1: the first line is empty (expected a header such as user,item,rating,timestamp)")
        delimiter = _delimiter(spec, path, line)
        try:
            names = [n.strip() for n in split_fields(line, delimiter)]
        except csv.Error as err:
            raise DataError(f"{path}:1: not a valid first line ({err})") from None
        if spec.header is HeaderMode.AUTO:
            header = not all(_is_number(n) for n in names if n)
        else:
            header = spec.header is HeaderMode.YES
        if not header:
            return _by_position(path, delimiter, len(names), cols)
    picked = {r: pick_column(names, cols[r], ALIASES[r], _KEYS[r], path) for r in cols}
    missing = [r for r in ("user", "item") if picked[r] is None]
    if missing:
        raise DataError(
            f"{path}:1: no {' or '.join(missing)} column recognised in the header ({', '.join(names)}); "
            f"name it with {' and '.join(_KEYS[r] + '=COLUMN' for r in missing)}, a header name or a position from 1 "
            f"(--set, a config file, or --{_KEYS[missing[0]]} on `fedrec data check`); "
            "if the first line is data, not names, add header=no"
        )
    taken = ", ".join(f"{picked[r]}->{r}" for r in cols if picked[r])
    absent = [r for r in ("rating", "timestamp") if picked[r] is None]
    note = f"{path.name}: took {taken}"
    if delimiter == WHITESPACE:
        note += " (split on spaces and tabs)"
    if absent:
        note += f" (no {' or '.join(absent)} column: " + "; ".join(_ABSENT[r] for r in absent) + ")"
    return Layout(path, delimiter, header, tuple(names), picked["user"] or "", picked["item"] or "",
                  picked["rating"], picked["timestamp"], note)


def _by_position(path: Path, delimiter: str, width: int, cols: dict[str, str]) -> Layout:
    """A file without a header: user, item[, rating][, timestamp] by position (as u.data)."""
    names = [str(k + 1) for k in range(width)]
    picked: dict[str, str | None] = {}
    for k, role in enumerate(("user", "item", "rating", "timestamp")):
        value = cols[role] or (names[k] if k < width else "")
        if not value or value.lower() == NONE:
            picked[role] = None
        elif value in names:
            picked[role] = value
        else:
            raise DataError(f"{path}:1: no header and {width} column(s), so {_KEYS[role]}={value} names no column; "
                            f"name the columns by position (user-col=1, item-col=2, ...) or add a header line")
    if picked["user"] is None or picked["item"] is None or width < 2:
        raise DataError(f"{path}:1: no header and {width} column(s); name the columns by position "
                        f"(user-col=1, item-col=2, ...) or add a header line")
    note = (f"{path.name}: no header; took columns by position: "
            + ", ".join(f"{v}->{r}" for r, v in picked.items() if v))
    if delimiter == WHITESPACE:
        note += " (split on spaces and tabs)"
    absent = [r for r in ("rating", "timestamp") if picked[r] is None]
    if absent:
        note += f" (no {' or '.join(absent)} column: " + "; ".join(_ABSENT[r] for r in absent) + ")"
    return Layout(path, delimiter, False, tuple(names), picked["user"] or "", picked["item"] or "",
                  picked["rating"], picked["timestamp"], note)


def _parquet_names(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: `pip install pyarrow` (or export the file as CSV)") from None
    try:
        return list(pq.read_schema(path).names)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0][:200]})") from None
