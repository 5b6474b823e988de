"""The in-memory form of a recommendation data set, shared by every loader."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ItemMetadata:
    """Content of each item, indexed by the contiguous item index (0..n_items-1).

    ``genres`` is a (n_items, n_genres) 0/1 matrix; ``year`` is NaN where unknown.
    """

    titles: tuple[str, ...]
    genre_names: tuple[str, ...]
    genres: np.ndarray  # (n_items, n_genres) float32
    year: np.ndarray  # (n_items,) float32, NaN if unknown
    texts: tuple[str, ...] | None = None  # free-text content (descriptions), where the item file has it


@dataclass(frozen=True)
class UserMetadata:
    """Demographics per user index; any field may be absent from a data set."""

    age: np.ndarray | None = None  # (n_users,) float32
    gender: tuple[str, ...] | None = None
    occupation: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Interactions:
    """Implicit-feedback interactions with contiguous indices.

    Every array has one entry per interaction. ``user_ids``/``item_ids`` map a
    contiguous index back to the id in the source file: sorted, int64 where every id
    is a plain integer, else text (see :mod:`fedrec.data.ids`).
    """

    name: str
    users: np.ndarray  # (n,) int64 user index
    items: np.ndarray  # (n,) int64 item index
    ratings: np.ndarray  # (n,) float32 (1.0 where the source has no ratings)
    timestamps: np.ndarray  # (n,) int64 (row order where the source has none)
    user_ids: np.ndarray  # (n_users,) original user ids
    item_ids: np.ndarray  # (n_items,) original item ids
    item_meta: ItemMetadata | None = None
    user_meta: UserMetadata | None = None
    extra: dict[str, str] = field(default_factory=dict)
    timed: bool = True  # False: the source has no time column and ``timestamps`` is row order

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def positives(self, threshold: float) -> Interactions:
        """Implicit conversion: keep interactions with rating >= ``threshold``.

        Indices are kept as they are (users left without interactions are kept
        in the id maps, so indices stay comparable with item metadata).
        """
        keep = self.ratings >= threshold
        return Interactions(
            name=self.name,
            users=self.users[keep],
            items=self.items[keep],
            ratings=self.ratings[keep],
            timestamps=self.timestamps[keep],
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            item_meta=self.item_meta,
            user_meta=self.user_meta,
            extra=self.extra,
            timed=self.timed,
        )

    def subset_users(self, user_index: np.ndarray) -> Interactions:
        """Keep only the given users, re-indexed 0..len(user_index)-1 in that order."""
        user_index = np.asarray(user_index, dtype=np.int64)
        remap = np.full(self.n_users, -1, dtype=np.int64)
        remap[user_index] = np.arange(user_index.shape[0])
        keep = remap[self.users] >= 0
        meta = self.user_meta
        if meta is not None:
            meta = UserMetadata(
                age=None if meta.age is None else meta.age[user_index],
                gender=None if meta.gender is None else tuple(meta.gender[i] for i in user_index),
                occupation=None
                if meta.occupation is None
                else tuple(meta.occupation[i] for i in user_index),
            )
        return Interactions(
            name=self.name,
            users=remap[self.users[keep]],
            items=self.items[keep],
            ratings=self.ratings[keep],
            timestamps=self.timestamps[keep],
            user_ids=self.user_ids[user_index],
            item_ids=self.item_ids,
            item_meta=self.item_meta,
            user_meta=meta,
            extra=self.extra,
            timed=self.timed,
        )
