"""Simulated sign-up answers come from each held-out user's revealed items only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrec.data.interactions import Interactions
from fedrec.fallback import Catalog, FeatureConfig, build_catalog
from fedrec.fallback.collaborative import ReleasedEase
from fedrec.fallback.evaluation import ColdStartUser, cold_users, split_users
from fedrec.fallback.preferences import PreferenceConfig, PreferenceRecommender
from fedrec.fallback.profile import Demographics
from fedrec.fallback.signup import (
    BOTH,
    GENRE_ITEMS,
    GENRES,
    LIKES,
    RELEASE_GRID,
    VARIANTS,
    evaluate_signup,
    paired_difference,
    per_user,
    signup_query,
    signup_scorer,
    tune_preferences,
)
from fedrec.models.ease import ease_weights

from .conftest import N_ITEMS


@pytest.fixture(scope="module")
def setting(ml100k: Interactions) -> tuple[Catalog, list[ColdStartUser], list[ColdStartUser]]:
    rng = np.random.default_rng([0, 41])
    users = split_users(ml100k, holdout_fraction=0.02, min_interactions=6, rng=rng)
    val = cold_users(ml100k, users.validation, max_reveal=5, num_negatives=99, rng=rng)
    test = cold_users(ml100k, users.test, max_reveal=5, num_negatives=99, rng=rng)
    catalog = build_catalog(ml100k, features=FeatureConfig(text="tfidf"), run_dir=None, train_users=users.train)
    return catalog, val, test


def _poisoned(user: ColdStartUser, keep: int, rng: np.random.Generator, n_items: int) -> ColdStartUser:
    """The same user with every item after the first ``keep`` replaced (the targets included)."""
    rest = rng.choice(np.setdiff1d(np.arange(n_items), user.sequence[:keep]), size=user.sequence.shape[0] - keep, replace=False)
    sequence = np.concatenate([user.sequence[:keep], rest])
    return ColdStartUser(index=user.index, sequence=sequence, targets=sequence[5:], negatives=user.negatives,
                         demographics=user.demographics)


def test_answers_read_only_the_revealed_items(setting: tuple[Catalog, list[ColdStartUser], list[ColdStartUser]]) -> None:
    catalog, _, test = setting
    recommender = PreferenceRecommender(catalog)
    rng = np.random.default_rng(3)
    for user in test[:8]:
        for n in (0, 1, 3, 5):
            keep = max(n, GENRE_ITEMS)
            poisoned = _poisoned(user, keep, rng, catalog.n_items)
            for variant in VARIANTS:
                a, b = signup_query(user, n, variant, catalog), signup_query(poisoned, n, variant, catalog)
                np.testing.assert_array_equal(a.given, b.given)
                assert a.genres == b.genres and a.demographics == b.demographics
                scorer = signup_scorer(recommender, variant)
                np.testing.assert_array_equal(scorer(user, n), scorer(poisoned, n))
            # and poisoning the revealed items themselves does change the answers
            if n:
                changed = ColdStartUser(index=user.index, sequence=np.roll(user.sequence, -n), targets=user.targets,
                                        negatives=user.negatives, demographics=user.demographics)
                assert signup_query(changed, n, LIKES, catalog).given.tolist() != signup_query(user, n, LIKES, catalog).given.tolist()


def test_the_variants_on_a_hand_case(checkerboard: Catalog) -> None:
    user = ColdStartUser(index=0, sequence=np.array([1, 3, 4, 6, 7, 0, 2]), targets=np.array([0, 2]),
                         negatives=np.array([5]), demographics=Demographics(gender="F"))
    # the first three items are odd, odd, even: both genres; likes are the first n items
    assert signup_query(user, 0, GENRES, checkerboard).genres == (0, 1)
    assert signup_query(user, 0, GENRES, checkerboard).given.tolist() == []
    assert signup_query(user, 1, LIKES, checkerboard).genres == ()
    assert signup_query(user, 1, LIKES, checkerboard).given.tolist() == [1]
    both = signup_query(user, 2, BOTH, checkerboard, genre_items=2)
    assert both.genres == (1,) and both.given.tolist() == [1, 3]
    assert signup_query(user, 0, LIKES, checkerboard).demographics == Demographics(gender="F")
    with pytest.raises(ValueError, match="one of genres, likes"):
        signup_query(user, 0, "mood", checkerboard)


def test_paired_difference_and_its_standard_error() -> None:
    mean, se = paired_difference(np.array([0.3, 0.1, 0.2]), np.array([0.1, 0.1, 0.1]))
    assert mean == pytest.approx(0.1)
    assert se == pytest.approx(np.std([0.2, 0.0, 0.1], ddof=1) / math.sqrt(3))
    assert math.isnan(paired_difference(np.array([1.0]), np.array([0.0]))[1])


def test_tuning_reads_validation_users_only_and_keeps_statements_honoured(
    setting: tuple[Catalog, list[ColdStartUser], list[ColdStartUser]],
) -> None:
    catalog, val, test = setting
    choice = tune_preferences(catalog, val, reveal=(0, 3), base=PreferenceConfig())
    assert choice.checks.honoured
    tried = [g for g in choice.grid if not math.isnan(g["full_ndcg@10"])]
    assert tried and all(g["genre_min_share"] >= 5 and g["liked_min_overlap"] >= 3 for g in tried)
    assert any(math.isnan(g["full_ndcg@10"]) for g in choice.grid), "settings that drown statements are never scored"
    rows = evaluate_signup(catalog, test, reveal=(0, 3), config=choice.config, name="p")
    assert {(r["answers"], r["reveal"]) for r in rows} == {(v, n) for v in VARIANTS for n in (0, 3)}
    for r in rows:
        mine = per_user(signup_scorer(PreferenceRecommender(catalog, choice.config), r["answers"]), test, r["reveal"])
        assert r["full_ndcg@10"] == pytest.approx(mine["full_ndcg@10"].mean())
        assert r["diff_vs_popularity"] == pytest.approx(r["full_ndcg@10"] - r["popularity_full_ndcg@10"])
        assert r["diff_se"] > 0


def _ease_release(baskets: list[list[int]]) -> ReleasedEase:
    """An EASE release (Steck 2019) over every item, fitted to these users' baskets."""
    x = np.zeros((len(baskets), N_ITEMS))
    for row, items in enumerate(baskets):
        x[row, items] = 1.0
    return ReleasedEase(top_items=np.arange(N_ITEMS), weights=ease_weights(x.T @ x, 1.0), prior=np.zeros(N_ITEMS))


