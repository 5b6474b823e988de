"""The in-process simulation engine: fedrec's own server loop, with the devices'
work done in vectorised batches instead of messages and actors.

:func:`fedrec.federation.rounds.run_federated` (the very loop the Flower ServerApp runs) drives a
:class:`VectorisedTransport`, which trains each round's sampled clients together
(:func:`fedrec.training.batched.local_update_batched`, the vectorised twin of the device's
:func:`fedrec.training.local.local_update`) and clips each client's update on its own
(:func:`fedrec.privacy.clipping.clip_stacked`, the twin of the device's
``clip_update``). Sampling, DP aggregation, noise, the ledger and the budget are the
runner's, shared with the Flower path. Private user vectors live in one
``(N, d)`` tensor per branch, created when a client is first needed.

A round's clients are cut into groups of similar history lengths (fixed by the sampled
clients alone), and *lanes*, one per usable core (``$FEDREC_LANES``), take the next
group as soon as they are free: this process and forked worker processes
(:mod:`fedrec.engine.lanes`), each with one intra-op thread; a worker sends back its
group's compact, clipped updates. A client's result does not depend on the lane it
trained in.

Record-level local DP (Opacus) is per device by nature: with ``local-dp`` on, the
engine runs the devices one after the other (:class:`fedrec.federation.rounds.InProcessTransport`).
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Self

import numpy as np
import torch

from fedrec.config import RunConfig
from fedrec.data.split import LeaveOneOutSplit
from fedrec.deploy.catalog import run_catalog
from fedrec.engine.lanes import LANES_ENV, Lane, default_lanes, intra_op_threads, keep_freed_memory
from fedrec.errors import FedrecError
from fedrec.evaluation.scoring import metrics_from_scores
from fedrec.experiments.results import RESULTS
from fedrec.experiments.run import run_family
from fedrec.families import family_of
from fedrec.families.contract import StatisticsTransport
from fedrec.federation.compression import encode_update, upload_rng
from fedrec.federation.device import simulated_population
from fedrec.federation.fedavg import client_rng
from fedrec.federation.rounds import InProcessTransport, TrainReply, Transport
from fedrec.models import Arrays, SharedTower, load_shared, shared_spec
from fedrec.privacy.clipping import clip_stacked
from fedrec.privacy.device_odometers import SimulatedOdometers
from fedrec.training.batched import BatchedResult, CompactUpload, local_update_batched
from fedrec.training.local import fresh_private

TRAIN_CHUNK = 256  # at most this many clients train together ...
MIN_CHUNK = 16  # ... and groups are cut to about GROUPS_PER_ROUND parts, but not below this
GROUPS_PER_ROUND = 8
LENGTH_RATIO = 4.0  # ... and only clients whose histories differ by less than this factor (little padding)
SCORE_PAIRS = 1 << 21  # (user, item) pairs scored at once in evaluation

__all__ = ["LANES_ENV", "VectorisedTransport", "default_lanes", "make_transport", "run"]



def _chunks(clients: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(clients), size):
        yield list(clients[start : start + size])


class VectorisedTransport:
    """Trains and evaluates many simulated devices at once, in this process."""

    def __init__(self, config: RunConfig, *, split: LeaveOneOutSplit | None = None, lanes: int | None = None) -> None:
        # ``split``: a population other than the config's (e.g. with audit canaries added)
        # ``lanes``: processes that train a round's clients side by side (default_lanes())
        self.config = config
        self.lanes = default_lanes() if lanes is None else lanes
        if self.lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {self.lanes}")
        self._lane_workers: list[Lane] = []
        keep_freed_memory()  # before any lane is forked: the workers inherit it
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
            "user_gmf": self.user_gmf.numpy().copy(),
            "user_mlp": self.user_mlp.numpy().copy(),
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

    def _groups(self, clients: Sequence[int]) -> list[list[int]]:
        """The round's clients in training groups of similar history lengths, longest first.

        A group trains as one padded batch as long as its longest history, over as many
        item slots as its widest client: mixing a 700-item user with 20-item users would
        make every step cost as much as the big one. Runs of similar lengths are cut into
        consecutive parts of at most ``chunk`` clients: small enough for the lanes to share
        the round, large enough to keep kernels big. The groups depend on the sampled
        clients only, never on the lanes, so that a client's result does not depend on
        where it trained.
        """
        chunk = min(TRAIN_CHUNK, max(MIN_CHUNK, -(-len(clients) // GROUPS_PER_ROUND)))
        runs: list[list[int]] = []
        for c in sorted(clients, key=lambda c: (-self.history[c], c)):
            if runs and self.history[c] * LENGTH_RATIO >= self.history[runs[-1][0]]:
                runs[-1].append(c)
            else:
                runs.append([c])
        groups = []
        for run in runs:
            parts = -(-len(run) // chunk)
            groups += [[int(c) for c in part] for part in np.array_split(np.asarray(run), parts)]
        return groups

    def train(self, clients: Sequence[int], shared: Arrays, round_: int) -> list[TrainReply]:
        """Train the round's groups on every lane, longest histories first: each lane takes
        the next group as soon as it is free (:class:`_RoundWork`)."""
        groups = self._groups(clients)
        self._private(list(clients))  # every sampled client's private vectors exist before the lanes start
        workers = self._workers(min(self.lanes - 1, len(groups) - 1))
        replies = _RoundWork(self, groups, shared=shared, round_=round_).run(workers)
        if len(replies) != len(clients):  # a safety net: every sampled client answers exactly once
            raise FedrecError(f"the in-process engine trained {len(replies)} of the round's {len(clients)} clients")
        position = {c: i for i, c in enumerate(clients)}
        return sorted(replies, key=lambda r: position[r.client])

    def _train_group(
        self, shared: Arrays, round_: int, group: list[int], user_gmf: torch.Tensor, user_mlp: torch.Tensor
    ) -> BatchedResult:
        """Local training of one group (private vectors ``user_gmf``/``user_mlp``, row k is
        ``group[k]``), its updates clipped per client when DP is on. Runs in this process
        or in a lane's worker."""
        result = local_update_batched(
            shared=shared, user_gmf=user_gmf, user_mlp=user_mlp,
            data=[self.split.client(c) for c in group], model=self.model, train=self.train_config,
            rngs=[client_rng(seed=self.config.seed, round_=round_, client=c) for c in group],
        )
        if self.config.privacy.enabled:  # on the compact form: the rows it leaves out are zero
            result = replace(result, update=clip_stacked(result.update, max_norm=self.config.privacy.clipping_norm)[0])
        return result

    def _replies(self, group: list[int], result: BatchedResult, round_: int) -> list[TrainReply]:
        """Each client's upload as its device sends it."""
        bits = self.config.federation.upload_bits
        replies = []
        for k, c in enumerate(group):
            update: Mapping[str, np.ndarray]
            if bits:  # what the device would send (fedrec.federation.device.Device.upload)
                update = encode_update(result.client_update(k, self.spec), bits=bits,
                                       rng=upload_rng(seed=self.config.seed, round_=round_, client=c))
            else:  # the dense upload, built whenever the server reads it (not held for the whole round)
                update = CompactUpload(result, k, self.spec)
            replies.append(
                TrainReply(
                    client=c, update=update, num_examples=int(result.examples[k]), loss=float(result.loss[k]),
                    encoded=bits > 0,
                )
            )
        return replies

    def _workers(self, n: int) -> list[Lane]:
        """The first ``n`` lane workers, forked (with this transport's data) on first use."""
        while len(self._lane_workers) < n:
            self._lane_workers.append(Lane(self._train_group, siblings=self._lane_workers))
        return self._lane_workers[:n]

    def close(self) -> None:
        """Stop the lane workers (they also stop when this process exits)."""
        for worker in self._lane_workers:
            worker.stop()
        self._lane_workers.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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


