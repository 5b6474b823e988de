"""Fault injection for simulations: transports that wrap a real one and misbehave.

:class:`DropoutTransport` makes a fraction of each round's sampled clients fail (their
reply is lost, or comes back as an error), as devices that go offline or time out do.
:class:`CorruptingTransport` replaces chosen clients' updates with what a broken or
hostile device might send. Both leave sampling, aggregation, DP and the ledger to
:func:`fedrec.federation.rounds.run_federated`, so a run under faults exercises the real server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from fedrec.federation.rounds import TrainReply, Transport
from fedrec.models import Arrays

logger = logging.getLogger(__name__)

Corruption = Callable[[Arrays], object]  # an honest update -> what the device sends instead


class DropoutTransport:
    """Each sampled client fails with probability ``rate``, independently every round.

    A failed client still trains (its device did the work and then went away), so its
    private state moves on as a real device's would. Half of the failures are silent
    (no reply at all, a timeout), the other half answer with an error, when
    ``silent_fraction`` is 0.5.
    """

    def __init__(self, inner: Transport, *, rate: float, rng: np.random.Generator, silent_fraction: float = 0.5) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"dropout rate must be in [0, 1], got {rate}")
        if not 0.0 <= silent_fraction <= 1.0:
            raise ValueError(f"silent_fraction must be in [0, 1], got {silent_fraction}")
        self.inner = inner
        self.rate = rate
        self.silent_fraction = silent_fraction
        self.rng = rng
        self.dropped: list[int] = []  # per round: how many clients failed

    def clients(self) -> list[int]:
        return self.inner.clients()

    def train(self, clients: Sequence[int], shared: Arrays, round_: int) -> list[TrainReply]:
        replies = self.inner.train(clients, shared, round_)
        fail = self.rng.random(len(replies)) < self.rate
        silent = self.rng.random(len(replies)) < self.silent_fraction
        out: list[TrainReply] = []
        for reply, failed, lost in zip(replies, fail, silent):
            if not failed:
                out.append(reply)
            elif not lost:
                out.append(TrainReply(client=reply.client, update=None, error="device timed out"))
        self.dropped.append(int(fail.sum()))
        logger.info("round %d: %d of %d sampled clients dropped out", round_, int(fail.sum()), len(replies))
        return out

    def evaluate(self, clients: Sequence[int], shared: Arrays, which: str, round_: int) -> list[dict[str, float]]:
        return self.inner.evaluate(clients, shared, which, round_)


class CorruptingTransport:
    """Replaces the updates of the clients in ``corrupt`` by ``corrupt[client](update)``."""

    def __init__(self, inner: Transport, corrupt: Mapping[int, Corruption]) -> None:
        self.inner = inner
        self.corrupt = dict(corrupt)

    def clients(self) -> list[int]:
        return self.inner.clients()

    def train(self, clients: Sequence[int], shared: Arrays, round_: int) -> list[TrainReply]:
        replies = self.inner.train(clients, shared, round_)
        out = []
        for reply in replies:
            bad = self.corrupt.get(reply.client)
            if bad is not None and reply.update is not None:
                reply = replace(reply, update=bad(reply.update))  # type: ignore[arg-type]  # hostile: any object
            out.append(reply)
        return out

    def evaluate(self, clients: Sequence[int], shared: Arrays, which: str, round_: int) -> list[dict[str, float]]:
        return self.inner.evaluate(clients, shared, which, round_)


def _first(update: Arrays) -> str:
    return next(iter(update))


def _with(update: Arrays, name: str, value: object) -> Arrays:
    return {**update, name: value}  # type: ignore[dict-item]  # hostile: any object


# The kinds of broken or hostile update a device might send, by name.
HOSTILE: dict[str, Corruption] = {
    "nan": lambda u: _with(u, _first(u), np.full_like(u[_first(u)], np.nan)),
    "inf": lambda u: _with(u, _first(u), np.full_like(u[_first(u)], -np.inf)),
    "wrong-shape": lambda u: _with(u, _first(u), np.zeros((*u[_first(u)].shape, 2), np.float32)),
    "float64": lambda u: _with(u, _first(u), u[_first(u)].astype(np.float64)),
    "int": lambda u: _with(u, _first(u), u[_first(u)].astype(np.int64)),
    "extra-tensor": lambda u: _with(u, "backdoor", np.zeros(3, np.float32)),
    "missing-tensor": lambda u: {k: v for k, v in u.items() if k != _first(u)},
    "private-user_gmf": lambda u: _with(u, "user_gmf", np.zeros(8, np.float32)),
    "private-user_mlp": lambda u: _with(u, "user_mlp", np.zeros(8, np.float32)),
    "not-an-array": lambda u: _with(u, _first(u), u[_first(u)].tolist()),
    "not-a-mapping": lambda u: [u[k] for k in u],
}


def huge(norm: float) -> Corruption:
    """A finite update of global L2 norm ``norm`` (spread over every entry), in float32."""

    def scale(update: Arrays) -> Arrays:
        size = sum(v.size for v in update.values())
        value = np.float32(norm / np.sqrt(size))
        return {name: np.full(v.shape, value, np.float32) for name, v in update.items()}

    return scale
