"""Known values from Opacus' accountants (computed independently with Opacus 1.6's
analysis functions) and calibration that never overshoots."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.rdp import RDPAccountant

from fedrec.errors import PrivacyError
from fedrec.privacy.accountant import calibrate_noise, calibrate_releases, compress, epsilon


@pytest.mark.parametrize(
    ("z", "q", "steps", "prv", "rdp"),
    [
        (1.0, 100 / 943, 200, 10.6387, 11.7236),
        (1.1, 0.1, 100, 5.9230, 6.6137),
        (1.0, 0.01, 1000, 1.8384, 2.1014),
    ],
)
def test_known_values(z, q, steps, prv, rdp) -> None:
    history = ((z, q, steps),)
    assert epsilon(history, delta=1e-5, accountant="prv") == pytest.approx(prv, abs=2e-3)
    assert epsilon(history, delta=1e-5, accountant="rdp") == pytest.approx(rdp, abs=2e-3)


def test_rdp_matches_a_direct_computation_from_the_analysis_functions() -> None:
    history = compress([(1.2, 0.05)] * 40 + [(0.9, 0.1)] * 10)
    assert history == ((1.2, 0.05, 40), (0.9, 0.1, 10))
    orders = RDPAccountant.DEFAULT_ALPHAS
    total = sum(rdp_analysis.compute_rdp(q=q, noise_multiplier=z, steps=n, orders=orders) for z, q, n in history)
    direct, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=total, delta=1e-6)
    assert epsilon(history, delta=1e-6, accountant="rdp") == pytest.approx(direct, rel=1e-12)


def test_no_noise_is_infinite_and_nothing_is_zero() -> None:
    assert epsilon(((0.0, 0.1, 3),), delta=1e-5, accountant="prv") == math.inf
    assert epsilon((), delta=1e-5, accountant="rdp") == 0.0


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize(("target", "q", "rounds"), [(1.0, 0.106, 200), (8.0, 0.106, 300), (4.0, 0.5, 20)])
def test_calibration_never_overshoots(accountant, target, q, rounds) -> None:
    z = calibrate_noise(target_epsilon=target, delta=1e-5, sample_rate=q, rounds=rounds, accountant=accountant)
    spent = epsilon(((z, q, rounds),), delta=1e-5, accountant=accountant)
    assert spent <= target
    assert spent > 0.95 * target  # and it is not wastefully noisy


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize(("target", "shares"), [(8.0, (0.3, 0.7)), (1.0, (0.5, 0.5)), (4.0, (0.2, 0.3, 0.5))])
def test_release_calibration_fits_the_budget_by_opacus_directly(accountant, target, shares) -> None:
    zs = calibrate_releases(target_epsilon=target, delta=1e-5, shares=shares, accountant=accountant)
    # the split follows the shares: z_k^-2 proportional to share_k
    ratios = [(1 / z**2) / s for z, s in zip(zs, shares)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)
    direct = PRVAccountant() if accountant == "prv" else RDPAccountant()
    direct.history = [(z, 1.0, 1) for z in zs]
    spent = direct.get_epsilon(delta=1e-5, **({"eps_error": 0.01} if accountant == "prv" else {}))
    assert 0.97 * target < spent <= target


def test_release_calibration_counts_what_was_spent_before() -> None:
    prior = ((1.0, 0.1, 50),)
    zs = calibrate_releases(target_epsilon=8.0, delta=1e-5, shares=(0.5, 0.5), accountant="prv", prior=prior)
    fresh = calibrate_releases(target_epsilon=8.0, delta=1e-5, shares=(0.5, 0.5), accountant="prv")
    assert zs[0] > fresh[0]  # less budget left: more noise
    assert epsilon(prior + tuple((z, 1.0, 1) for z in zs), delta=1e-5, accountant="prv") <= 8.0
    with pytest.raises(PrivacyError, match="raise the budget"):
        calibrate_releases(target_epsilon=0.5, delta=1e-5, shares=(1.0,), accountant="prv", prior=prior)
