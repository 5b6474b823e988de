"""Stated preferences shape the list: genres, liked items and free text (calibrated, Steck 2018)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data.interactions import Interactions
from fedrec.fallback import Catalog, FeatureConfig, Profile, Query, build_catalog, resolve_profile
from fedrec.fallback.collaborative import ReleasedEase
from fedrec.fallback.preferences import (
    GENRE_PREFIX,
    GENRES,
    LIKED,
    POPULARITY,
    TEXT,
    PreferenceConfig,
    PreferenceRecommender,
    largest,
    most_similar,
    stated_checks,
)
from fedrec.fallback.recommender import PopularityRecommender

from .conftest import N_ITEMS

EMPTY = np.empty(0, dtype=np.int64)


@pytest.fixture(scope="module")
def ml_catalog(ml100k: Interactions) -> Catalog:
    return build_catalog(ml100k, features=FeatureConfig(text="tfidf"), run_dir=None)


@pytest.fixture(scope="module")
def ml_recommender(ml_catalog: Catalog) -> PreferenceRecommender:
    return PreferenceRecommender(ml_catalog)


@pytest.fixture(scope="module")
def ml_together(ml_catalog: Catalog) -> PreferenceRecommender:
    """Stated genres as one aspect, each aspect's credit shared over the list."""
    return PreferenceRecommender(ml_catalog, PreferenceConfig(genres_together=True, shared_credit=True))


BOTH_STRUCTURES = pytest.mark.parametrize("which", ["ml_recommender", "ml_together"])


@BOTH_STRUCTURES
def test_every_genre_with_ten_items_fills_half_of_the_top_ten(ml_catalog: Catalog, which: str, request: pytest.FixtureRequest) -> None:
    ml_recommender = request.getfixturevalue(which)
    genres = np.flatnonzero(ml_catalog.genres.sum(axis=0) >= 10)
    assert len(genres) >= 15  # ML-100K: every genre but 'unknown' and a few small ones
    for g in genres:
        name = ml_catalog.genre_names[g]
        recs = ml_recommender.recommend(resolve_profile(Profile(genres=(name,)), ml_catalog), k=10)
        carried = [ml_catalog.titles[r.item] for r in recs if ml_catalog.genres[r.item, g]]
        assert len(carried) >= 5, (name, [ml_catalog.titles[r.item] for r in recs])
        # inside the genre, popularity decides: the genre's most popular item is on the list
        members = np.flatnonzero(ml_catalog.genres[:, g])
        top = members[np.argmax(ml_catalog.popularity.counts[members])]
        assert int(top) in [r.item for r in recs], name


@BOTH_STRUCTURES
def test_two_liked_items_put_their_neighbours_on_the_list(ml_catalog: Catalog, which: str, request: pytest.FixtureRequest) -> None:
    ml_recommender = request.getfixturevalue(which)
    rng = np.random.default_rng(7)
    pairs = [np.array([49, 171])] + [np.sort(rng.choice(ml_catalog.n_items, size=2, replace=False)) for _ in range(60)]
    for given in pairs:
        near = set(most_similar(ml_recommender, given, 20).tolist())
        recs = ml_recommender.recommend(Query(given=given.astype(np.int64)), k=10)
        assert sum(r.item in near for r in recs) >= 3, [ml_catalog.titles[i] for i in given]
        assert not {r.item for r in recs} & set(given.tolist())
    # Star Wars and The Empire Strikes Back (ids 50, 172): Return of the Jedi is on the list
    recs = ml_recommender.recommend(resolve_profile(Profile(liked_items=(50, 172)), ml_catalog), k=10)
    assert "Return of the Jedi (1983)" in [ml_catalog.titles[r.item] for r in recs]


def test_the_catalogue_check_agrees(ml_recommender: PreferenceRecommender) -> None:
    checks = stated_checks(ml_recommender, pairs=20, rng=np.random.default_rng(0))
    assert checks.honoured and checks.genre_min_share >= 5 and checks.liked_min_overlap >= 3
    weak = stated_checks(PreferenceRecommender(ml_recommender.catalog, PreferenceConfig(calibration_weight=0.0)),
                         pairs=20, rng=np.random.default_rng(0))
    assert not weak.honoured, "without calibration popularity drowns a niche genre"


