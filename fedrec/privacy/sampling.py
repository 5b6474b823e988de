"""Which clients take part in a round: Poisson sampling with rate q.

The sampling rate decides epsilon as much as the noise does, and the accountants
(:mod:`fedrec.privacy.accountant`) assume exactly this scheme: each client joins a round
independently with probability q. This module is the one place q is set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PoissonSampler:
    """Each client takes part in a round independently with probability ``rate``.

    The sampling rate, and so the expected clients per round, is decided here only.
    """

    def __init__(self, *, expected_clients: float, population: int) -> None:
        if population <= 0:
            raise ValueError("no clients to sample from")
        self.population = population
        self.rate = min(1.0, expected_clients / population)

    @property
    def expected_clients(self) -> float:
        return self.rate * self.population

    def sample(self, clients: Sequence[int], rng: np.random.Generator) -> list[int]:
        mask = rng.random(len(clients)) < self.rate
        return [c for c, take in zip(clients, mask) if take]
