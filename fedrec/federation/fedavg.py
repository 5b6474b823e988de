"""Server-side numerics of federated averaging, independent of any transport.

FedAvg (McMahan et al. 2017) averages the clients' updates of the shared parameters;
the server then takes a step with its own learning rate and momentum (Reddi et al.
2021, "Adaptive Federated Optimization", Alg. 1 with SGD-momentum as server
optimizer). Each client is one user and counts once (user-level weighting), which is
also the weighting that user-level DP needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from fedrec.models import Arrays


def client_rng(*, seed: int, round_: int, client: int) -> np.random.Generator:
    """The generator a client uses in a round: independent per (seed, round, client)."""
    return np.random.default_rng([seed, round_, client, 7])


def sum_updates(updates: Iterable[Mapping[str, np.ndarray]], like: Arrays) -> Arrays:
    """Element-wise float64 sum of the updates, in order; zeros (shaped like ``like``) when
    there are none. ``updates`` is read once, so it may be a generator."""
    total = {name: np.zeros_like(value, dtype=np.float64) for name, value in like.items()}
    for update in updates:
        for name in total:
            total[name] += update[name]
    return total


def mean_updates(updates: list[Arrays], like: Arrays, *, denominator: float) -> Arrays:
    """Sum of updates divided by ``denominator`` (the number of clients, or its expectation)."""
    if denominator <= 0:
        raise ValueError("denominator must be > 0")
    return {name: (value / denominator).astype(np.float32) for name, value in sum_updates(updates, like).items()}


@dataclass(frozen=True)
class ServerOptimizer:
    """x <- x + lr * m, m <- momentum * m + delta (server SGD with momentum)."""

    lr: float = 1.0
    momentum: float = 0.0

    def step(self, params: Arrays, delta: Arrays, buffer: Arrays | None) -> tuple[Arrays, Arrays]:
        """Return new parameters and new momentum buffer; inputs are not modified."""
        if buffer is None:
            new_buffer = {k: v.copy() for k, v in delta.items()}
        else:
            new_buffer = {k: (self.momentum * buffer[k] + delta[k]).astype(np.float32) for k in delta}
        new_params = {k: (params[k] + self.lr * new_buffer[k]).astype(np.float32) for k in params}
        return new_params, new_buffer