def test_free_text_moves_the_list(ml_catalog: Catalog, ml_recommender: PreferenceRecommender) -> None:
    query = resolve_profile(Profile(text="Star Trek"), ml_catalog)
    titles = [ml_catalog.titles[r.item] for r in ml_recommender.recommend(query, k=10)]
    assert sum("Star Trek" in t for t in titles) >= 5, titles
    plural = resolve_profile(Profile(text="documentaries"), ml_catalog)
    doc = ml_catalog.genre_names.index("Documentary")
    assert sum(ml_catalog.genres[r.item, doc] > 0 for r in ml_recommender.recommend(plural, k=10)) >= 5


@BOTH_STRUCTURES
def test_reasons_name_the_largest_contribution(ml_catalog: Catalog, which: str, request: pytest.FixtureRequest) -> None:
    ml_recommender = request.getfixturevalue(which)
    profiles = [
        Profile(genres=("Documentary",)), Profile(genres=("Sci-Fi", "Romance"), liked_items=(50,)),
        Profile(liked_items=(1, 172)), Profile(text="aliens", liked_items=(181,)), Profile(genres=("Western",), text="cowboys"),
        Profile(genres=("Film-Noir", "Animation", "Western")),
    ]
    seen: set[str] = set()
    reasons: list[str] = []
    for profile in profiles:
        query = resolve_profile(profile, ml_catalog)
        for r in ml_recommender.recommend(query, k=20):
            reasons.append(r.reason)
            assert r.score == pytest.approx(sum(r.contributions.values()))
            driver = largest(r.contributions)
            seen.add(driver.split(":")[0])
            assert r.contributions[driver] == max(r.contributions.values())
            if driver == GENRES:  # several genres as one aspect: the stated ones the item carries, in the order stated
                names = [ml_catalog.genre_names[g] for g in query.genres if ml_catalog.genres[r.item, g]]
                assert names and r.reason.startswith("matches your genre") and r.reason.endswith(", ".join(names)), r.reason
            elif driver.startswith(GENRE_PREFIX):
                assert r.reason == f"matches your genre {ml_catalog.genre_names[int(driver[len(GENRE_PREFIX):])]}"
            elif driver == LIKED:
                liked = [ml_catalog.titles[i] for i in query.given]
                assert r.reason.startswith("similar to ") and any(t in r.reason for t in liked), r.reason
            elif driver == TEXT:
                assert r.reason.startswith("matches what you wrote")
            else:
                assert driver == POPULARITY and r.reason.startswith("popular with many users")
                stated = {k: v for k, v in r.contributions.items() if k != POPULARITY and v > 0}
                # the asked-for aspect it also carries follows, never a made-up one
                assert (r.reason == "popular with many users") == (not stated), (r.reason, r.contributions)
    if which == "ml_recommender":
        assert seen == {"genre", LIKED, TEXT, POPULARITY}, "every kind of reason occurs"
    else:  # a shared credit is smaller than an item's popularity: the asked-for aspect follows it in the reason
        assert POPULARITY in seen and {"; matches your genre", "; similar to"} <= {
            clause for r in reasons for clause in ("; matches your genre", "; similar to") if clause in r
        }, reasons


def test_an_empty_profile_is_the_popularity_list(ml_catalog: Catalog, ml_recommender: PreferenceRecommender) -> None:
    empty = resolve_profile(Profile(), ml_catalog)
    assert ml_recommender.basis(empty) == "popularity"
    pop = PopularityRecommender(ml_catalog.popularity)
    mine = ml_recommender.recommend(empty, k=10)
    # the same order as the popularity prior with the recommender's smoothing (no demographics: plain counts)
    assert [r.item for r in mine] == [r.item for r in pop.recommend(empty, k=10)]
    assert {r.reason for r in mine} == {"popular with many users"}
    assert ml_recommender.basis(resolve_profile(Profile(genres=("Drama",)), ml_catalog)) == "preferences"


def test_checkerboard_known_answer(checkerboard: Catalog) -> None:
    rec = PreferenceRecommender(checkerboard, PreferenceConfig(smoothing=float("inf")))
    # odd items only, most popular first (7 > 5 > 3), then item 1
    recs = rec.recommend(Query(given=EMPTY, genres=(1,)), k=4)
    assert [r.item for r in recs] == [7, 5, 3, 1]
    assert all(r.reason == "matches your genre Odd" for r in recs)
    # with both genres stated, calibration alone follows the 50/50 mix; lam = 0.7 lets popularity take one more
    strict = PreferenceRecommender(checkerboard, PreferenceConfig(calibration_weight=1.0, smoothing=float("inf")))
    assert sorted(r.item % 2 for r in strict.recommend(Query(given=EMPTY, genres=(0, 1)), k=4)) == [0, 0, 1, 1]
    assert sorted(r.item % 2 for r in rec.recommend(Query(given=EMPTY, genres=(0, 1)), k=4)) == [0, 1, 1, 1]


