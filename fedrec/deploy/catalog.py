"""The item catalogue shipped with the model: item ids, titles, item content and a popularity prior.

Every device gets the same catalogue with the app (``catalog.json`` next to its data
file). It fixes the item index that the shared item embeddings use, and its
popularity counts are the on-device fallback for users with too little history.
The item content (genres, year, free text) is the public metadata a deployment's
server may read besides it: it holds no interactions file
(:func:`fedrec.dpease.fit.catalogue_content`).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.data.ids import as_id_array, is_sorted_unique, lookup
from fedrec.data.interactions import Interactions, ItemMetadata
from fedrec.errors import DataError
from fedrec.experiments.results import write_atomic

if TYPE_CHECKING:
    from fedrec.config import DataSettings, RunConfig

CATALOG = "catalog.json"


@dataclass(frozen=True)
class Catalog:
    item_ids: np.ndarray  # (n_items,) sorted own ids (int64 or text): the index of the shared item embeddings
    titles: tuple[str, ...]
    popularity: np.ndarray  # (n_items,) float64 interaction counts of the fleet's data
    meta: ItemMetadata | None = None  # public item content in the same index; None where the data set has none

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    def index_of(self, ids: np.ndarray, *, where: Path) -> np.ndarray:
        """Catalogue index of each item id; a :class:`DataError` for an unknown item."""
        index, found = lookup(self.item_ids, ids)
        unknown = ~found
        if unknown.any():
            raise DataError(
                f"{where}: {int(unknown.sum())} item id(s) are not in the catalogue; "
                "the data file and catalog.json must come from the same `fedrec deploy split`"
            )
        return index

    def save(self, path: Path) -> None:
        payload: dict[str, Any] = {
            "item_ids": self.item_ids.tolist(), "titles": list(self.titles), "popularity": self.popularity.tolist(),
        }
        if self.meta is not None:
            payload.update(_meta_payload(self.meta))
        write_atomic(path, json.dumps(payload).encode())


def catalog_from(data: Interactions, *, rating_threshold: float) -> Catalog:
    """The catalogue of a data set, popularity counted over its positive interactions."""
    positives = data.positives(rating_threshold)
    titles = data.item_meta.titles if data.item_meta is not None else tuple("" for _ in range(data.n_items))
    popularity = np.bincount(positives.items, minlength=data.n_items).astype(np.float64)
    return Catalog(item_ids=np.asarray(data.item_ids), titles=tuple(titles), popularity=popularity, meta=data.item_meta)


@functools.lru_cache(maxsize=4)
def simulated_catalog(settings: DataSettings, *, seed: int) -> Catalog:
    """The catalogue of a simulated population (the run's prepared data set): what
    ``fedrec deploy split`` ships for the same data, so a simulation's server reads the
    item content through the same path as a deployment's."""
    from fedrec.data.sources import prepare  # here: the data sources are only needed where the data set is held

    return catalog_from(prepare(settings, seed=seed).interactions, rating_threshold=settings.rating_threshold)


def run_catalog(config: RunConfig) -> Catalog:
    """:func:`simulated_catalog` of a run's data set and seed."""
    return simulated_catalog(config.data, seed=config.seed)


def _meta_payload(meta: ItemMetadata) -> dict[str, Any]:
    """The item content as JSON: each item's genres as [index, weight] pairs, unknown years as null."""
    genres = np.asarray(meta.genres, dtype=np.float32)
    return {
        "genre_names": list(meta.genre_names),
        "genres": [[[int(g), float(row[g])] for g in np.flatnonzero(row)] for row in genres],
        "year": [None if math.isnan(y) else float(y) for y in np.asarray(meta.year, dtype=np.float32)],
        "texts": None if meta.texts is None else list(meta.texts),
    }


def _meta_from(raw: dict[str, Any], titles: tuple[str, ...]) -> ItemMetadata | None:
    if "genre_names" not in raw:  # a catalogue of a data set without item content
        return None
    genre_names = tuple(str(g) for g in raw["genre_names"])
    genres = np.zeros((len(titles), len(genre_names)), dtype=np.float32)
    rows = list(raw["genres"])
    if len(rows) != len(titles):
        raise ValueError("genres must have one list per item")
    for k, pairs in enumerate(rows):
        for g, weight in pairs:
            genres[k, int(g)] = float(weight)
    year = np.array([math.nan if y is None else float(y) for y in raw["year"]], dtype=np.float32)
    if year.shape != (len(titles),):
        raise ValueError("year must have one entry per item")
    texts = None if raw.get("texts") is None else tuple(str(t) for t in raw["texts"])
    if texts is not None and len(texts) != len(titles):
        raise ValueError("texts must have one entry per item")
    return ItemMetadata(titles=titles, genre_names=genre_names, genres=genres, year=year, texts=texts)


def load_catalog(path: Path) -> Catalog:
    """Read and check a ``catalog.json``."""
    try:
        raw = json.loads(path.read_text())
        item_ids = as_id_array(list(raw["item_ids"]))
        titles = tuple(str(t) for t in raw["titles"])
        popularity = np.asarray(raw["popularity"], dtype=np.float64)
        meta = _meta_from(raw, titles)
    except FileNotFoundError:
        raise DataError(f"{path}: no item catalogue; copy catalog.json from `fedrec deploy split` next to the data file") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise DataError(f"{path}: not a valid catalogue ({err}); regenerate it with `fedrec deploy split`") from None
    n = item_ids.shape[0]
    if n == 0 or item_ids.ndim != 1 or len(titles) != n or popularity.shape != (n,):
        raise DataError(f"{path}: item_ids, titles and popularity must be non-empty lists of the same length")
    if not is_sorted_unique(item_ids):
        raise DataError(f"{path}: item_ids must be sorted and unique")
    return Catalog(item_ids=item_ids, titles=titles, popularity=popularity, meta=meta)
