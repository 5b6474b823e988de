"""Evaluation metrics that devices report, released through a Gaussian sum mechanism.

On a real fleet each device evaluates the model on its own held-out item and reports
its metrics (hit ratio, NDCG, ... each in [0, 1]). The exact mean over devices tells
the server something about each user's history that no training epsilon covers, so a
federated run on real devices releases only

    mean = (sum_u clip(m_u) + N(0, (z C)^2 I)) / n_expected,

where ``m_u`` is device u's vector of d metrics, each clipped to [0, 1], so that one
user changes the sum by at most C = sqrt(d) in L2 norm: the Gaussian mechanism
(Dwork and Roth 2014, "The algorithmic foundations of differential privacy",
Theorem A.1; its exact privacy-loss distribution is what Opacus' accountants compose).
The denominator is the number of devices asked, fixed before any reply, not the
number that replied, so that who answered is not revealed by it (McMahan et al. 2018,
Sec. 3, the fixed-denominator estimator). Every device asked takes part, so the
sampling rate recorded is 1 (no amplification is claimed).

The release's ledger entry records z, C and the devices asked, so the noise in each
released mean, z C / n_expected, can be read back from it; what is shown to a person is
clamped to [0, 1] with that noise beside it (:mod:`fedrec.privacy.readable`).

Simulations keep exact evaluation for research; their ledger header says
``evaluation: "not private (simulation)"`` and the audit report shows it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedrec.errors import PrivacyError
from fedrec.privacy.accountant import calibrate_noise, epsilon
from fedrec.privacy.noise import noise_generator

if TYPE_CHECKING:
    from fedrec.privacy.session import PrivacySession

logger = logging.getLogger(__name__)

MECHANISM = "gaussian-sum/per-user-metrics"
NOT_PRIVATE = "not private (simulation)"
PRIVATE = f"private: each evaluation is a release ({MECHANISM})"


def sensitivity(n_metrics: int) -> float:
    """L2 norm bound of one user's clipped metric vector: sqrt(d)."""
    if n_metrics < 1:
        raise PrivacyError("need at least one metric to release")
    return math.sqrt(n_metrics)


def clipped_metrics(replies: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    """(users, metrics) array; each value clipped to [0, 1], a missing or non-finite one 0."""
    out = np.zeros((len(replies), len(names)), dtype=np.float64)
    for u, reply in enumerate(replies):
        for j, name in enumerate(names):
            value = reply.get(name, 0.0)
            out[u, j] = value if isinstance(value, (int, float)) and math.isfinite(value) else 0.0
    return np.clip(out, 0.0, 1.0)


def noisy_mean(
    metrics: np.ndarray, *, noise_multiplier: float, expected_users: int, rng: np.random.Generator
) -> np.ndarray:
    """(metrics,) noisy means of a (users, metrics) array of values in [0, 1].

    Noise std on the sum is ``noise_multiplier * sqrt(metrics)``; the sum is divided by
    ``expected_users`` (the devices asked), whatever the number that replied.
    """
    if metrics.ndim != 2:
        raise PrivacyError(f"metrics must be (users, metrics), got shape {metrics.shape}")
    if not noise_multiplier > 0 or expected_users < 1:
        raise PrivacyError(f"need noise multiplier > 0 and expected users >= 1, got {noise_multiplier}, {expected_users}")
    if metrics.size and (metrics.min() < 0 or metrics.max() > 1):
        raise PrivacyError("metrics must be clipped to [0, 1] before the release (use clipped_metrics)")
    total = metrics.sum(axis=0)  # (metrics,)
    noise = rng.normal(0.0, noise_multiplier * sensitivity(metrics.shape[1]), size=metrics.shape[1])
    return (total + noise) / expected_users


def evaluation_generator(*, seed: int, secure: bool, resumes: int) -> np.random.Generator:
    """The evaluation noise's own stream. Seeded runs mix in the resume count: two
    releases must never share noise (their difference would be exact)."""
    if secure:
        return noise_generator(seed=None, secure=True)
    return np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence([seed, 0xE7A1, resumes])))


def release_metrics(
    session: PrivacySession,
    evaluate: Callable[[], Sequence[Mapping[str, float]]],
    *,
    names: Sequence[str],
    purpose: str,
    noise_multiplier: float,
    expected_users: int,
    rng: np.random.Generator,
) -> dict[str, float] | None:
    """Ask the devices (``evaluate``) and release their noisy mean metrics, recorded in
    the ledger first; None, with nothing asked or written, when it would exceed the budget."""
    if not session.allows_release(noise_multiplier=noise_multiplier, sample_rate=1.0):
        logger.info("%s not released: it would exceed the privacy budget", purpose)
        return None
    replies = evaluate()
    session.record_release(
        mechanism=MECHANISM, purpose=purpose, noise_multiplier=noise_multiplier, sample_rate=1.0,
        clipping_norm=sensitivity(len(names)), clients=len(replies), devices_asked=expected_users,
    )
    means = noisy_mean(clipped_metrics(replies, names), noise_multiplier=noise_multiplier,
                       expected_users=expected_users, rng=rng)
    return {name: float(value) for name, value in zip(names, means)}


def planned_evaluations(*, rounds: int, eval_every: int) -> int:
    """Releases a run of ``rounds`` rounds makes: a validation every ``eval_every``
    rounds before the last, then the final validation and test."""
    return (max(rounds - 1, 0) // eval_every if eval_every > 0 else 0) + 2


def calibrate_with_evaluations(
    *, target_epsilon: float, delta: float, sample_rate: float, rounds: int, accountant: str,
    eval_noise_multiplier: float, evaluations: int, margin: float = 0.99,
) -> float:
    """Smallest training z (to 1%) such that ``rounds`` rounds and ``evaluations``
    metric releases compose to at most ``margin * target_epsilon``.

    Bisection over z with the accountant of :mod:`fedrec.privacy.accountant` (Opacus);
    the margin absorbs the accountant's numerical differences between composing in this
    order and in the ledger's (the session still checks every step).
    """
    target = margin * target_epsilon
    releases = ((eval_noise_multiplier, 1.0, evaluations),)
    if epsilon(releases, delta=delta, accountant=accountant) >= target:
        raise PrivacyError(
            f"{evaluations} evaluation releases at eval-noise-multiplier {eval_noise_multiplier} alone spend epsilon "
            f">= {target:.3g}: raise eval-noise-multiplier or epsilon"
        )

    def spent(z: float) -> float:
        return epsilon(((z, sample_rate, rounds), *releases), delta=delta, accountant=accountant)

    lo = calibrate_noise(target_epsilon=target, delta=delta, sample_rate=sample_rate, rounds=rounds, accountant=accountant)
    hi = lo
    while spent(hi) > target:
        lo, hi = hi, hi * 2
    while hi - lo > 0.01 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if spent(mid) <= target else (mid, hi)
    return hi