def test_the_release_similarity_moves_the_liked_neighbours(checkerboard: Catalog) -> None:
    # a release whose EASE weights tie item 0 to item 5 only (an odd item, far from 0 in content)
    weights = np.zeros((N_ITEMS, N_ITEMS))
    weights[0, 5] = 1.0
    release = ReleasedEase(top_items=np.arange(N_ITEMS), weights=weights, prior=np.zeros(N_ITEMS))
    config = PreferenceConfig(neighbours=2, release_weight=0.9, smoothing=float("inf"))
    content_only = PreferenceRecommender(checkerboard, config)
    with_release = PreferenceRecommender(checkerboard, config, release=release)
    query = Query.of_items([0])
    assert 5 not in most_similar(content_only, query.given, 2)
    assert 5 in most_similar(with_release, query.given, 2)
    assert with_release.recommend(query, k=1)[0].item == 5


def test_several_genres_as_one_aspect_fill_half_the_list_between_them(ml_catalog: Catalog, ml_together: PreferenceRecommender) -> None:
    names = ("Film-Noir", "Documentary")
    query = resolve_profile(Profile(genres=names), ml_catalog)
    columns = [ml_catalog.genre_names.index(n) for n in names]
    recs = ml_together.recommend(query, k=10)
    assert sum(ml_catalog.genres[r.item, columns].any() for r in recs) >= 5
    # one genre alone: the same list as with one aspect per genre
    single = resolve_profile(Profile(genres=("Western",)), ml_catalog)
    each = PreferenceRecommender(ml_catalog, PreferenceConfig(shared_credit=True))
    assert [r.item for r in ml_together.recommend(single, k=10)] == [r.item for r in each.recommend(single, k=10)]


def test_shared_credit_changes_the_order_not_the_list(ml_catalog: Catalog, ml_recommender: PreferenceRecommender) -> None:
    shared = PreferenceRecommender(ml_catalog, PreferenceConfig(shared_credit=True))
    lam = shared.config.calibration_weight
    query = resolve_profile(Profile(genres=("Documentary",), liked_items=(50,)), ml_catalog)
    mine, theirs = shared.recommend(query, k=10), ml_recommender.recommend(query, k=10)
    assert {r.item for r in mine} == {r.item for r in theirs}
    plan = shared.plan(query)
    for a, label in enumerate(plan.labels):  # each aspect's lam p_a is shared out over the items that carry it
        assert sum(r.contributions.get(label, 0.0) for r in mine) - (1 - lam) * sum(
            float(plan.relevance.get(label, np.zeros(ml_catalog.n_items))[r.item]) for r in mine
        ) == pytest.approx(lam * plan.target[a])
    assert [r.score for r in mine] == sorted((r.score for r in mine), reverse=True)
    # the documentaries no longer all come first: a popular film the user did not ask for is shown above one
    doc = ml_catalog.genre_names.index("Documentary")
    first_plain = min(k for k, r in enumerate(mine) if not ml_catalog.genres[r.item, doc])
    assert first_plain < max(k for k, r in enumerate(mine) if ml_catalog.genres[r.item, doc])


def test_the_release_fold_in_score_joins_the_relevance(checkerboard: Catalog) -> None:
    # EASE weights that tie item 0 to item 5 only; with the fold-in score in the relevance and no
    # similarity weight, item 5 is the liked items' relevance and shown first, its reason the liked item
    weights = np.zeros((N_ITEMS, N_ITEMS))
    weights[0, 5] = 1.0
    release = ReleasedEase(top_items=np.arange(N_ITEMS), weights=weights, prior=np.zeros(N_ITEMS))
    config = PreferenceConfig(neighbours=2, release_weight=0.5, liked_weight=0.0, ease_weight=1.0, smoothing=float("inf"))
    rec = PreferenceRecommender(checkerboard, config, release=release)
    query = Query.of_items([0])
    plan = rec.plan(query)
    assert plan.relevance[LIKED][5] == pytest.approx(1.0) and plan.relevance[LIKED][np.arange(N_ITEMS) != 5].max() == 0.0
    top = rec.recommend(query, k=3)[0]
    assert top.item == 5 and top.reason == f"similar to {checkerboard.titles[0]}, which you like"
    without = PreferenceRecommender(checkerboard, PreferenceConfig(neighbours=2, release_weight=0.5, smoothing=float("inf")), release=release)
    assert LIKED not in without.plan(query).relevance or not without.plan(query).relevance[LIKED].any()
