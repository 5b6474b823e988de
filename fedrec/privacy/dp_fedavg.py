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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from fedrec.federation.fedavg import sum_updates
from fedrec.models import Arrays
from fedrec.privacy.clipping import clip_update, global_norm
from fedrec.privacy.noise import add_gaussian_noise


@dataclass(frozen=True)
class Part:
    """What the server received towards a sum: one client's update (``contributors = 1``),
    or the secure-aggregation sum of ``contributors`` clients' updates.

    A transport returns a part with ``contributors > 1`` when the server never saw the
    single uploads (SecAgg+): every device clipped its own to C, so :func:`clipped_sum`
    bounds the part by ``contributors * C`` instead of clipping the sum again. DP-FedAvg
    rounds (:mod:`fedrec.federation.rounds`) and DP-EASE phases (:mod:`fedrec.dpease.run`)
    both sum parts.
    """

    update: Mapping[str, np.ndarray]  # any mapping of tensor name to array (the in-process engine's builds on read)
    contributors: int = 1


@dataclass(frozen=True)
class ClippedSum:
    total: Arrays  # float64 sum of the bounded parts
    contributors: int  # clients the sum covers
    norms: tuple[float, ...]  # L2 norm of each single update before clipping (not of pre-summed parts)
    clipped: int  # single updates whose norm exceeded C


def clipped_sum(parts: Iterable[Part], *, max_norm: float, like: Arrays) -> ClippedSum:
    """Each single update clipped to ``max_norm``, each pre-summed part of k updates
    bounded by ``k * max_norm`` (not re-clipped to C; a part within its bound is added as
    it is, float64 precision included), summed in float64.

    The parts are clipped one at a time as the sum consumes them: never a second copy of
    every update.
    """
    contributors = 0
    norms: list[float] = []

    def bounded() -> Iterable[Mapping[str, np.ndarray]]:
        nonlocal contributors
        for part in parts:
            if part.contributors < 1:
                raise ValueError(f"a part needs >= 1 contributor, got {part.contributors}")
            contributors += part.contributors
            if part.contributors == 1:
                clipped, norm = clip_update(part.update, max_norm=max_norm)
                norms.append(norm)
                yield clipped
            elif global_norm(part.update) <= max_norm * part.contributors:
                yield part.update
            else:
                yield clip_update(part.update, max_norm=max_norm * part.contributors)[0]

    total = sum_updates(bounded(), like)
    return ClippedSum(total=total, contributors=contributors, norms=tuple(norms), clipped=sum(n > max_norm for n in norms))


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

    def aggregate_parts(self, parts: Iterable[Part], *, like: Arrays, rng: np.random.Generator) -> tuple[Arrays, ClippedSum]:
        """The round's DP estimate from what the server received, with the clipped sum
        it was made from (for the round's diagnostics: clipped share, norms, SNR)."""
        summed = clipped_sum(parts, max_norm=self.clipping_norm, like=like)
        return self.noisy_mean(summed.total, rng=rng), summed

    def signal_to_noise(self, summed: ClippedSum) -> float:
        """||sum of clipped updates|| / expected ||noise|| (z C sqrt(d)): below 1 the
        round's aggregate is mostly noise (inf without noise)."""
        if self.noise_std == 0:
            return float("inf")
        size = sum(int(np.size(v)) for v in summed.total.values())
        signal = float(np.sqrt(sum(float(np.sum(np.square(v))) for v in summed.total.values())))
        return signal / (self.noise_std * np.sqrt(size))

    def aggregate(self, updates: Iterable[Arrays], *, like: Arrays, rng: np.random.Generator) -> Arrays:
        """(sum of individually clipped updates + noise) / expected clients."""
        return self.aggregate_parts((Part(u) for u in updates), like=like, rng=rng)[0]
