"""The in-process engine's lanes: forked worker processes that train a round's groups.

A round's clients are cut into groups (:meth:`fedrec.engine.vectorised.VectorisedTransport._groups`);
the engine's process and one :class:`Lane` per further usable core (``$FEDREC_LANES``)
each take the next group as soon as they are free. A lane is forked from the engine, so it
holds the same data set and settings; only a group's shared parameters, client ids and
private vectors travel to it (pickled numpy arrays), and the group's result travels back.
A client's result does not depend on the lane it trained in. Also here: the process
settings lanes share (glibc's malloc, torch's intra-op threads). May import
``fedrec.training``, ``fedrec.models``, ``fedrec.errors``.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import platform
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from multiprocessing.connection import Connection
from typing import Any

import torch

from fedrec.errors import FedrecError
from fedrec.models import Arrays
from fedrec.training.batched import BatchedResult

TrainGroup = Callable[[Arrays, int, list[int], torch.Tensor, torch.Tensor], BatchedResult]
"""``(shared, round, group, user_gmf, user_mlp) -> result``: one group's local training."""

LANES_ENV = "FEDREC_LANES"  # how many processes train a round's clients (default: one per usable core)


def default_lanes() -> int:
    """``$FEDREC_LANES``, else one lane per core this process may use on Linux and one
    elsewhere; always 1 where processes cannot be forked (the lanes' workers inherit the
    data set instead of reloading it; macOS allows fork, but its system frameworks are
    not safe to use after one, so lanes there are opt-in)."""
    value = os.environ.get(LANES_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise FedrecError(f"{LANES_ENV} must be a whole number >= 1, got {value!r}")
        lanes = int(value)
    elif sys.platform.startswith("linux"):
        lanes = len(os.sched_getaffinity(0))
    else:
        lanes = 1
    return lanes if "fork" in multiprocessing.get_all_start_methods() else 1


# glibc's malloc settings (mallopt(3)) for the engine's process and its lanes: every
# training step allocates and frees the same few-MB activation and gradient buffers, and
# by default glibc returns them to the kernel (mmap/munmap above a threshold, heap trims)
# and takes page faults to get them back every round, which is slow, in a VM especially
# (benchmarks/README.md).
_MALLOPT = {-3: 16 << 20, -1: 512 << 20, -2: 64 << 20}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD


def keep_freed_memory() -> bool:
    """Have glibc keep freed buffers for reuse (see ``_MALLOPT``); False where the C
    library is not glibc (nothing changes)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all(mallopt(option, value) == 1 for option, value in _MALLOPT.items())


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Lane:
    """A forked worker process that trains the groups it is handed, one at a time, with
    one intra-op thread (on this workload one process with two OpenMP threads did less
    than with one: small kernels, serial Python overhead; a second single-threaded
    process puts the second core to work).

    Forked from the engine, it holds the same data set and settings; only a group's
    shared parameters, client ids and private vectors travel to it, and the group's
    result (compact updates, already clipped) travels back.
    """

    def __init__(self, train_group: TrainGroup, *, siblings: Sequence[Lane] = ()) -> None:
        # ``train_group``: what the worker runs for each group (inherited by the fork, not pickled);
        # ``siblings``: the lanes already running, whose pipe ends the worker must not keep open
        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        # the worker closes every parent end it inherits, so that it sees EOF when this process dies
        parent_ends = [self.conn] + [lane.conn for lane in siblings]
        self.process = context.Process(
            target=_serve_lane, args=(child, parent_ends, train_group), daemon=True, name="fedrec-lane"
        )
        self.process.start()
        child.close()
        self._stop = weakref.finalize(self, _stop_lane, self.conn, self.process)
        self.jobs = 0  # groups handed to it so far

    def send(self, **message: object) -> None:
        self.jobs += message["kind"] == "group"
        try:
            self.conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as error:
            raise self._died() from error

    def receive(self) -> tuple[list[int], BatchedResult]:
        try:
            status, payload = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError) as error:
            raise self._died() from error
        if status != "ok":
            raise FedrecError(f"an in-process engine lane failed: {payload}")
        group, result = payload
        return group, _from_wire(result)

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


def _serve_lane(conn: Connection, parent_ends: list[Connection], train_group: TrainGroup) -> None:
    """The worker's loop: a "round" message brings the model, each "group" message a group
    to train, answered before the next is sent."""
    for end in parent_ends:
        end.close()
    torch.set_num_threads(1)
    shared: Arrays = {}
    round_ = 0
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except EOFError:  # the engine's process is gone
            return
        if message is None:
            return
        if message["kind"] == "round":
            shared, round_ = message["shared"], message["round_"]
            continue
        group = message["group"]
        try:
            user_gmf, user_mlp = torch.from_numpy(message["user_gmf"]), torch.from_numpy(message["user_mlp"])
            result = train_group(shared, round_, group, user_gmf, user_mlp)
            payload: tuple[str, object] = ("ok", (group, _to_wire(result)))
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
