"""The optional item file: id, title, genres (or tags), free text, year.

Item files are small (tens of thousands of lines), so they are read with the ``csv``
module, which names the exact line of a problem and handles quoted titles with commas.
Columns are recognised from common names (``movieId,title,genres`` of MovieLens,
``item_id,name,categories,description``, ...) unless set. A year may be its own column
or a trailing ``(1995)`` in the title, as in MovieLens.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.data.ids import is_int_id
from fedrec.data.interactions import ItemMetadata
from fedrec.data.spec import (
    ALIASES,
    DELIMITERS,
    ITEM_ALIASES,
    WHITESPACE,
    DataSpec,
    normalise,
    pick_column,
)
from fedrec.errors import DataError

YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
NO_GENRES = {"(no genres listed)", "unknown"}


def _delimiter(path: Path, spec: DataSpec, header: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab", ".item"):
        return "\t"
    if spec.delimiter and path.suffix.lower() != ".csv" and DELIMITERS[spec.delimiter] != WHITESPACE:
        return DELIMITERS[spec.delimiter]  # titles hold spaces: an item file is never split on them
    counts = {d: header.count(d) for d in (",", "\t", ";", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_item_file(path: Path, spec: DataSpec, item_ids: np.ndarray, *, item_col: str) -> tuple[ItemMetadata, str]:
    """Content for each of ``item_ids`` (sorted, the interactions' items) and a one-line note.

    Items the file does not list get an empty title and no genres; items nobody
    interacted with are skipped.
    """
    try:
        with path.open("r", encoding=spec.encoding, newline="") as fh:
            header_line = fh.readline().lstrip("\ufeff")
            delimiter = _delimiter(path, spec, header_line)
            names = [n.strip() for n in next(csv.reader([header_line], delimiter=delimiter), [])]
            id_col = pick_column(names, spec.item_id_col, (normalise(item_col), *ALIASES["item"], "id"), "item-id-col", path)
            if id_col is None:
                raise DataError(
                    f"{path}:1: no item id column recognised in the header ({', '.join(names)}); "
                    "name it with item-id-col=COLUMN"
                )
            cols = {
                "title": pick_column(names, spec.title_col, ITEM_ALIASES["title"], "title-col", path),
                "genres": pick_column(names, spec.genres_col, ITEM_ALIASES["genres"], "genres-col", path),
                "text": pick_column(names, spec.text_col, ITEM_ALIASES["text"], "text-col", path),
                "year": pick_column(names, spec.year_col, ITEM_ALIASES["year"], "year-col", path),
            }
            rows = _rows(csv.reader(fh, delimiter=delimiter), path, names, id_col, cols, spec, item_ids)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid {spec.encoding} text ({err.reason}); set encoding= (e.g. latin-1)") from None
    except csv.Error as err:
        raise DataError(f"{path}: not a valid delimited file ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read item file ({err.strerror}); check item-file") from None
    titles, genre_lists, texts, year = rows
    genre_names = sorted({g for gs in genre_lists for g in gs})
    column = {g: k for k, g in enumerate(genre_names)}
    genres = np.zeros((item_ids.shape[0], len(genre_names)), dtype=np.float32)
    for k, gs in enumerate(genre_lists):
        genres[k, [column[g] for g in gs]] = 1.0
    meta = ItemMetadata(
        titles=tuple(titles), genre_names=tuple(genre_names), genres=genres, year=year,
        texts=tuple(texts) if cols["text"] else None,
    )
    known = sum(1 for t in titles if t) if cols["title"] else sum(1 for g in genre_lists if g)
    taken = ", ".join(f"{v}->{k}" for k, v in {"id": id_col, **cols}.items() if v)
    if cols["title"] and not cols["year"]:
        taken += ", year from title"
    return meta, f"{path.name}: took {taken}; content for {known} of {item_ids.shape[0]} items"


def _rows(
    reader: Any, path: Path, names: list[str], id_col: str, cols: dict[str, str | None], spec: DataSpec,
    item_ids: np.ndarray,
) -> tuple[list[str], list[list[str]], list[str], np.ndarray]:
    n = item_ids.shape[0]
    titles, texts = [""] * n, [""] * n
    genre_lists: list[list[str]] = [[] for _ in range(n)]
    year = np.full(n, np.nan, dtype=np.float32)
    pos = {c: names.index(c) for c in (id_col, *(v for v in cols.values() if v))}
    int_ids = item_ids.dtype.kind in "iu"
    # RecBole's token_seq columns hold space-separated tokens (class:token_seq = "Action Comedy")
    genre_sep = " " if cols["genres"] and cols["genres"].endswith(":token_seq") and spec.genre_sep == "|" else spec.genre_sep
    index_of = {str(v): k for k, v in enumerate(item_ids.tolist())}
    for fields in reader:
        lineno = reader.line_num + 1  # the header line was read before the reader started
        if not any(f.strip() for f in fields):
            continue
        where = f"{path}:{lineno}"
        if len(fields) <= max(pos.values()):
            raise DataError(f"{where}: expected {len(names)} fields, found {len(fields)} (truncated line?)")
        raw_id = fields[pos[id_col]].strip()
        if not raw_id:
            raise DataError(f"{where}: empty item id")
        found = index_of.get(str(int(raw_id)) if int_ids and is_int_id(raw_id) else raw_id)
        if found is None:
            continue  # content for an item nobody interacted with
        k = found
        if cols["title"]:
            titles[k] = fields[pos[cols["title"]]].strip()
        if cols["genres"]:
            parts = (g.strip() for g in fields[pos[cols["genres"]]].split(genre_sep))
            genre_lists[k] = sorted({g for g in parts if g and g.lower() not in NO_GENRES})
        if cols["text"]:
            texts[k] = fields[pos[cols["text"]]].strip()
        if cols["year"]:
            value = fields[pos[cols["year"]]].strip()
            if value:
                try:
                    year[k] = float(value)
                except ValueError:
                    raise DataError(f"{where}: year {value!r} is not a number (year-col=none ignores it)") from None
        elif cols["title"]:
            match = YEAR_IN_TITLE.search(titles[k])
            if match:
                year[k] = float(match.group(1))
    return titles, genre_lists, texts, year
