"""The item catalogue shipped with the model: item ids, titles and a popularity prior.

Every device gets the same catalogue with the app (``catalog.json`` next to its data
file). It fixes the item index that the shared item embeddings use, and its
popularity counts are the on-device fallback for users with too little history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.ids import as_id_array, is_sorted_unique, lookup
from fedrec.data.interactions import Interactions
from fedrec.errors import DataError
from fedrec.experiments.results import write_atomic

CATALOG = "catalog.json"


@dataclass(frozen=True)
class Catalog:
    item_ids: np.ndarray  # (n_items,) sorted own ids (int64 or text): the index of the shared item embeddings
    titles: tuple[str, ...]
    popularity: np.ndarray  # (n_items,) float64 interaction counts of the fleet's data

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
        payload = {"item_ids": self.item_ids.tolist(), "titles": list(self.titles), "popularity": self.popularity.tolist()}
        write_atomic(path, json.dumps(payload).encode())


def catalog_from(data: Interactions, *, rating_threshold: float) -> Catalog:
    """The catalogue of a data set, popularity counted over its positive interactions."""
    positives = data.positives(rating_threshold)
    titles = data.item_meta.titles if data.item_meta is not None else tuple("" for _ in range(data.n_items))
    popularity = np.bincount(positives.items, minlength=data.n_items).astype(np.float64)
    return Catalog(item_ids=np.asarray(data.item_ids), titles=tuple(titles), popularity=popularity)


def load_catalog(path: Path) -> Catalog:
    """Read and check a ``catalog.json``."""
    try:
        raw = json.loads(path.read_text())
        item_ids = as_id_array(list(raw["item_ids"]))
        titles = tuple(str(t) for t in raw["titles"])
        popularity = np.asarray(raw["popularity"], dtype=np.float64)
    except FileNotFoundError:
        raise DataError(f"{path}: no item catalogue; copy catalog.json from `fedrec deploy split` next to the data file") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a valid catalogue ({err}); regenerate it with `fedrec deploy split`") from None
    n = item_ids.shape[0]
    if n == 0 or item_ids.ndim != 1 or len(titles) != n or popularity.shape != (n,):
        raise DataError(f"{path}: item_ids, titles and popularity must be non-empty lists of the same length")
    if not is_sorted_unique(item_ids):
        raise DataError(f"{path}: item_ids must be sorted and unique")
    return Catalog(item_ids=item_ids, titles=titles, popularity=popularity)
