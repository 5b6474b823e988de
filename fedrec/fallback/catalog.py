"""The catalogue the fallback serves: item ids, titles, genres, content vectors, popularity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.ids import is_sorted_unique, lookup, shown
from fedrec.data.interactions import Interactions
from fedrec.errors import DataError
from fedrec.fallback.cache import cached_item_vectors
from fedrec.fallback.features import FeatureConfig
from fedrec.fallback.popularity import PopularityPrior


@dataclass(frozen=True)
class Catalog:
    """Everything the central recommender knows; no user's history is kept here."""

    item_ids: np.ndarray  # (n_items,) sorted ids as the data set names them (int64 or text)
    titles: tuple[str, ...]
    genre_names: tuple[str, ...]
    genres: np.ndarray  # (n_items, n_genres) 0/1
    vectors: np.ndarray  # (n_items, d) unit-norm content vectors
    popularity: PopularityPrior

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    def index_of(self, item_id: int | str) -> int | None:
        """Index of the data set's own item id (``7`` and ``"7"`` name the same integer id)."""
        index, found = lookup(self.item_ids, np.asarray([item_id]))
        return int(index[0]) if found[0] else None

    def item_id(self, index: int) -> int | str:
        """The data set's own id of an item index, as JSON shows it."""
        return shown(self.item_ids[index])

    def example_ids(self) -> str:
        return ", ".join(str(i) for i in self.item_ids[:3]) + f" ... {self.item_ids[-1]}"


def build_catalog(
    data: Interactions,
    *,
    features: FeatureConfig,
    run_dir: Path | None,
    train_users: np.ndarray | None = None,
    smoothing: float = 200.0,
) -> Catalog:
    """Catalogue of ``data``'s items; popularity counted over ``train_users`` only (all if None).

    The item ids must be sorted (every fedrec loader gives them so) for id lookups.
    """
    meta = data.item_meta
    if meta is None:
        raise DataError(
            f"data set {data.name!r} has no item content (titles, genres); the content fallback needs it: "
            "name an item file with item-file=PATH (--set item-file=movies.csv), or use ml-100k"
        )
    if not is_sorted_unique(data.item_ids):
        raise DataError("item ids must be sorted and unique to build a catalogue")
    keep = np.ones(len(data), dtype=bool) if train_users is None else np.isin(data.users, train_users)
    prior = PopularityPrior.fit(
        users=data.users[keep], items=data.items[keep], n_items=data.n_items, user_meta=data.user_meta,
        smoothing=smoothing,
    )
    return Catalog(
        item_ids=np.asarray(data.item_ids),
        titles=meta.titles,
        genre_names=meta.genre_names,
        genres=meta.genres,
        vectors=cached_item_vectors(meta, features, run_dir=run_dir),
        popularity=prior,
    )
