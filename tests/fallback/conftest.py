"""A small synthetic catalogue with a known right answer (a content 'checkerboard').

Eight items alternate between two genres; every other content field is the same for
all items, so genre alone decides content similarity: a user who likes an even item
must be shown the other even items first.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data.interactions import ItemMetadata, UserMetadata
from fedrec.fallback.catalog import Catalog
from fedrec.fallback.features import FeatureConfig, build_item_vectors
from fedrec.fallback.popularity import PopularityPrior

N_ITEMS = 8


def checkerboard_meta() -> ItemMetadata:
    genres = np.zeros((N_ITEMS, 2), dtype=np.float32)
    genres[0::2, 0] = 1.0
    genres[1::2, 1] = 1.0
    return ItemMetadata(
        titles=tuple("Film (1990)" for _ in range(N_ITEMS)), genre_names=("Even", "Odd"), genres=genres,
        year=np.full(N_ITEMS, 1990.0, dtype=np.float32),
    )


@pytest.fixture()
def checkerboard() -> Catalog:
    # 'F' users 0, 1, 3 make 7 > 5 > 3 popular; the only 'M' user (2) has item 6 alone
    users = np.array([0, 1, 3, 0, 1, 0, 2])
    items = np.array([7, 7, 7, 5, 5, 3, 6])
    meta = UserMetadata(
        age=np.array([20.0, 30.0, 40.0, 50.0], np.float32), gender=("F", "F", "M", "F"), occupation=("a", "b", "a", "b")
    )
    prior = PopularityPrior.fit(users=users, items=items, n_items=N_ITEMS, user_meta=meta)
    meta_items = checkerboard_meta()
    return Catalog(
        item_ids=np.arange(1, N_ITEMS + 1, dtype=np.int64) * 10, titles=meta_items.titles,
        genre_names=meta_items.genre_names, genres=meta_items.genres,
        vectors=build_item_vectors(meta_items, FeatureConfig(text="tfidf")), popularity=prior,
    )
