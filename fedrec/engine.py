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

A round's clients are dealt to *lanes*, one per usable core (``$FEDREC_LANES``): this
process trains the first, forked worker processes the others, each with one intra-op
thread, and send back their groups' compact, clipped updates. The clients' results do
not depend on the lane they trained in (beyond float rounding).

Record-level local DP (Opacus) is per device by nature: with ``local-dp`` on, the
engine runs the devices one after the other (:class:`fedrec.runner.InProcessTransport`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import platform
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from fedrec.batched import BatchedResult, local_update_batched
from fedrec.client import simulated_population
from fedrec.compression import encode_update, upload_rng
from fedrec.config import RunConfig
from fedrec.data.split import LeaveOneOutSplit
from fedrec.errors import FedrecError
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
LANES_ENV = "FEDREC_LANES"  # how many processes train a round's clients (default: one per usable core)


def default_lanes() -> int:
    """``$FEDREC_LANES``, else one lane per core this process may use; 1 where processes
    cannot be forked (the lanes' workers inherit the data set instead of reloading it)."""
    value = os.environ.get(LANES_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise FedrecError(f"{LANES_ENV} must be a whole number >= 1, got {value!r}")
        lanes = int(value)
    else:
        lanes = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return lanes if "fork" in multiprocessing.get_all_start_methods() else 1


# glibc's malloc settings (mallopt(3)) for the engine's process and its lanes: every
# training step allocates and frees the same few-MB activation and gradient buffers, and
# by default glibc returns them to the kernel (mmap/munmap above a threshold, heap trims)
# and takes page faults to get them back: ~7,000 per ML-100K round, ~15 % of it in a VM.
_MALLOPT = {-3: 16 << 20, -1: 512 << 20, -2: 64 << 20}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD


def keep_freed_memory() -> bool:
    """Have glibc keep freed buffers for reuse (see ``_MALLOPT``); False where the C
    library is not glibc (nothing changes)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all(mallopt(option, value) == 1 for option, value in _MALLOPT.items())


@contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _chunks(clients: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(clients), size):
        yield list(clients[start : start + size])


class VectorisedTransport:
    """Trains and evaluates many simulated devices at once, in this process."""

    min_lane_clients = 8  # a lane gets at least this many of a round's clients, or fewer lanes are used

    def __init__(self, config: RunConfig, *, split: LeaveOneOutSplit | None = None, lanes: int | None = None) -> None:
        # ``split``: a population other than the config's (e.g. with audit canaries added)
        # ``lanes``: processes that train a round's clients side by side (default_lanes())
        self.config = config
        self.lanes = default_lanes() if lanes is None else lanes
        if self.lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {self.lanes}")
        self._lane_workers: list[_Lane] = []
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
        clients = list(clients)
        lanes = self._lanes_for(clients)
        workers = self._workers(len(lanes) - 1)
        for lane, worker in zip(lanes[1:], workers):  # the other lanes start at once ...
            user_gmf, user_mlp = self._private(lane)
            worker.send(
                shared=shared, round_=round_, clients=lane, user_gmf=user_gmf.numpy(), user_mlp=user_mlp.numpy()
            )
        try:
            with _intra_op_threads(1 if workers else None):  # ... while this process trains the first
                user_gmf, user_mlp = self._private(lanes[0])
                replies = self._replies(self._train_lane(shared, round_, lanes[0], user_gmf, user_mlp), round_)
        finally:  # every lane's answer is collected, even after a failure, so the next round starts in step
            answers, failure = [], None
            for worker in workers:
                try:
                    answers.append(worker.receive())
                except FedrecError as error:
                    failure = failure or error
        if failure is not None:
            raise failure
        for groups in answers:
            replies += self._replies(groups, round_)
        position = {c: i for i, c in enumerate(clients)}
        return sorted(replies, key=lambda r: position[r.client])

    def _lanes_for(self, clients: list[int]) -> list[list[int]]:
        """The round's clients dealt to the lanes, longest histories first, each to the
        lane with the least work so far (work ~ history length). Lane 0 is this process."""
        lanes: list[list[int]] = [[] for _ in range(max(1, min(self.lanes, len(clients) // self.min_lane_clients)))]
        work = np.zeros(len(lanes))
        for c in sorted(clients, key=lambda c: (-self.history[c], c)):
            lane = int(np.argmin(work))
            lanes[lane].append(c)
            work[lane] += self.history[c]
        return lanes

    def _train_lane(
        self, shared: Arrays, round_: int, clients: list[int], user_gmf: torch.Tensor, user_mlp: torch.Tensor
    ) -> list[tuple[list[int], BatchedResult]]:
        """Local training of ``clients`` (private vectors ``user_gmf``/``user_mlp``, row k
        is ``clients[k]``) in groups of similar history lengths; each group's updates
        clipped per client when DP is on. Runs in this process or in a lane's worker."""
        row = {c: k for k, c in enumerate(clients)}
        out = []
        privacy = self.config.privacy
        for chunk in self._similar_lengths(clients):
            rows = [row[c] for c in chunk]
            result = local_update_batched(
                shared=shared,
                user_gmf=user_gmf[rows],
                user_mlp=user_mlp[rows],
                data=[self.split.client(c) for c in chunk],
                model=self.model,
                train=self.train_config,
                rngs=[client_rng(seed=self.config.seed, round_=round_, client=c) for c in chunk],
            )
            if privacy.enabled:  # on the compact form: the rows it leaves out are zero
                result = replace(result, update=clip_stacked(result.update, max_norm=privacy.clipping_norm)[0])
            out.append((chunk, result))
        return out

    def _replies(self, groups: list[tuple[list[int], BatchedResult]], round_: int) -> list[TrainReply]:
        """Store the groups' new private vectors; each client's upload as its device sends it."""
        replies = []
        bits = self.config.federation.upload_bits
        for chunk, result in groups:
            self.user_gmf[chunk] = result.user_gmf
            self.user_mlp[chunk] = result.user_mlp
            for k, c in enumerate(chunk):
                update = result.client_update(k, self.spec)
                if bits:  # what the device would send (fedrec.client.Device.upload)
                    update = encode_update(
                        update, bits=bits, rng=upload_rng(seed=self.config.seed, round_=round_, client=c)
                    )
                replies.append(
                    TrainReply(
                        client=c,
                        update=update,
                        num_examples=int(result.examples[k]),
                        loss=float(result.loss[k]),
                        encoded=bits > 0,
                    )
                )
        return replies

    def _workers(self, n: int) -> list[_Lane]:
        """The first ``n`` lane workers, forked (with this transport's data) on first use."""
        while len(self._lane_workers) < n:
            self._lane_workers.append(_Lane(self))
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


class _Lane:
    """A forked process that trains one lane of every round's clients, with one intra-op
    thread: two single-threaded processes on two cores do twice the work of one, where
    one process with two OpenMP threads does less (its kernels are small, its Python
    overhead serial).

    Forked from the transport, it holds the same data set and settings; only a round's
    shared parameters, client ids and private vectors travel to it, and its groups'
    results (compact updates, already clipped) travel back.
    """

    def __init__(self, transport: VectorisedTransport) -> None:
        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        # the worker closes every parent end it inherits, so that it sees EOF when this process dies
        parent_ends = [self.conn] + [lane.conn for lane in transport._lane_workers]
        self.process = context.Process(
            target=_serve_lane, args=(child, parent_ends, transport), daemon=True, name="fedrec-lane"
        )
        self.process.start()
        child.close()
        self._stop = weakref.finalize(self, _stop_lane, self.conn, self.process)

    def send(self, **job: object) -> None:
        try:
            self.conn.send_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as error:
            raise self._died() from error

    def receive(self) -> list[tuple[list[int], BatchedResult]]:
        try:
            status, payload = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError) as error:
            raise self._died() from error
        if status != "ok":
            raise FedrecError(f"an in-process engine lane failed: {payload}")
        return [(chunk, _from_wire(result)) for chunk, result in payload]

    def _died(self) -> FedrecError:
        self.process.join(timeout=5)
        return FedrecError(
            f"an in-process engine lane (pid {self.process.pid}) died, exit code {self.process.exitcode}; "
            "the run can be resumed from its last checkpoint (fedrec simulate --resume RUN_DIR)"
        )

    def stop(self) -> None:
        self._stop()


def _to_wire(result: BatchedResult) -> dict[str, Any]:
    """A result with numpy arrays for tensors (pickled as plain buffers, not torch storages)."""
    return {
        **{field.name: getattr(result, field.name) for field in fields(result)},
        "update": {name: t.numpy() for name, t in result.update.items()},
        "user_gmf": result.user_gmf.numpy(),
        "user_mlp": result.user_mlp.numpy(),
    }


def _from_wire(wire: dict[str, Any]) -> BatchedResult:
    return BatchedResult(
        **{
            **wire,
            "update": {name: torch.from_numpy(a) for name, a in wire["update"].items()},
            "user_gmf": torch.from_numpy(wire["user_gmf"]),
            "user_mlp": torch.from_numpy(wire["user_mlp"]),
        }
    )


def _serve_lane(conn: Connection, parent_ends: list[Connection], transport: VectorisedTransport) -> None:
    for end in parent_ends:
        end.close()
    torch.set_num_threads(1)
    while True:
        try:
            job = pickle.loads(conn.recv_bytes())
        except EOFError:  # the engine's process is gone
            return
        if job is None:
            return
        try:
            job.update(user_gmf=torch.from_numpy(job["user_gmf"]), user_mlp=torch.from_numpy(job["user_mlp"]))
            payload: tuple[str, object] = ("ok", [(chunk, _to_wire(r)) for chunk, r in transport._train_lane(**job)])
        except Exception as error:  # noqa: BLE001 - any failure is reported to the engine, which raises it
            payload = ("error", f"{type(error).__name__}: {error}")
        conn.send_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def _stop_lane(conn: Connection, process: multiprocessing.process.BaseProcess) -> None:
    try:
        conn.send_bytes(pickle.dumps(None))
    except OSError:
        pass
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join()
    conn.close()


def make_transport(config: RunConfig) -> Transport:
    if config.privacy.local_dp:
        torch.set_num_threads(1)  # many tiny per-device models: threads cost more than they gain
        return InProcessTransport(config, simulated_population(config).split.n_users)
    keep_freed_memory()
    # Big batched kernels: every core, unless OMP_NUM_THREADS says otherwise (on a machine
    # shared with other busy processes, OpenMP's spin-waits can make extra threads cost more).
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    return VectorisedTransport(config)


def run(
    config: RunConfig,
    out_dir: Path,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    *,
    resume: bool = False,
) -> Path:
    transport = make_transport(config)
    try:
        run_and_report(config, transport, out_dir=out_dir, engine="inprocess", on_round=on_round, resume=resume)
    finally:
        if isinstance(transport, VectorisedTransport):
            transport.close()  # its lane workers
    return out_dir / RESULTS
