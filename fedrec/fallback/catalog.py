"""The catalogue the fallback serves: item ids, titles, genres, content vectors, popularity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.interactions import Interactions
from fedrec.errors import DataError
from fedrec.fallback.cache import cached_item_vectors
from fedrec.fallback.features import FeatureConfig
from fedrec.fallback.popularity import PopularityPrior


@dataclass(frozen=True)
class Catalog:
    """Everything the central recommender knows; no user's history is kept here."""

    item_ids: np.ndarray  # (n_items,) ids as the data set names them
    titles: tuple[str, ...]
    genre_names: tuple[str, ...]
    genres: np.ndarray  # (n_items, n_genres) 0/1
    vectors: np.ndarray  # (n_items, d) unit-norm content vectors
    popularity: PopularityPrior

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    def index_of(self, item_id: int) -> int | None:
        pos = int(np.searchsorted(self.item_ids, item_id))
        return pos if pos < self.n_items and int(self.item_ids[pos]) == item_id else None

    def example_ids(self) -> str:
        return ", ".join(str(int(i)) for i in self.item_ids[:3]) + f" ... {int(self.item_ids[-1])}"


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
            "load MovieLens, or give load_csv an item_metadata file"
        )
    if np.any(np.diff(data.item_ids) <= 0):
        raise DataError("item ids must be sorted and unique to build a catalogue")
    keep = np.ones(len(data), dtype=bool) if train_users is None else np.isin(data.users, train_users)
    prior = PopularityPrior.fit(
        users=data.users[keep], items=data.items[keep], n_items=data.n_items, user_meta=data.user_meta,
        smoothing=smoothing,
    )
    return Catalog(
        item_ids=np.asarray(data.item_ids, dtype=np.int64),
        titles=meta.titles,
        genre_names=meta.genre_names,
        genres=meta.genres,
        vectors=cached_item_vectors(meta, features, run_dir=run_dir),
        popularity=prior,
    )