class _RoundWork:
    """One round's groups, shared out between this thread and the lane workers.

    A thread per worker keeps it fed (:meth:`feed`); this thread trains groups itself
    (:meth:`run`) and turns every result into the devices' uploads (:meth:`store`).
    """

    def __init__(self, transport: VectorisedTransport, groups: list[list[int]], *, shared: Arrays, round_: int) -> None:
        self.transport, self.shared, self.round_ = transport, shared, round_
        self.pending = deque(groups)
        self.lock = threading.Lock()  # guards pending and the transport's private-vector tables
        self.done: queue.SimpleQueue[tuple[list[int], BatchedResult] | FedrecError] = queue.SimpleQueue()
        self.batches: list[list[TrainReply]] = []
        self.failures: list[FedrecError] = []

    def take(self) -> tuple[list[int], torch.Tensor, torch.Tensor] | None:
        """The next group with its clients' private vectors, or None when none is left."""
        with self.lock:
            if not self.pending:
                return None
            group = self.pending.popleft()
            return group, self.transport.user_gmf[group], self.transport.user_mlp[group]

    def feed(self, worker: Lane) -> None:
        """Hand ``worker`` groups until none is left; its results and failures go to ``done``."""
        try:
            worker.send(kind="round", shared=self.shared, round_=self.round_)
            while (job := self.take()) is not None:
                group, user_gmf, user_mlp = job
                worker.send(kind="group", group=group, user_gmf=user_gmf.numpy(), user_mlp=user_mlp.numpy())
                self.done.put(worker.receive())
        except FedrecError as error:
            self.done.put(error)
        except BaseException as error:  # noqa: BLE001 - never lose a group silently: the engine raises it
            self.done.put(FedrecError(f"feeding an in-process engine lane failed: {type(error).__name__}: {error}"))

    def store(self, group: list[int], result: BatchedResult) -> None:
        """A group's new private vectors into the tables, its uploads into the round's replies."""
        with self.lock:
            self.transport.user_gmf[group] = result.user_gmf
            self.transport.user_mlp[group] = result.user_mlp
        self.batches.append(self.transport._replies(group, result, self.round_))

    def drain(self) -> None:
        """Store the workers' results so far."""
        while not self.done.empty():
            item = self.done.get_nowait()
            if isinstance(item, FedrecError):
                self.failures.append(item)
            else:
                self.store(*item)

    def run(self, workers: list[Lane]) -> list[TrainReply]:
        """Every group trained (here and on ``workers``); the first failure raised once all
        workers have handed in their groups."""
        feeders = [threading.Thread(target=self.feed, args=(w,), name="fedrec-lane-feed", daemon=True) for w in workers]
        for thread in feeders:
            thread.start()
        try:
            with intra_op_threads(1):  # one thread per lane (two did less than one here: small kernels)
                while (job := self.take()) is not None:
                    group, user_gmf, user_mlp = job
                    self.store(group, self.transport._train_group(self.shared, self.round_, group, user_gmf, user_mlp))
                    self.drain()
        finally:  # the workers finish their groups and hand them in, even after a failure here
            with self.lock:
                self.pending.clear()
            for thread in feeders:
                thread.join()
        self.drain()
        if self.failures:
            raise self.failures[0]
        return [r for batch in self.batches for r in batch]


