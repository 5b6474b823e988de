"""Cold start from the DP-EASE release: the scorer holds and reads only released arrays,
the re-solve from released weights equals EASE with a larger ridge, the run's release
has its own audited ledger, and the blend choice never reads the test users."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.config import RunConfig
from fedrec.data.interactions import Interactions
from fedrec.dpease.fit import EaseRelease, content_target, ease_weights_towards
from fedrec.errors import FedrecError
from fedrec.experiments import coldstart as coldstart_run
from fedrec.experiments.coldstart import (
    DP_FOLD_IN,
    DP_GRAM_POPULARITY,
    DP_POPULARITY,
    ColdStartConfig,
    run_coldstart_eval,
)
from fedrec.experiments.results import MODEL, RESULTS, read_arrays
from fedrec.fallback.collaborative import (
    CollaborativeBlend,
    ReleasedEase,
    ReleaseSettings,
    blend_scores,
    gram_counts,
    recovered_gram,
    refit_weights,
)
from fedrec.fallback.dp_coldstart import RELEASE_DIR, release_config, release_settings, run_content_target
from fedrec.fallback.profile import Query
from fedrec.models.ease import ease_weights
from fedrec.privacy.audit import OK, audit_run


def _gram(rng: np.random.Generator, users: int = 60, items: int = 12) -> np.ndarray:
    x = (rng.random((users, items)) < 0.3).astype(np.float64)
    return x.T @ x


def test_the_gram_recovered_from_ease_weights_is_the_regularised_gram_up_to_scale() -> None:
    gram = _gram(np.random.default_rng(0))
    lam = 3.0
    weights = ease_weights(gram, lam).astype(np.float32)  # released as float32
    recovered = recovered_gram(weights)
    expected = gram + lam * np.eye(gram.shape[0])
    scale = recovered[0, 0] / expected[0, 0]
    np.testing.assert_allclose(recovered, scale * expected, rtol=1e-3, atol=1e-3 * scale * expected.max())


def test_the_gram_recovered_from_weights_shrunk_towards_content_is_exact_in_units_of_lambda() -> None:
    rng = np.random.default_rng(3)
    gram = _gram(rng, items=10)
    target = content_target(rng.normal(size=(10, 4)))
    lam = 5.0
    weights = ease_weights_towards(gram, lam, target).astype(np.float32)
    recovered = recovered_gram(weights, target=target)
    np.testing.assert_allclose(lam * recovered, gram + lam * np.eye(10), atol=1e-3 * gram.max())


def test_gram_counts_rank_the_top_items_by_row_sums_and_keep_the_counts_elsewhere() -> None:
    # K = items (1, 0, 2) in that order. User A has all three, user B item 1 alone. Phase 2
    # weighs A's 9 values by C / sqrt(6) and B's one value by C: with C = 1 the Gram's row
    # sums are (3 / sqrt(6) + 1, 3 / sqrt(6), 3 / sqrt(6)).
    a, b = np.array([1.0, 1, 1]), np.array([1.0, 0, 0])
    gram = np.outer(a, a) / np.sqrt(6) + np.outer(b, b)
    lam = 0.5
    target = content_target(np.array([[1.0, 0.2], [0.6, 0.8], [0.3, 1.0]]))  # every pair similar
    weights = ease_weights_towards(gram, lam, target)
    counts = np.array([2.0, 1.0, 3.0, 0.4, 0.1])  # noisy phase-1 counts: they rank item 1 second
    top = np.array([1, 0, 2])
    out = gram_counts(weights, counts=counts, top_items=top, target=target)
    sums = np.array([3 / np.sqrt(6) + 1, 3 / np.sqrt(6), 3 / np.sqrt(6)]) + lam  # of (G + lam I), in units of lam
    scale = (sums / lam) @ counts[top] / ((sums / lam) @ (sums / lam))
    np.testing.assert_allclose(out[top], scale * sums / lam, rtol=1e-6)
    np.testing.assert_array_equal(out[[3, 4]], counts[[3, 4]])
    assert out[1] > out[0] == pytest.approx(out[2])  # item 1 is in both users' histories


def test_the_gram_prior_needs_the_release_settings() -> None:
    rng = np.random.default_rng(4)
    release = EaseRelease(top_items=np.array([0, 1, 2]), weights=ease_weights(_gram(rng, items=3), 1.0), prior=rng.random(4))
    with pytest.raises(FedrecError, match="ease-prior-weight"):
        ReleasedEase.from_arrays(release.to_arrays(), gram_prior=True)
    ours = ReleasedEase.from_arrays(release.to_arrays(), settings=ReleaseSettings(prior_weight=0.5), gram_prior=True)
    assert ours.prior.shape == (4,) and ours.prior[3] == pytest.approx(release.prior[3], rel=1e-6)


def test_refit_adds_ridge_in_mean_diagonals_of_the_regularised_gram() -> None:
    gram = _gram(np.random.default_rng(1))
    lam, extra = 2.0, 4.0
    weights = ease_weights(gram, lam)
    regularised = gram + lam * np.eye(gram.shape[0])
    slow = ease_weights(gram, lam + extra * float(np.trace(regularised)) / gram.shape[0])
    np.testing.assert_allclose(refit_weights(weights, extra_ridge=extra), slow, atol=1e-8)
    np.testing.assert_array_equal(refit_weights(weights, extra_ridge=0.0), weights)
    with pytest.raises(FedrecError, match="extra ridge"):
        refit_weights(weights, extra_ridge=-1.0)


def test_a_release_refit_for_short_histories_is_the_refit_of_its_weights() -> None:
    rng = np.random.default_rng(4)
    gram, target = _gram(rng, items=10), content_target(rng.normal(size=(10, 4)))
    release = ReleasedEase(top_items=np.arange(10), weights=ease_weights_towards(gram, 5.0, target), prior=rng.random(10))
    refit = release.refit(3.0, target=target)
    np.testing.assert_allclose(refit.weights, refit_weights(release.weights, extra_ridge=3.0, target=target))
    np.testing.assert_array_equal(refit.top_items, release.top_items)
    np.testing.assert_array_equal(refit.prior, release.prior)
    np.testing.assert_array_equal(release.refit(0.0).weights, release.weights)
    # the refit equals the release the evaluation builds from the run's arrays with the same ridge
    arrays = {"top_items": release.top_items, "weights": release.weights, "prior": release.prior}
    settings = ReleaseSettings(prior_weight=1.0, target=target)
    np.testing.assert_allclose(refit.weights, ReleasedEase.from_arrays(arrays, extra_ridge=3.0, settings=settings).weights)


def test_ease_scores_are_the_released_models_device_scores_without_the_prior() -> None:
    rng = np.random.default_rng(2)
    top = np.array([5, 0, 3, 7])
    release = EaseRelease(top_items=top, weights=ease_weights(_gram(rng, items=4), 1.0), prior=rng.random(9))
    ours = ReleasedEase.from_arrays(release.to_arrays())
    given = np.array([0, 7, 8])  # item 8 is outside K: it adds nothing
    np.testing.assert_allclose(ours.ease_scores(Query(given=given)), release.score_items(given) - release.to_arrays()["prior"], atol=1e-6)
    assert not np.any(ours.ease_scores(Query(given=np.empty(0, np.int64))))
    assert np.max(np.abs(ours.prior_scores())) == pytest.approx(1.0)


def test_blend_without_items_ranks_by_prior_and_weights_are_checked() -> None:
    prior = np.array([0.2, 1.0, 0.5])
    out = blend_scores(ease=np.zeros(3), prior=prior, content=np.zeros(3), blend=CollaborativeBlend(0.7, 0.3, 0.1))
    assert list(np.argsort(-out)) == [1, 2, 0]
    with pytest.raises(FedrecError):
        CollaborativeBlend(0.0, 0.0, 0.0)
    with pytest.raises(FedrecError, match="not a DP-EASE release"):
        ReleasedEase.from_arrays({"weights": np.zeros((1, 1))})


def _eval(data: Interactions, out: Path, config: RunConfig) -> dict[str, Any]:
    settings = ColdStartConfig(
        holdout_fraction=0.1, text_encoders=("tfidf",), federated=False, reveal=(0, 1, 3), collaborative="dp-ease",
        release_epsilon=8.0,
    )
    return run_coldstart_eval(data, out_dir=out, config=settings, federated_config=config)


@pytest.fixture(scope="module")
def small(ml100k: Interactions) -> Interactions:
    return ml100k.subset_users(np.arange(200))


def test_the_release_comes_from_training_users_with_its_own_audited_ledger(
    small: Interactions, tiny_config: RunConfig, tmp_path: Path
) -> None:
    results = _eval(small, tmp_path / "eval", tiny_config)
    run = tmp_path / "eval" / RELEASE_DIR
    report = audit_run(run)
    assert report.code == OK, report.problems
    assert report.releases == 2 and report.epsilon_prv <= 8.0
    assert results["release"]["clients"] == results["users"]["train"] == 160
    assert results["release"]["epsilon"] == pytest.approx(report.epsilon_prv)
    rows = results["rows"]
    methods = {r["method"] for r in rows}
    assert {DP_POPULARITY, DP_GRAM_POPULARITY, DP_FOLD_IN, "DP-EASE + content (tfidf)", "blend (tfidf, DP prior)"} <= methods
    assert all(r["epsilon"] == results["release"]["epsilon"] for r in rows if r["method"] in results["release"]["methods"])
    # the scorer is built from the release file alone and keeps nothing else
    held = ReleasedEase.from_run(run)
    arrays = read_arrays(run / MODEL)
    assert {f.name for f in dataclasses.fields(held)} == {"top_items", "weights", "prior"}
    np.testing.assert_array_equal(held.top_items, arrays["top_items"])
    assert held.weights.shape == (held.top_items.shape[0],) * 2 and held.prior.shape == (small.n_items,)
    assert json.loads((tmp_path / "eval" / RESULTS).read_text())["targets"][DP_FOLD_IN]["ratio_to_popularity"]
    # the public settings reproduce the fit: re-solving EASE towards the content target
    # from the recovered Gram gives back the released weights
    settings = release_settings(release_config(tiny_config, epsilon=8.0, delta=1e-5, seed=tiny_config.seed), held.top_items)
    assert held.top_items.shape[0] > 0 and settings.target is not None
    recovered = recovered_gram(held.weights, target=settings.target)  # (G + lam I) / lam
    k = held.top_items.shape[0]
    np.testing.assert_allclose(ease_weights_towards(recovered - np.eye(k), 1.0, settings.target), held.weights, atol=1e-4)
    # serve-fallback --release reads the same target back from the run folder alone
    np.testing.assert_array_equal(run_content_target(run, held.top_items), settings.target)


def test_the_blend_choice_never_reads_the_test_users(
    small: Interactions, tiny_config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = _eval(small, tmp_path / "clean", tiny_config)
    real = coldstart_run.cold_users
    calls = {"n": 0}

    def poisoned(*args: Any, **kwargs: Any) -> list[Any]:
        users = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the second call builds the test users: scramble their targets
            rng = np.random.default_rng(99)
            users = [dataclasses.replace(u, targets=rng.integers(0, small.n_items, u.targets.shape[0])) for u in users]
        return users

    monkeypatch.setattr(coldstart_run, "cold_users", poisoned)
    dirty = _eval(small, tmp_path / "dirty", tiny_config)
    assert calls["n"] == 2
    assert dirty["release"]["tuned"] == clean["release"]["tuned"]
    fold_in = [(r["reveal"], r["full_ndcg@10"]) for r in dirty["rows"] if r["method"] == DP_FOLD_IN]
    assert fold_in != [(r["reveal"], r["full_ndcg@10"]) for r in clean["rows"] if r["method"] == DP_FOLD_IN]
