"""Every simulated honest device's DP-EASE upload, summed in one vectorised sparse pass.

:class:`PopulationStatistics` is the in-process transport for large simulated
populations. The per-device path (:class:`fedrec.dpease.run.InProcessStatistics`) builds
each device's dense upload (``n_items`` values for the counts, ``K(K+1)/2`` for the
co-occurrence) and the server clips and adds them one at a time: a million devices take
hours. Here the same values are computed for a chunk of devices at once, only at their
nonzero places:

* **the device's arithmetic**: phase 1 writes ``float32(C / sqrt(n) * (1 - 1e-6))`` at
  the user's ``n`` distinct items; phase 2 writes, for each pair ``i <= j`` of the user's
  items in ``K`` (ordered by place in ``K``), ``float32(w_ij * (C / ||w|| * (1 - 1e-6)))``
  with ``w_ij = pair_decay ** |t_i - t_j|`` (``t`` the last position in the history), or
  ``float32(C / sqrt(#pairs) * (1 - 1e-6))`` for ``pair_decay = 1``
  (:mod:`fedrec.dpease.statistics`, same float operations in the same order);
* **the server's clipping**: each device's L2 norm (float64 over its float32 values) is
  compared with C and a device above it is scaled as :func:`fedrec.privacy.clipping.clip_update`
  scales it (an honest device never is);
* **the sum**: ``np.bincount`` adds the float64 values in device order, the order in
  which the per-device path adds the dense uploads, so the sums are the same floats.

A chunk's sum is handed to the run as one :class:`~fedrec.privacy.dp_fedavg.Part` of its
devices (bounded by ``devices * C``, never re-clipped, exactly as a secure sum), so the
noise, the ledger entry and the count of contributors are those of the per-device path.
Real devices, and tests of hostile uploads, go through the per-device path.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.data.split import LeaveOneOutSplit
from fedrec.dpease.fit import EaseRelease
from fedrec.dpease.run import PAIR_DECAY_REQUEST, PHASES, STATISTIC_NAMES, TOP_ITEMS_REQUEST, InProcessStatistics
from fedrec.dpease.statistics import packed_size
from fedrec.errors import FedrecError
from fedrec.models import Arrays
from fedrec.privacy.dp_fedavg import Part

SHRINK = 1 - 1e-6  # the devices' margin below C (fedrec.dpease.statistics)
PAIRS_PER_CHUNK = 1 << 23  # co-occurrence entries held at once (about 40 bytes each while a chunk is summed)


@dataclass(frozen=True)
class Histories:
    """Each user's distinct training items and the position of each one's last
    occurrence in the time-ordered history, CSR in user order, items ascending."""

    n_items: int
    indptr: np.ndarray  # (U + 1,)
    items: np.ndarray  # (nnz,) int64
    last: np.ndarray  # (nnz,) int64 position of the item's last occurrence in the user's history

    @classmethod
    def of(cls, split: LeaveOneOutSplit) -> Histories:
        lengths = np.diff(split.train_indptr)
        users = np.repeat(np.arange(split.n_users, dtype=np.int64), lengths)
        positions = np.arange(users.shape[0], dtype=np.int64) - np.repeat(split.train_indptr[:-1], lengths)
        key = users * split.n_items + split.train_items
        order = np.argsort(key, kind="stable")  # equal keys keep their time order: the last one is the last occurrence
        key, positions = key[order], positions[order]
        last_of_key = np.append(key[1:] != key[:-1], True) if key.shape[0] else np.zeros(0, dtype=bool)
        key, positions = key[last_of_key], positions[last_of_key]
        counts = np.bincount(key // split.n_items, minlength=split.n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(n_items=split.n_items, indptr=indptr, items=key % split.n_items, last=positions)

    @property
    def n_users(self) -> int:
        return int(self.indptr.shape[0] - 1)


def _clip_rows(values: np.ndarray, owner: np.ndarray, *, devices: int, clipping_norm: float) -> tuple[np.ndarray, np.ndarray]:
    """The server's clipping of each device's float32 values (``owner``: the device of
    each value, ascending): :func:`fedrec.privacy.clipping.clip_update`'s arithmetic, one
    device per row. Returns (values after clipping, each device's norm before it)."""
    wide = values.astype(np.float64)
    norms = np.sqrt(np.bincount(owner, weights=wide * wide, minlength=devices))
    over = norms > clipping_norm
    if not over.any():
        return values, norms
    scale = np.where(over, clipping_norm / np.where(over, norms, 1.0), 1.0)
    clipped = (wide * scale[owner]).astype(np.float32)
    wide_after = clipped.astype(np.float64)
    after = np.sqrt(np.bincount(owner, weights=wide_after * wide_after, minlength=devices))
    again = after > clipping_norm  # float32 rounding left a hair above C
    if again.any():
        shrink = np.where(again, clipping_norm / np.where(again, after, 1.0) * SHRINK, 1.0)
        clipped = np.where(again[owner], clipped * shrink[owner].astype(np.float32), clipped).astype(np.float32)
    return clipped, norms


@dataclass(frozen=True)
class ChunkSum:
    """One chunk of devices' clipped uploads, summed: the float64 sum, how many devices,
    and each device's upload norm before the server's clipping."""

    total: np.ndarray
    devices: int
    norms: np.ndarray


def count_sums(histories: Histories, users: np.ndarray, *, clipping_norm: float, chunk: int = 1 << 18) -> Iterator[ChunkSum]:
    """Phase 1 for ``users`` (ascending), ``chunk`` devices at a time: each device's
    ``C x / ||x||`` (float32), clipped by the server, summed in device order."""
    for start in range(0, users.shape[0], chunk):
        block = users[start : start + chunk]
        lo, hi = histories.indptr[block], histories.indptr[block + 1]
        n = hi - lo
        flat = _ranges(lo, n)
        owner = np.repeat(np.arange(block.shape[0], dtype=np.int64), n)
        per_device = (clipping_norm / np.sqrt(n.astype(np.float64)[n > 0]) * SHRINK).astype(np.float32)
        value = np.zeros(block.shape[0], dtype=np.float32)
        value[n > 0] = per_device
        values, norms = _clip_rows(value[owner], owner, devices=block.shape[0], clipping_norm=clipping_norm)
        total = np.bincount(histories.items[flat], weights=values.astype(np.float64), minlength=histories.n_items)
        yield ChunkSum(total=total, devices=int(block.shape[0]), norms=norms)


def gram_sums(
    histories: Histories, users: np.ndarray, *, top_items: np.ndarray, clipping_norm: float, pair_decay: float,
    pairs_per_chunk: int = PAIRS_PER_CHUNK,
) -> Iterator[ChunkSum]:
    """Phase 2 for ``users`` (ascending), in chunks of at most ``pairs_per_chunk``
    co-occurrence entries (a device with more is a chunk of its own): each device's packed
    upper triangle over ``top_items``, clipped by the server, summed in device order."""
    k = int(top_items.shape[0])
    size = packed_size(k)
    place = np.full(histories.n_items, -1, dtype=np.int64)
    place[top_items] = np.arange(k, dtype=np.int64)
    in_k = place[histories.items] >= 0
    # each device's items in K, ordered by place (the device sorts them so: rows <= cols)
    owner_all = np.repeat(np.arange(histories.n_users, dtype=np.int64), np.diff(histories.indptr))[in_k]
    places_all, times_all = place[histories.items[in_k]], histories.last[in_k]
    order = np.lexsort((places_all, owner_all))
    places_all, times_all = places_all[order], times_all[order]
    k_indptr = np.concatenate([[0], np.cumsum(np.bincount(owner_all, minlength=histories.n_users))]).astype(np.int64)
    m = (k_indptr[users + 1] - k_indptr[users]).astype(np.int64)
    pairs = m * (m + 1) // 2
    bounds = _chunks(pairs, limit=pairs_per_chunk)
    for start, stop in itertools.pairwise(bounds):
        block, mb, pb = users[start:stop], m[start:stop], pairs[start:stop]
        elements = _ranges(k_indptr[block], mb)  # the block's items in K, device by device
        local = np.arange(elements.shape[0], dtype=np.int64) - np.repeat(np.cumsum(mb) - mb, mb)  # index within its device
        width = np.repeat(mb, mb) - local  # pairs (a, b >= a) that start at each element
        first = np.repeat(np.arange(elements.shape[0], dtype=np.int64), width)
        second = first + (np.arange(first.shape[0], dtype=np.int64) - np.repeat(np.cumsum(width) - width, width))
        owner = np.repeat(np.arange(block.shape[0], dtype=np.int64), pb)
        rows, cols = places_all[elements[first]], places_all[elements[second]]
        if pair_decay == 1.0:
            per_device = np.zeros(block.shape[0], dtype=np.float32)
            has = pb > 0
            per_device[has] = (clipping_norm / np.sqrt(pb[has].astype(np.float64)) * SHRINK).astype(np.float32)
            values = per_device[owner]
        else:
            gaps = np.abs(times_all[elements[first]] - times_all[elements[second]]).astype(np.float64)
            weights = np.power(pair_decay, gaps)
            norm = np.sqrt(np.bincount(owner, weights=weights * weights, minlength=block.shape[0]))
            factor = clipping_norm / np.where(norm > 0, norm, 1.0) * SHRINK
            values = (weights * factor[owner]).astype(np.float32)
        del first, second, elements
        values, norms = _clip_rows(values, owner, devices=block.shape[0], clipping_norm=clipping_norm)
        index = rows * k - rows * (rows - 1) // 2 + (cols - rows)  # fedrec.dpease.statistics.packed_index
        del rows, cols
        total = np.bincount(index, weights=values.astype(np.float64), minlength=size)
        yield ChunkSum(total=total, devices=int(block.shape[0]), norms=norms)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts.astype(np.int64), lengths) + offsets


