"""Known values from Opacus' accountants (computed independently with Opacus 1.6's
analysis functions) and calibration that never overshoots."""

from __future__ import annotations

import math

import pytest
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.rdp import RDPAccountant

from fedrec.privacy.accountant import calibrate_noise, compress, epsilon


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
