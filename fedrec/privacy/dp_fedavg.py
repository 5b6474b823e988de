"""User-level DP-FedAvg (McMahan et al. 2018, Alg. 1, fixed-denominator estimator).

Each sampled client's update is clipped to L2 norm C (the client does it; the server
clips again, which changes nothing for an honest client and bounds a hostile one).
The server adds N(0, (z C)^2 I) to the *sum* and divides by the *expected* number of
clients q N, not by how many replied: the sensitivity of the estimate to one user is
then C / (q N) whatever happens in the round, so dropouts cost signal, never privacy.

The mechanism acts on a sum. Under secure aggregation the server never sees the
individual updates, only their sum: such a part is *not* clipped again to C (that
would shrink k clipped updates to the size of one), only bounded by k C, which every
sum of k updates of norm <= C satisfies (triangle inequality).
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
class Part:
    """What the server received towards a round's sum: one client's update
    (``contributors = 1``), or the secure-aggregation sum of ``contributors`` updates."""

    update: Arrays
    contributors: int = 1


def clipped_sum(parts: Iterable[Part], *, max_norm: float, like: Arrays) -> tuple[Arrays, int]:
    """(float64 sum, contributors): each single update clipped to ``max_norm``, each
    pre-summed part of k updates bounded by ``k * max_norm`` (not re-clipped to C).

    The parts are clipped one at a time as the sum consumes them: never a second copy of
    every update.
    """
    counted = [0]

    def bounded() -> Iterable[Arrays]:
        for part in parts:
            if part.contributors < 1:
                raise ValueError(f"a part needs >= 1 contributor, got {part.contributors}")
            counted[0] += part.contributors
            yield clip_update(part.update, max_norm=max_norm * part.contributors)[0]

    total = sum_updates(bounded(), like)
    return total, counted[0]


@dataclass(frozen=True)
class DPFedAvg:
    noise_multiplier: float  # z
    clipping_norm: float  # C (may be inf only with z = 0)
    expected_clients: float  # q N, from the sampler

    @property
    def noise_std(self) -> float:
        """Std of the noise on the sum: z C (0 when z is 0, even for C = inf)."""
        return 0.0 if self.noise_multiplier == 0 else self.noise_multiplier * self.clipping_norm

    def noisy_mean(self, total: Arrays, *, rng: np.random.Generator) -> Arrays:
        """(sum of clipped updates + N(0, (z C)^2 I)) / expected clients."""
        noisy = add_gaussian_noise(total, std=self.noise_std, rng=rng)
        return {name: (value / self.expected_clients).astype(np.float32) for name, value in noisy.items()}

    def aggregate_parts(self, parts: Iterable[Part], *, like: Arrays, rng: np.random.Generator) -> tuple[Arrays, int]:
        """The round's DP estimate from what the server received; returns it with the
        number of clients it covers."""
        total, contributors = clipped_sum(parts, max_norm=self.clipping_norm, like=like)
        return self.noisy_mean(total, rng=rng), contributors

    def aggregate(self, updates: Iterable[Arrays], *, like: Arrays, rng: np.random.Generator) -> Arrays:
        """(sum of individually clipped updates + noise) / expected clients."""
        return self.aggregate_parts((Part(u) for u in updates), like=like, rng=rng)[0]
