"""What a new user may tell at sign-up, and its validation against the catalogue.

Every field is optional: favourite genres, one to five liked items (ids as the data set
names them), a line of free text, demographics where the data set has them. An empty
profile is valid; it is served by popularity alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedrec.errors import ProfileError

if TYPE_CHECKING:
    from fedrec.fallback.catalog import Catalog

MAX_LIKED = 5
MAX_TEXT = 500  # characters of free text
AGE_RANGE = (1, 120)
# Age groups of MovieLens 1M's documentation; a 19- and a 23-year-old count as alike.
AGE_EDGES = (18, 25, 35, 45, 50, 56)
AGE_LABELS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


def age_group(age: float) -> str:
    return AGE_LABELS[int(np.searchsorted(AGE_EDGES, age, side="right"))]


@dataclass(frozen=True)
class Demographics:
    age: int | None = None
    gender: str | None = None
    occupation: str | None = None

    def groups(self) -> dict[str, str]:
        """Attribute -> group label, for the attributes given."""
        out: dict[str, str] = {}
        if self.age is not None:
            out["age"] = age_group(self.age)
        if self.gender is not None:
            out["gender"] = self.gender
        if self.occupation is not None:
            out["occupation"] = self.occupation
        return out

    def describe(self) -> str:
        return ", ".join(self.groups().values())


@dataclass(frozen=True)
class Profile:
    """A sign-up profile as a client sends it (item ids, genre names)."""

    genres: tuple[str, ...] = ()
    liked_items: tuple[int | str, ...] = ()  # the data set's own item ids
    demographics: Demographics = field(default_factory=Demographics)
    text: str = ""  # free text ("space adventures, old westerns")


@dataclass(frozen=True)
class Query:
    """A profile resolved against a catalogue: what every recommender scores.

    ``given`` holds item *indices* the user already has (liked at sign-up, or their
    history); no recommender may return them.
    """

    given: np.ndarray  # (n_given,) int64 item index
    genres: tuple[int, ...] = ()  # genre column indices
    demographics: Demographics = field(default_factory=Demographics)
    text: str = ""  # free text, stripped

    @property
    def states_preferences(self) -> bool:
        """Whether the user said anything about their taste (genres, liked items, text)."""
        return bool(self.given.shape[0] or self.genres or self.text)

    @classmethod
    def of_items(cls, items: np.ndarray | list[int], demographics: Demographics | None = None) -> Query:
        return cls(given=np.asarray(items, dtype=np.int64), demographics=demographics or Demographics())


def resolve_profile(profile: Profile, catalog: Catalog) -> Query:
    """Check ``profile`` against ``catalog`` and turn names and ids into indices.

    Raises
    ------
    ProfileError
        Listing every problem: unknown genre (naming the known ones), unknown or
        repeated item id, too many liked items, free text too long, age out of range,
        unknown gender or occupation.
    """
    problems: list[str] = []
    genre_index = {name.lower(): i for i, name in enumerate(catalog.genre_names)}
    genres: list[int] = []
    for name in profile.genres:
        if name.lower() not in genre_index:
            known = f"known genres: {', '.join(catalog.genre_names)}" if catalog.genre_names else (
                "this data set has no genres; describe your taste with liked_items or text")
            problems.append(f"unknown genre {name!r}; {known}")
        elif genre_index[name.lower()] not in genres:
            genres.append(genre_index[name.lower()])
    if len(profile.liked_items) > MAX_LIKED:
        problems.append(f"{len(profile.liked_items)} liked items given; give at most {MAX_LIKED}")
    if len(set(profile.liked_items)) != len(profile.liked_items):
        problems.append("liked items repeat an item id; give each item once")
    given: list[int] = []
    for item_id in profile.liked_items:
        index = catalog.index_of(item_id)
        if index is None:
            problems.append(f"unknown item id {item_id}; item ids are those of the data set, e.g. {catalog.example_ids()}")
        elif index not in given:
            given.append(index)
    text = " ".join(profile.text.split())
    if len(text) > MAX_TEXT:
        problems.append(f"text of {len(text)} characters; give at most {MAX_TEXT}")
    demo = profile.demographics
    if demo.age is not None and not AGE_RANGE[0] <= demo.age <= AGE_RANGE[1]:
        problems.append(f"age {demo.age} out of range; give an age from {AGE_RANGE[0]} to {AGE_RANGE[1]}")
    for attribute, value in (("gender", demo.gender), ("occupation", demo.occupation)):
        known = catalog.popularity.values(attribute)
        if value is not None and value not in known:
            hint = f"one of {', '.join(known)}" if known else "nothing: this data set has no such field"
            problems.append(f"unknown {attribute} {value!r}; give {hint}")
    if problems:
        raise ProfileError(problems)
    return Query(given=np.array(given, dtype=np.int64), genres=tuple(genres), demographics=demo, text=text)
