"""Sign-up profile validation: every problem is reported at once, with what to do."""

from __future__ import annotations

import pytest

from fedrec.errors import ProfileError
from fedrec.fallback import Catalog, Demographics, Profile, resolve_profile
from fedrec.fallback.profile import age_group


def test_empty_profile_is_valid(checkerboard: Catalog) -> None:
    query = resolve_profile(Profile(), checkerboard)
    assert query.given.shape == (0,)
    assert query.genres == ()


def test_valid_profile_resolves_ids_and_names(checkerboard: Catalog) -> None:
    profile = Profile(genres=("odd", "Even"), liked_items=(30, 80), demographics=Demographics(age=33, gender="F", occupation="b"))
    query = resolve_profile(profile, checkerboard)
    assert query.given.tolist() == [2, 7]  # ids 30, 80 are indices 2, 7
    assert query.genres == (1, 0)
    assert query.demographics.groups() == {"age": "25-34", "gender": "F", "occupation": "b"}


def test_every_problem_is_reported(checkerboard: Catalog) -> None:
    profile = Profile(
        genres=("Western",), liked_items=(10, 10, 999, 20, 30, 40),
        demographics=Demographics(age=0, gender="X", occupation="pilot"),
    )
    with pytest.raises(ProfileError) as err:
        resolve_profile(profile, checkerboard)
    text = "\n".join(err.value.problems)
    assert "unknown genre 'Western'; known genres: Even, Odd" in text
    assert "6 liked items given; give at most 5" in text
    assert "repeat" in text
    assert "unknown item id 999" in text
    assert "age 0 out of range" in text
    assert "unknown gender 'X'; give one of F, M" in text
    assert "unknown occupation 'pilot'" in text
    assert len(err.value.problems) == 7


@pytest.mark.parametrize(("age", "group"), [(1, "<18"), (17, "<18"), (18, "18-24"), (24, "18-24"), (25, "25-34"), (56, "56+"), (120, "56+")])
def test_age_groups(age: int, group: str) -> None:
    assert age_group(age) == group


def test_free_text_is_kept_tidy_and_bounded(checkerboard: Catalog) -> None:
    query = resolve_profile(Profile(text="  old   westerns\n"), checkerboard)
    assert query.text == "old westerns" and query.states_preferences
    with pytest.raises(ProfileError, match="text of 501 characters; give at most 500"):
        resolve_profile(Profile(text="x" * 501), checkerboard)
    assert not resolve_profile(Profile(demographics=Demographics(gender="F")), checkerboard).states_preferences


def test_a_catalogue_without_genres_says_so(checkerboard: Catalog) -> None:
    from dataclasses import replace

    import numpy as np

    bare = replace(checkerboard, genre_names=(), genres=np.zeros((checkerboard.n_items, 0), dtype=np.float32))
    with pytest.raises(ProfileError, match="this data set has no genres; describe your taste with liked_items or text"):
        resolve_profile(Profile(genres=("Rock",)), bare)
