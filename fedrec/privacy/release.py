"""The server's release of a sum of per-device statistics: each reply clipped to C
again (an honest device already did; a secure sum of n devices to n C), summed, plus
N(0, std^2). Every family that releases statistics (DP-EASE's item counts and
co-occurrence, a test family's counts) calls this one function, and records the
release in the ledger (:meth:`fedrec.privacy.session.PrivacySession.record_release`)
before it uses the sum.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fedrec.privacy.dp_fedavg import Part, clipped_sum
from fedrec.privacy.noise import add_gaussian_noise

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class NoisySum:
    total: np.ndarray  # (size,) the noisy sum
    contributors: int  # devices whose statistic is in it
    rejected: int  # malformed replies, never aggregated


def noisy_sum(
    replies: Iterable[Arrays | Part | None], *, name: str, size: int, clipping_norm: float, std: float,
    rng: np.random.Generator | None,
) -> NoisySum:
    """Sum of the replies' ``name`` arrays, each clipped to C again, plus N(0, std^2)
    (no noise where ``rng`` is None: DP off); malformed replies are rejected and
    counted, never aggregated."""
    like = {name: np.zeros(size, dtype=np.float64)}
    rejected = 0

    def valid() -> Iterable[Part]:
        nonlocal rejected
        for reply in replies:
            devices = reply.contributors if isinstance(reply, Part) else 1
            arrays = reply.update if isinstance(reply, Part) else reply
            value = None if arrays is None else arrays.get(name)
            if not isinstance(value, np.ndarray) or value.shape != (size,) or not np.all(np.isfinite(value)):
                rejected += 1
                continue
            yield Part({name: value}, contributors=devices)

    # DP-FedAvg's own bounded sum: a single reply clipped to C, a secure sum of n to n C
    summed = clipped_sum(valid(), max_norm=clipping_norm, like=like)
    total, good = summed.total, summed.contributors
    if rng is not None:
        total = add_gaussian_noise(total, std=std, rng=rng)
    return NoisySum(total=total[name], contributors=good, rejected=rejected)