def make_transport(config: RunConfig) -> Transport:
    if config.privacy.local_dp:
        torch.set_num_threads(1)  # many tiny per-device models: threads cost more than they gain
        return InProcessTransport(config, simulated_population(config).split.n_users)
    # Evaluation scores every item for many users at once: every core, unless OMP_NUM_THREADS
    # says otherwise (on a machine shared with other busy processes, OpenMP's spin-waits can
    # make extra threads cost more). Training sets one thread per lane for itself.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    return VectorisedTransport(config)


class InProcessChannels:
    """The in-process engine's channels to the simulated devices (:class:`fedrec.families.contract.Channels`):
    the vectorised transport for rounds, direct calls for statistics, the data set's public catalogue."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.n_items = simulated_population(config).split.n_items
        self.catalog = run_catalog(config)
        self.simulated = True
        self._rounds: Transport | None = None

    def rounds(self) -> Transport:
        self._rounds = make_transport(self.config)
        return self._rounds

    def statistics(self) -> StatisticsTransport:
        return family_of(self.config).simulated_devices(simulated_population(self.config).split, self.config)

    def close(self) -> None:
        if isinstance(self._rounds, VectorisedTransport):
            self._rounds.close()  # its lane workers


def run(
    config: RunConfig,
    out_dir: Path,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    *,
    resume: bool = False,
    odometers: SimulatedOdometers | None = None,
) -> Path:
    """``odometers``: the simulated devices keep privacy odometers (:func:`run_family`)."""
    channels = InProcessChannels(config)
    try:
        run_family(config, channels, out_dir=out_dir, engine="inprocess", on_round=on_round, resume=resume,
                   odometers=odometers)
    finally:
        channels.close()
    return out_dir / RESULTS
