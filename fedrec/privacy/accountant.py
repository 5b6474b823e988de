"""Privacy accounting with Opacus's vetted accountants (never a hand-written one).

The state of the accounting is a history of ``(noise_multiplier, sample_rate,
steps)``, as in Opacus; epsilon is a pure function of it, so anyone can recompute it
from the ledger. PRV (Gopi et al. 2021) is the headline; RDP (Mironov 2017;
Mironov et al. 2019 for the subsampled Gaussian) is reported beside it. Both assume
Poisson sampling, which is exactly what :class:`fedrec.privacy.sampling.PoissonSampler` does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from functools import lru_cache

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedrec.errors import PrivacyError

ACCOUNTANTS = ("prv", "rdp")
PRV_EPS_ERROR = 0.01  # Opacus' default; get_epsilon returns the upper end of the interval

History = tuple[tuple[float, float, int], ...]


def compress(steps: Iterable[tuple[float, float]]) -> History:
    """Run-length encode per-round (z, q) pairs into Opacus' history form."""
    out: list[tuple[float, float, int]] = []
    for z, q in steps:
        if out and out[-1][0] == z and out[-1][1] == q:
            out[-1] = (z, q, out[-1][2] + 1)
        else:
            out.append((float(z), float(q), 1))
    return tuple(out)


def _needs_accountant(history: History) -> tuple[History, float | None]:
    """Drop empty steps; return the answer directly when no accountant is needed
    (0 for no steps, inf if any step had no noise), else None."""
    history = tuple((z, q, n) for z, q, n in history if q > 0 and n > 0)
    if not history:
        return history, 0.0
    if any(z <= 0 for z, _, _ in history):
        return history, math.inf
    return history, None


@lru_cache(maxsize=4096)
def epsilon(history: History, *, delta: float, accountant: str) -> float:
    """Epsilon spent after ``history`` at ``delta``; ``inf`` if any step has no noise."""
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(f"unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta}")
    history, trivial = _needs_accountant(history)
    if trivial is not None:
        return trivial
    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RDP warns when the optimal order is at the edge
        if accountant == "prv":
            return float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
        return float(acc.get_epsilon(delta=delta))


INTEGER_ORDERS = tuple(range(2, 65)) + (80, 96, 128, 256)


@lru_cache(maxsize=4096)
def device_epsilon(history: History, *, delta: float) -> float:
    """RDP epsilon over integer orders only: what a device reports about its own DP-SGD.

    Any set of orders gives a valid upper bound (Mironov 2017, Prop. 3); Opacus'
    default set adds fractional orders that make a call slow at small sampling rates,
    too slow to run on every device every round. The bound is slightly looser
    (benchmarks/README.md).
    """
    history, trivial = _needs_accountant(history)
    if trivial is not None:
        return trivial
    acc = RDPAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta, alphas=list(INTEGER_ORDERS)))


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, rounds: int, accountant: str) -> float:
    """Smallest noise multiplier (to Opacus' tolerance) whose epsilon after ``rounds``
    Poisson-sampled rounds stays at or below ``target_epsilon``.

    Uses Opacus' own calibration, then checks the result independently, so that an
    overshoot can never pass silently.
    """
    if not target_epsilon > 0:
        raise PrivacyError(f"target epsilon must be > 0, got {target_epsilon}")
    kwargs = {"eps_error": PRV_EPS_ERROR} if accountant == "prv" else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                    steps=rounds, accountant=accountant, epsilon_tolerance=0.01, **kwargs,
                )
            )
    except ValueError as err:
        raise PrivacyError(f"cannot reach epsilon {target_epsilon} in {rounds} rounds: {err}") from None
    spent = epsilon(((z, sample_rate, rounds),), delta=delta, accountant=accountant)
    if spent > target_epsilon:
        raise PrivacyError(f"calibration overshot: z={z} gives epsilon {spent} > {target_epsilon}")
    return z
