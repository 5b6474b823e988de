"""Epsilon after every round of a ledger, for the audit report's curve.

RDP after each of n rounds costs one Rényi-divergence vector per distinct mechanism
(Mironov et al. 2019, "Rényi differential privacy of the sampled Gaussian mechanism")
plus one RDP-to-(epsilon, delta) conversion per round (Balle et al. 2020, Theorem 21),
both computed by Opacus' own functions with Opacus' orders. This is exactly what
``RDPAccountant.get_epsilon`` does for each prefix of the history, minus recomputing
the same vectors n times, so each value equals :func:`fedrec.privacy.accountant.epsilon`
with ``accountant=Accountant.RDP`` on that prefix (a test checks it).

PRV (Gopi et al. 2021) composes by FFT over a domain sized for the whole history;
each prefix is a fresh numerical composition, so it is evaluated only at a few rounds
(always the last one, which is the audit's headline).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from fedrec.privacy.accountant import Accountant, RDPAccountant, compress, epsilon, rdp_analysis

Step = tuple[float, float]  # (noise multiplier z, sample rate q) of one application of the mechanism


def rdp_curve(steps: Sequence[Step], *, delta: float) -> list[float]:
    """Epsilon by RDP after each prefix ``steps[:k]``, k = 1..len(steps)."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    vectors: dict[Step, np.ndarray] = {}
    runs: list[Step] = []  # (z, q) of each run of equal steps, as in Opacus' history ...
    counts: list[int] = []  # ... and its length
    out: list[float] = []
    no_noise = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RDP warns when the optimal order is at the edge
        for z, q in steps:
            z, q = float(z), float(q)
            if q <= 0:  # an empty step spends nothing (as fedrec.privacy.accountant does)
                out.append(out[-1] if out else 0.0)
                continue
            if z <= 0:
                no_noise = True
            if no_noise:
                out.append(math.inf)
                continue
            if runs and runs[-1] == (z, q):
                counts[-1] += 1
            else:
                runs.append((z, q))
                counts.append(1)
            if (z, q) not in vectors:
                vectors[(z, q)] = rdp_analysis.compute_rdp(q=q, noise_multiplier=z, steps=1, orders=orders)
            # Opacus multiplies the one-step vector by the steps and sums over the history with sum()
            rdp = sum([vectors[run] * count for run, count in zip(runs, counts)])
            eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
            out.append(float(eps))
    return out


def prv_rounds(n: int, *, points: int, always: Sequence[int] = ()) -> list[int]:
    """The 1-based rounds at which PRV is evaluated: ``points`` evenly spaced, the
    rounds in ``always`` (e.g. the last before each resume), and the last round."""
    if n <= 0:
        return []
    chosen = {n, *(r for r in always if 1 <= r <= n)}
    if points > 0:
        chosen.update(int(r) for r in np.unique(np.ceil(np.linspace(n / points, n, points)).astype(int)))
    return sorted(chosen)


def prv_at(steps: Sequence[Step], prefixes: Sequence[int], *, delta: float) -> dict[int, float]:
    """Epsilon by PRV after ``steps[:k]`` for each k in ``prefixes`` (Opacus' accountant);
    NaN where the numerical composition cannot evaluate the prefix (Opacus raises for
    extreme parameters, e.g. a single step at z = 0.01): the curve shows no PRV point
    there, and the audit's own verdict is unaffected."""
    out: dict[int, float] = {}
    for k in prefixes:
        try:
            out[k] = epsilon(compress(steps[:k]), delta=delta, accountant=Accountant.PRV)
        except (ArithmeticError, RuntimeError, ValueError):
            out[k] = math.nan
    return out
