"""User-level DP-FedAvg (McMahan et al. 2018, Alg. 1, fixed-denominator estimator).

Each sampled client's update is clipped to L2 norm C (the client does it; the server
clips again, which changes nothing for an honest client and bounds a hostile one).
The server adds N(0, (z C)^2 I) to the *sum* and divides by the *expected* number of
clients q N, not by how many replied: the sensitivity of the estimate to one user is
then C / (q N) whatever happens in the round, so dropouts cost signal, never privacy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fedrec.federated import sum_updates
from fedrec.models import Arrays
from fedrec.privacy.clipping import clip_update
from fedrec.privacy.noise import add_gaussian_noise


@dataclass(frozen=True)
class DPFedAvg:
    noise_multiplier: float  # z
    clipping_norm: float  # C (may be inf only with z = 0)
    expected_clients: float  # q N, from the sampler

    @property
    def noise_std(self) -> float:
        """Std of the noise on the sum: z C (0 when z is 0, even for C = inf)."""
        return 0.0 if self.noise_multiplier == 0 else self.noise_multiplier * self.clipping_norm

    def aggregate(self, updates: Iterable[Arrays], *, like: Arrays, rng: np.random.Generator) -> Arrays:
        """(sum of clipped updates + noise) / expected clients."""
        # clipped one at a time as the sum consumes them: never a second copy of every update
        clipped = (clip_update(u, max_norm=self.clipping_norm)[0] for u in updates)
        noisy = add_gaussian_noise(sum_updates(clipped, like), std=self.noise_std, rng=rng)
        return {name: (value / self.expected_clients).astype(np.float32) for name, value in noisy.items()}
