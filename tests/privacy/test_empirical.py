"""Lower bounds on epsilon: closed forms, independent recomputation, monotonicity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedrec.errors import PrivacyError
from fedrec.privacy.empirical import (
    GUESS_FRACTIONS,
    audit_scores,
    clopper_pearson_lower_bound,
    clopper_pearson_upper,
    one_run_lower_bound,
    one_run_p_value,
)


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_perfect_guesses_match_the_closed_form(n: int) -> None:
    # All n guesses right, delta 0: p-value = p^n with p = e^eps / (1 + e^eps), so the
    # bound solves p^n = beta: eps = logit(beta^(1/n)).
    p = 0.05 ** (1 / n)
    expected = math.log(p / (1 - p))
    assert one_run_lower_bound(m=n, r=n, v=n, delta=0.0, beta=0.05) == pytest.approx(expected, abs=1e-6)


def test_the_bound_is_where_the_p_value_crosses_beta() -> None:
    eps = one_run_lower_bound(m=200, r=100, v=85, delta=1e-5, beta=0.05)
    assert eps > 0
    # independent recomputation of the binomial tail (no delta term to compare)
    assert stats.binom.sf(84, 100, 1 / (1 + math.exp(-(eps - 1e-3)))) < 0.05
    assert one_run_p_value(m=200, r=100, v=85, epsilon=eps + 1e-3, delta=1e-5) >= 0.05


def test_chance_level_guessing_gives_no_bound() -> None:
    assert one_run_lower_bound(m=200, r=200, v=100, delta=0.0) == 0.0
    assert one_run_lower_bound(m=200, r=200, v=110, delta=0.0) == 0.0  # p ~ 0.09 at eps = 0


@given(r=st.integers(2, 300), frac=st.floats(0.5, 1.0), delta=st.sampled_from([0.0, 1e-6, 1e-3]))
@settings(max_examples=40, deadline=None)
def test_more_correct_guesses_and_less_delta_never_lower_the_bound(r: int, frac: float, delta: float) -> None:
    v = int(frac * r)
    base = one_run_lower_bound(m=r, r=r, v=v, delta=delta)
    assert base >= 0
    if v < r:
        assert one_run_lower_bound(m=r, r=r, v=v + 1, delta=delta) >= base
    assert one_run_lower_bound(m=r, r=r, v=v, delta=delta * 10 + 1e-4) <= base


def test_delta_makes_the_p_value_larger() -> None:
    plain = one_run_p_value(m=100, r=100, v=90, epsilon=1.0, delta=0.0)
    assert one_run_p_value(m=100, r=100, v=90, epsilon=1.0, delta=1e-3) > plain


def test_bad_counts_are_refused() -> None:
    with pytest.raises(PrivacyError):
        one_run_p_value(m=10, r=20, v=5, epsilon=1.0, delta=0.0)
    with pytest.raises(PrivacyError):
        audit_scores(scores=np.array([1.0, np.nan]), members=np.array([True, False]), delta=0.0)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (40, 100), (99, 100)])
def test_clopper_pearson_upper_has_exact_coverage(k: int, n: int) -> None:
    upper = clopper_pearson_upper(successes=k, trials=n, alpha=0.05)
    # the one-sided limit is where seeing <= k successes has probability alpha
    assert stats.binom.cdf(k, n, upper) == pytest.approx(0.05, rel=1e-6)


def test_clopper_pearson_bound_of_a_perfect_attack() -> None:
    n, alpha, delta = 100, 0.05, 1e-5
    hi = 1 - (alpha / 2) ** (1 / n)  # CP upper limit at 0 of n, one-sided alpha / 2
    expected = math.log((1 - delta - hi) / hi)
    assert clopper_pearson_lower_bound(tp=n, fn=0, fp=0, tn=n, delta=delta, alpha=alpha) == pytest.approx(expected, rel=1e-6)
    assert clopper_pearson_lower_bound(tp=50, fn=50, fp=50, tn=50, delta=delta) == 0.0


def test_audit_scores_of_a_perfect_and_a_blind_attack() -> None:
    rng = np.random.default_rng(0)
    members = rng.random(200) < 0.5
    perfect = audit_scores(scores=members + rng.random(200) * 0.1, members=members, delta=0.0)
    assert perfect.auc == 1.0
    # r/2 "in" and r/2 "out" guesses are all right as long as r/2 <= min(members, non-members)
    assert perfect.guesses == perfect.correct == 2 * 50
    assert perfect.one_run_epsilon == pytest.approx(
        one_run_lower_bound(m=200, r=100, v=100, delta=0.0, beta=0.05 / len(GUESS_FRACTIONS))
    )
    assert perfect.cp_epsilon > 1.0
    blind = audit_scores(scores=rng.random(200), members=members, delta=0.0)
    assert blind.one_run_epsilon < 0.5 and blind.cp_epsilon < 0.5
