"""One contract, every recommender: popularity, content, blend, federated, routed.

Like implicit's ``RecommenderBase`` test mixin: the same checks run against each model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedrec.fallback import (
    BlendConfig,
    Catalog,
    ContentRecommender,
    Demographics,
    PopularityRecommender,
    Query,
    Recommender,
    RoutedRecommender,
    RoutingConfig,
)
from fedrec.fallback.ondevice import FederatedRecommender, load_tower
from fedrec.fallback.preferences import PreferenceConfig, PreferenceRecommender
from fedrec.models import ModelConfig, init_shared
from fedrec.training.local import init_private

from .conftest import N_ITEMS


def _federated(catalog: Catalog) -> FederatedRecommender:
    model = ModelConfig(n_items=catalog.n_items, gmf_dim=4, mlp_layers=(8, 4))
    private = init_private(model, rng=np.random.default_rng(5))
    return FederatedRecommender(tower=load_tower(init_shared(model, seed=1), model), private=private)


def _routed(n: int) -> Callable[[Catalog], Recommender]:
    return lambda c: RoutedRecommender(
        fallback=ContentRecommender(c, BlendConfig(0.5)), federated=_federated(c), n_interactions=n,
        config=RoutingConfig(min_interactions=2, full_interactions=6),
    )


FACTORIES: dict[str, Callable[[Catalog], Recommender]] = {
    "popularity": lambda c: PopularityRecommender(c.popularity),
    "content": lambda c: ContentRecommender(c, BlendConfig(popularity_weight=0.0)),
    "blend": lambda c: ContentRecommender(c, BlendConfig(popularity_weight=0.4, smoothing=5.0)),
    "federated": _federated,
    "preferences": lambda c: PreferenceRecommender(c),
    "preferences, calibration only": lambda c: PreferenceRecommender(c, PreferenceConfig(calibration_weight=1.0, neighbours=3)),
    "routed-fallback": _routed(1),
    "routed-blend": _routed(3),
    "routed-federated": _routed(9),
}
QUERIES = {
    "empty": Query.of_items([]),
    "one liked": Query.of_items([0]),
    "three liked": Query.of_items([1, 4, 6], Demographics(age=30, gender="F")),
    "genres": Query(given=np.array([2], dtype=np.int64), genres=(1,), demographics=Demographics(occupation="a")),
    "text": Query(given=np.empty(0, dtype=np.int64), genres=(0,), text="film"),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("query_name", sorted(QUERIES))
@pytest.mark.parametrize("k", [1, 3, N_ITEMS])
def test_recommender_contract(checkerboard: Catalog, name: str, query_name: str, k: int) -> None:
    recommender = FACTORIES[name](checkerboard)
    query = QUERIES[query_name]
    recs = recommender.recommend(query, k=k)
    items = [r.item for r in recs]
    assert len(items) == min(k, N_ITEMS - query.given.shape[0])
    assert len(set(items)) == len(items), "top-k must be unique"
    assert not set(items) & set(query.given.tolist()), "given items must never be recommended"
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True), "sorted by score, best first"
    assert all(np.isfinite(scores))
    assert all(r.reason for r in recs), "every recommendation has a reason"
    again = FACTORIES[name](checkerboard).recommend(query, k=k)
    assert [(r.item, r.score) for r in again] == [(r.item, r.score) for r in recs], "deterministic"
    full = recommender.scores(query)
    assert full.shape == (N_ITEMS,)
    np.testing.assert_allclose([full[i] for i in items], scores)


def test_checkerboard_content_known_answer(checkerboard: Catalog) -> None:
    content = ContentRecommender(checkerboard, BlendConfig(popularity_weight=0.0))
    recs = content.recommend(Query.of_items([0]), k=3)
    # the other even items tie on content; ties go to the lower index
    assert [r.item for r in recs] == [2, 4, 6]
    assert recs[0].reason == "shares genres Even with Film (1990)"
    by_genre = content.recommend(Query(given=np.empty(0, np.int64), genres=(1,)), k=4)
    assert [r.item for r in by_genre] == [1, 3, 5, 7]
    assert by_genre[0].reason == "matches your genres Odd"


def test_blend_breaks_content_ties_by_popularity(checkerboard: Catalog) -> None:
    blend = ContentRecommender(checkerboard, BlendConfig(popularity_weight=0.3, smoothing=float("inf")))
    # among the odd items (content ties), 7 is the most popular, then 5, then 3
    assert [r.item for r in blend.recommend(Query.of_items([1]), k=3)] == [7, 5, 3]


def test_empty_profile_is_popularity(checkerboard: Catalog) -> None:
    blend = ContentRecommender(checkerboard, BlendConfig(popularity_weight=0.2))
    pop = PopularityRecommender(checkerboard.popularity)
    empty = Query.of_items([])
    assert [r.item for r in blend.recommend(empty, k=N_ITEMS)] == [r.item for r in pop.recommend(empty, k=N_ITEMS)]
    assert [r.item for r in pop.recommend(empty, k=3)] == [7, 5, 3]
    assert pop.recommend(empty, k=1)[0].reason == "popular with many users"


def test_demographics_move_the_prior_towards_the_group(checkerboard: Catalog) -> None:
    pop = PopularityRecommender(checkerboard.popularity)
    # item 6 is popular only with the 'M' group; a strong group prior puts it first for 'M'
    prior = checkerboard.popularity
    shares = prior.shares(Demographics(gender="M"), smoothing=0.1)
    assert int(np.argmax(shares)) == 6
    assert pop.recommend(Query.of_items([], Demographics(gender="F")), k=1)[0].item == 7


def test_reasons_name_popularity_when_content_does_not_stand_out(checkerboard: Catalog) -> None:
    blend = ContentRecommender(checkerboard, BlendConfig(popularity_weight=0.9, smoothing=float("inf")))
    recs = {r.item: r.reason for r in blend.recommend(Query.of_items([0]), k=N_ITEMS)}
    assert recs[7] == "popular with many users"  # odd: no content link to the liked even item
    assert recs[2] == "shares genres Even with Film (1990)"