def test_the_release_reaches_the_recommender_and_its_share_is_tuned(checkerboard: Catalog) -> None:
    # a release that ties item 0 to item 5 (an odd item, far from 0 in content); users who start with 0 want 5 next
    release = _ease_release([[0, 5]] * 4 + [[i, (i + 1) % N_ITEMS] for i in range(N_ITEMS)])
    users = [ColdStartUser(index=u, sequence=np.array([0, 2, 4, 5]), targets=np.array([5]), negatives=np.array([1, 3]),
                           demographics=Demographics()) for u in range(3)]
    config = PreferenceConfig(neighbours=2, liked_weight=1.0, release_weight=0.9, smoothing=float("inf"))
    rows = {r["answers"]: r for r in evaluate_signup(checkerboard, users, reveal=(1,), config=config, name="p", release=release)}
    plain = {r["answers"]: r for r in evaluate_signup(checkerboard, users, reveal=(1,), config=config, name="p")}
    mine = per_user(signup_scorer(PreferenceRecommender(checkerboard, config, release=release), LIKES), users, 1)
    assert rows[LIKES]["full_ndcg@10"] == pytest.approx(mine["full_ndcg@10"].mean())
    assert rows[LIKES]["full_ndcg@10"] > plain[LIKES]["full_ndcg@10"]
    assert rows[LIKES]["release_weight"] == 0.9 and math.isnan(plain[LIKES]["release_weight"])
    tuned = tune_preferences(checkerboard, users, reveal=(1,), base=PreferenceConfig(neighbours=2), release=release)
    assert {g["release_weight"] for g in tuned.grid} == set(RELEASE_GRID)
    assert tuned.config.release_weight in RELEASE_GRID
    alone = tune_preferences(checkerboard, users, reveal=(1,), base=PreferenceConfig(neighbours=2))
    assert all(math.isnan(g["release_weight"]) and math.isnan(g["release_ridge"]) for g in alone.grid)
