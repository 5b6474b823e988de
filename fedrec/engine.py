"""The in-process simulation engine: fedrec's own server loop, with the devices'
work done in vectorised batches instead of messages and actors.

:func:`fedrec.runner.run_federated` (the very loop the Flower ServerApp runs) drives a
:class:`VectorisedTransport`, which trains each round's sampled clients together
(:func:`fedrec.batched.local_update_batched`, the vectorised twin of the device's
:func:`fedrec.training.local_update`) and clips each client's update on its own
(:func:`fedrec.privacy.clipping.clip_stacked`, the twin of the device's
``clip_update``). Sampling, DP aggregation, noise, the ledger and the budget are the
runner's, shared with the Flower path. Private user vectors live in one
``(N, d)`` tensor per branch, created when a client is first needed.

Record-level local DP (Opacus) is per device by nature: with ``local-dp`` on, the
engine runs the devices one after the other (:class:`fedrec.runner.InProcessTransport`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fedrec.batched import local_update_batched
from fedrec.client import simulated_population
from fedrec.compression import encode_update, upload_rng
from fedrec.config import RunConfig
from fedrec.data.split import LeaveOneOutSplit
from fedrec.evaluation import metrics_from_scores
from fedrec.experiment import run_and_report
from fedrec.federated import client_rng
from fedrec.models import Arrays, SharedTower, load_shared, shared_spec
from fedrec.privacy.clipping import clip_stacked
from fedrec.results import RESULTS
from fedrec.runner import InProcessTransport, TrainReply, Transport
from fedrec.training import fresh_private

TRAIN_CHUNK = 256  # at most this many clients train together
LENGTH_RATIO = 4.0  # ... and only clients whose histories differ by less than this factor (little padding)
SCORE_PAIRS = 1 << 21  # (user, item) pairs scored at once in evaluation


def _chunks(clients: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(clients), size):
        yield list(clients[start : start + size])


class VectorisedTransport:
    """Trains and evaluates many simulated devices at once, in this process."""

    def __init__(self, config: RunConfig, *, split: LeaveOneOutSplit | None = None) -> None:
        # ``split``: a population other than the config's (e.g. with audit canaries added)
        self.config = config
        self.split = split if split is not None else simulated_population(config).split
        self.model = config.model.build(self.split.n_items)
        self.train_config = config.train.build()
        self.spec = shared_spec(self.model)
        self.history = np.diff(self.split.train_indptr)  # (N,) training interactions per client
        n = self.split.n_users
        self.user_gmf = torch.zeros(n, self.model.gmf_dim)
        self.user_mlp = torch.zeros(n, self.model.mlp_dim)
        self.started = np.zeros(n, dtype=bool)  # has the client got its private vectors yet

    def clients(self) -> list[int]:
        return list(range(self.split.n_users))

    def client_state(self) -> Arrays:
        return {
            "user_gmf": self.user_gmf.numpy().copy(), "user_mlp": self.user_mlp.numpy().copy(),
            "started": self.started.copy(),
        }

    def restore_client_state(self, state: Arrays) -> None:
        if state["user_gmf"].shape != tuple(self.user_gmf.shape) or state["started"].shape != self.started.shape:
            raise ValueError("the checkpoint's client state is for another population")
        self.user_gmf = torch.from_numpy(state["user_gmf"].astype(np.float32, copy=True))
        self.user_mlp = torch.from_numpy(state["user_mlp"].astype(np.float32, copy=True))
        self.started = state["started"].astype(bool, copy=True)

    def _private(self, clients: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The clients' private vectors, created as the device would on first use."""
        for c in clients:
            if not self.started[c]:
                state = fresh_private(self.model, seed=self.config.seed, client=c)
                self.user_gmf[c] = torch.from_numpy(state.user_gmf)
                self.user_mlp[c] = torch.from_numpy(state.user_mlp)
                self.started[c] = True
        return self.user_gmf[clients], self.user_mlp[clients]

    def _similar_lengths(self, clients: Sequence[int]) -> Iterator[list[int]]:
        """Groups of clients with similar history lengths, longest first.

        A group trains as one padded batch as long as its longest history, over as
        many item slots as its widest client: mixing a 700-item user with 20-item
        users would make every step cost as much as the big one.
        """
        chunk: list[int] = []
        for c in sorted(clients, key=lambda c: -self.history[c]):
            if chunk and (len(chunk) == TRAIN_CHUNK or self.history[c] * LENGTH_RATIO < self.history[chunk[0]]):
                yield chunk
                chunk = []
            chunk.append(c)
        if chunk:
            yield chunk

    def train(self, clients: Sequence[int], shared: Arrays, round_: int) -> list[TrainReply]:
        replies: list[TrainReply] = []
        privacy = self.config.privacy
        for chunk in self._similar_lengths(clients):
            user_gmf, user_mlp = self._private(chunk)
            result = local_update_batched(
                shared=shared, user_gmf=user_gmf, user_mlp=user_mlp,
                data=[self.split.client(c) for c in chunk], model=self.model, train=self.train_config,
                rngs=[client_rng(seed=self.config.seed, round_=round_, client=c) for c in chunk],
            )
            self.user_gmf[chunk] = result.user_gmf
            self.user_mlp[chunk] = result.user_mlp
            if privacy.enabled:  # on the compact form: the rows it leaves out are zero
                result = replace(result, update=clip_stacked(result.update, max_norm=privacy.clipping_norm)[0])
            bits = self.config.federation.upload_bits
            for k, c in enumerate(chunk):
                update = result.client_update(k, self.spec)
                if bits:  # what the device would send (fedrec.client.Device.upload)
                    update = encode_update(update, bits=bits, rng=upload_rng(seed=self.config.seed, round_=round_, client=c))
                replies.append(
                    TrainReply(
                        client=c, update=update, num_examples=int(result.examples[k]), loss=float(result.loss[k]),
                        encoded=bits > 0,
                    )
                )
        position = {c: i for i, c in enumerate(clients)}
        return sorted(replies, key=lambda r: position[r.client])

    @torch.no_grad()
    def evaluate(self, clients: Sequence[int], shared: Arrays, which: str, round_: int) -> list[dict[str, float]]:
        tower = SharedTower(self.model, generator=None)
        load_shared(tower, shared)
        tower.eval()
        out: list[dict[str, float]] = []
        for chunk in _chunks(clients, max(1, SCORE_PAIRS // self.model.n_items)):
            user_gmf, user_mlp = self._private(chunk)
            scores = tower.score_users(user_gmf, user_mlp).numpy()
            per_user = metrics_from_scores(scores, [self.split.client(c) for c in chunk], which)
            out += [{name: float(values[k]) for name, values in per_user.items()} for k in range(len(chunk))]
        return out


def make_transport(config: RunConfig) -> Transport:
    if config.privacy.local_dp:
        torch.set_num_threads(1)  # many tiny per-device models: threads cost more than they gain
        return InProcessTransport(config, simulated_population(config).split.n_users)
    # Big batched kernels: every core, unless OMP_NUM_THREADS says otherwise (on a machine
    # shared with other busy processes, OpenMP's spin-waits can make extra threads cost more).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    return VectorisedTransport(config)


def run(
    config: RunConfig, out_dir: Path, on_round: Callable[[int, dict[str, float]], None] | None = None, *, resume: bool = False
) -> Path:
    run_and_report(config, make_transport(config), out_dir=out_dir, engine="inprocess", on_round=on_round, resume=resume)
    return out_dir / RESULTS