def _chunks(sizes: np.ndarray, *, limit: int) -> list[int]:
    """Boundaries that cut consecutive items into runs of total size at most ``limit``
    (an item larger than ``limit`` alone), every run at least one item."""
    bounds, start = [0], 0
    cumulative = np.cumsum(sizes)
    while start < sizes.shape[0]:
        base = cumulative[start - 1] if start else 0
        stop = int(np.searchsorted(cumulative, base + limit, side="right"))
        stop = max(stop, start + 1)
        bounds.append(stop)
        start = stop
    return bounds


class PopulationStatistics(InProcessStatistics):
    """The in-process transport with every device's statistic computed and summed in
    vectorised chunks (:func:`count_sums`, :func:`gram_sums`): one
    :class:`~fedrec.privacy.dp_fedavg.Part` per chunk of devices. Evaluation is the
    per-device arithmetic of :class:`~fedrec.dpease.run.InProcessStatistics`."""

    def __init__(self, split: LeaveOneOutSplit, *, clipping_norm: float, release_type: type = EaseRelease) -> None:
        super().__init__(split, clipping_norm=clipping_norm, release_type=release_type)
        self.histories = Histories.of(split)
        self.largest_norm = 0.0  # the largest upload norm seen before the server's clipping

    def statistics(self, clients: Sequence[int], phase: str, request: Arrays) -> Iterable[Part]:
        users = np.asarray(clients, dtype=np.int64)
        if users.shape[0] and (np.any(np.diff(users) <= 0) or users[0] < 0 or users[-1] >= self.split.n_users):
            raise FedrecError(f"clients must be distinct split users 0..{self.split.n_users - 1} in ascending order")
        if phase == "counts":
            sums = count_sums(self.histories, users, clipping_norm=self.clipping_norm)
        elif phase == "gram":
            decay = float(np.asarray(request.get(PAIR_DECAY_REQUEST, 1.0)).reshape(-1)[0])
            sums = gram_sums(
                self.histories, users, top_items=np.asarray(request[TOP_ITEMS_REQUEST], dtype=np.int64),
                clipping_norm=self.clipping_norm, pair_decay=decay,
            )
        else:
            raise FedrecError(f"unknown DP-EASE phase {phase!r}; use one of {', '.join(PHASES)}")
        for part in sums:
            if part.norms.shape[0]:
                self.largest_norm = max(self.largest_norm, float(part.norms.max()))
            yield Part({STATISTIC_NAMES[phase]: part.total}, contributors=part.devices)
