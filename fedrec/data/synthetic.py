"""Synthetic interaction data with the shape of real recommendation logs, at any scale.

What makes real data hard and what makes it learnable, in a few parameters:

* item popularity is a power law (Zipf with exponent ``item_skew``): a few items are
  in many histories, most in few;
* user activity is heavy-tailed (log-normal with mean ``mean_interactions``): most
  users have a short history, a few a long one;
* choices follow latent factors: user u picks items with probability proportional to
  ``popularity_i * exp(affinity * <p_u, q_i>)`` (without replacement), so a
  collaborative-filtering model can recover structure beyond popularity.

A user's ``k`` items are a sample without replacement, drawn sequentially (each next
item with probability proportional to its weight among those not yet drawn). For most
users this is done by drawing with replacement from the user's distribution (inverse
CDF) and keeping the first ``k`` distinct items: each new distinct item then has exactly
the sequential probability. Users with long histories (more than an eighth of the
catalogue), for whom repeats would be many, use the Gumbel-top-k trick (Kool et al.
2019: the k largest of ``log weight + Gumbel noise``), the same distribution. Users are
handled in chunks (similar lengths together) so memory stays bounded for millions.

Cost: a chunk's weights are one float32 product ``[affinity p_u, 1] . [q_i, log
popularity_i]``, one exponential and the sums of blocks of ``BLOCK`` items, computed a
cache-sized piece of users at a time in one torch thread; an inverse-CDF draw searches
the cumulative block sums (float64), then the cumulative sum of its block's weights,
instead of a cumulative sum over every item of every user (timings:
``benchmarks/population_build.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from fedrec.data.interactions import Interactions
from fedrec.errors import DataError

SYNTHETIC = "synthetic"
MIN_HISTORY = 3  # what a leave-one-out split needs
SCORES_PER_CHUNK = 1 << 24  # (user, item) scores held at once
LONG_HISTORY = 8  # a history longer than n_items / this is drawn by Gumbel-top-k
BLOCK = 16  # items per block of the two-step inverse-CDF search
DRAWS_PER_PIECE = 1 << 18  # draws searched within their blocks at once
WEIGHTS_PER_PIECE = 1 << 19  # (user, item) weights computed at once: 2 MB, within a core's cache


@dataclass(frozen=True)
class SyntheticSpec:
    n_users: int = 10_000
    n_items: int = 2_000
    mean_interactions: float = 20.0
    dim: int = 8  # rank of the latent structure
    item_skew: float = 0.8  # Zipf exponent of item popularity
    activity_sigma: float = 1.0  # log-normal spread of history lengths
    affinity: float = 2.0  # taste vs. popularity; 2.0 gives popularity and item-kNN about ML-100K's HR@10 (docs/engines.md)

    def problems(self) -> list[str]:
        out = []
        if self.n_users < 1:
            out.append("synthetic-users must be >= 1")
        if self.n_items < 2 * MIN_HISTORY + 100:
            out.append(f"synthetic-items must be >= {2 * MIN_HISTORY + 100} (room for 99 evaluation negatives)")
        if not MIN_HISTORY <= self.mean_interactions <= self.n_items / 4:
            out.append(f"synthetic-interactions must be in [{MIN_HISTORY}, synthetic-items / 4]")
        return out


def generate(spec: SyntheticSpec, *, rng: np.random.Generator) -> Interactions:
    """Draw a data set; the same spec and generator state give the same data."""
    problems = spec.problems()
    if problems:
        raise DataError("; ".join(problems))
    n, m = spec.n_users, spec.n_items
    log_pop = -spec.item_skew * np.log1p(np.arange(m, dtype=np.float64))[rng.permutation(m)]  # (m,)
    users = rng.standard_normal((n, spec.dim)) / spec.dim**0.25  # (n, dim); <p_u, q_i> has unit variance
    items = rng.standard_normal((m, spec.dim)) / spec.dim**0.25  # (m, dim)
    # log-normal lengths with the requested mean, at least MIN_HISTORY, at most m / 2
    mu = np.log(spec.mean_interactions) - spec.activity_sigma**2 / 2
    lengths = np.clip(np.rint(rng.lognormal(mu, spec.activity_sigma, size=n)), MIN_HISTORY, m // 2).astype(np.int64)
    item_index = np.empty(int(lengths.sum()), dtype=np.int64)  # user by user, each history in draw order
    offsets = np.cumsum(lengths) - lengths  # where each user's history starts in it
    by_length = np.argsort(lengths, kind="stable")
    long_from = int(np.searchsorted(lengths[by_length], m // LONG_HISTORY, side="right"))
    chunk = max(1, SCORES_PER_CHUNK // m)
    users32, items32, log_pop32 = users.astype(np.float32), items.astype(np.float32), log_pop.astype(np.float32)
    scratch = np.empty((min(chunk, long_from), -(-m // BLOCK) * BLOCK), dtype=np.float32)  # every chunk's weights
    with _one_thread():
        for start in range(0, long_from, chunk):
            rows = by_length[start : min(long_from, start + chunk)]
            for done, drawn in _by_inverse_cdf(log_pop32, users32[rows], items32, lengths[rows], spec.affinity, rng,
                                               scratch=scratch):
                _place(item_index, offsets[rows[done]], lengths[rows[done]], drawn)
    del scratch
    for start in range(long_from, n, chunk):
        rows = by_length[start : start + chunk]
        _place(item_index, offsets[rows], lengths[rows], _by_gumbel_top_k(log_pop, users[rows], items, lengths[rows], spec.affinity, rng))
    user_index = np.repeat(np.arange(n, dtype=np.int64), lengths)
    # Time order is random within a user: the held-out items are a random pick of theirs.
    timestamps = np.asarray(rng.integers(0, 1 << 40, size=item_index.shape[0], dtype=np.int64))
    return Interactions(
        name=f"{SYNTHETIC}-{n}x{m}",
        users=user_index,
        items=item_index,
        ratings=np.ones(item_index.shape[0], dtype=np.float32),
        timestamps=timestamps,
        user_ids=np.arange(n, dtype=np.int64),
        item_ids=np.arange(m, dtype=np.int64),
    )


def _log_weights(log_pop: np.ndarray, users: np.ndarray, items: np.ndarray, affinity: float) -> np.ndarray:
    """(c, m) log choice weights ``log popularity + affinity <p_u, q_i>``."""
    return log_pop + affinity * users @ items.T


def _place(out: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, drawn: np.ndarray) -> None:
    """Write row ``r``'s first ``lengths[r]`` values of ``drawn`` (rows padded on the right)
    to ``out[offsets[r] : offsets[r] + lengths[r]]``."""
    width = np.arange(drawn.shape[1], dtype=np.int64)
    mask = width < lengths[:, None]
    out[(offsets[:, None] + width)[mask]] = drawn[mask]


def _by_gumbel_top_k(
    log_pop: np.ndarray, users: np.ndarray, items: np.ndarray, lengths: np.ndarray, affinity: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Each user's items (the first ``length`` of each row): the largest of log weight +
    Gumbel noise, best first."""
    keys = _log_weights(log_pop, users, items, affinity) + rng.gumbel(size=(users.shape[0], log_pop.shape[0]))
    longest = int(lengths.max())
    top = np.argpartition(-keys, longest - 1, axis=1)[:, :longest]  # unordered top-`longest`
    order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)  # (c, longest), best first


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch's intra-op threads set to one for the block: the draws are many small kernels,
    for which a second thread costs more CPU time than it saves (on a shared machine, wall
    time too)."""
    import torch  # imported where used (the data layer loads without it)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _choice_weights(
    log_pop: np.ndarray, users: np.ndarray, items: np.ndarray, affinity: float, *, scratch: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The users' choice weights ``popularity_i * exp(affinity <p_u, q_i>)`` (float32,
    ``(c, blocks * BLOCK)``, zero past the last item) and the cumulative sums of their
    blocks of ``BLOCK`` items (float64, ``(c, blocks + 1)``, first column 0).

    One product ``[affinity p_u, 1] . [q_i, log popularity_i]``, its exponential and the
    block sums, done ``WEIGHTS_PER_PIECE`` weights at a time so that each piece is still
    in cache for the next step. ``scratch``: a float32 buffer of at least ``c`` rows of
    that width to hold the weights (reused from chunk to chunk)."""
    import torch  # imported where used (the data layer loads without it)

    c, m = users.shape[0], items.shape[0]
    blocks = -(-m // BLOCK)
    width = blocks * BLOCK
    left = np.concatenate([affinity * users, np.ones((c, 1), dtype=users.dtype)], axis=1).astype(np.float32)
    right = np.zeros((width, items.shape[1] + 1), dtype=np.float32)  # the padding items: weight exp(-inf) = 0
    right[:m, :-1], right[:m, -1], right[m:, -1] = items, log_pop, -np.inf
    weights = np.empty((c, width), dtype=np.float32) if scratch is None else scratch[:c]
    block_cdf = np.zeros((c, blocks + 1))
    lefts, rights, out, cdf = (torch.from_numpy(a) for a in (left, right, weights, block_cdf))
    ones = torch.ones(BLOCK)
    step = max(1, WEIGHTS_PER_PIECE // width)
    for lo in range(0, c, step):
        hi = min(c, lo + step)
        piece = out[lo:hi]
        torch.mm(lefts[lo:hi], rights.T, out=piece)
        piece.exp_()
        sums = torch.mv(piece.view(-1, BLOCK), ones).view(hi - lo, blocks)  # float32, as the weights
        cdf[lo:hi, 1:] = torch.cumsum(sums, dim=1, dtype=torch.float64)
    return weights, block_cdf


def _by_inverse_cdf(
    log_pop: np.ndarray, users: np.ndarray, items: np.ndarray, lengths: np.ndarray, affinity: float,
    rng: np.random.Generator, *, scratch: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each user's ``length`` items: draws with replacement from the user's weights,
    the first ``length`` distinct ones in draw order (a sequential sample without
    replacement). Users short of distinct items draw as many again, appended to their draws.

    Yields (rows done, their distinct draws padded on the right) as rows complete. The
    weights are float32 (:func:`_choice_weights`; ``scratch`` holds them); a draw is an
    inverse-CDF search in two steps (:func:`_inverse_cdf`) with float64 sums.
    """
    m = items.shape[0]
    weights, block_cdf = _choice_weights(log_pop, users, items, affinity, scratch=scratch)
    c = weights.shape[0]
    need = lengths.astype(np.int64)
    uniforms = rng.random((c, int(np.ceil(1.25 * lengths.max())) + 8))
    # First each row's own share of its draws: a row's first ``length`` distinct items lie
    # in the shortest prefix holding that many, so a row complete within its share gets
    # the items that searching every draw of the row would give.
    share = np.ceil(1.25 * need).astype(np.int64) + 8
    drawn = _inverse_cdf(weights, block_cdf, None, uniforms, n_items=m,
                         searched=np.arange(uniforms.shape[1]) < share[:, None])
    firsts, count = _first_distinct(drawn, m)
    done = count >= need
    yield np.flatnonzero(done), firsts[done]
    if done.all():
        return
    todo, uniforms = np.flatnonzero(~done), uniforms[~done]
    drawn = _inverse_cdf(weights, block_cdf, todo, uniforms, n_items=m)
    while True:
        firsts, count = _first_distinct(drawn, m)
        done = count >= need[todo]
        yield todo[done], firsts[done]
        if done.all():
            return
        todo, drawn = todo[~done], drawn[~done]
        more = rng.random((todo.shape[0], drawn.shape[1]))  # twice the draws
        drawn = np.concatenate([drawn, _inverse_cdf(weights, block_cdf, todo, more, n_items=m)], axis=1)


def _inverse_cdf(
    weights: np.ndarray, block_cdf: np.ndarray, rows: np.ndarray | None, uniforms: np.ndarray, *, n_items: int,
    searched: np.ndarray | None = None,
) -> np.ndarray:
    """For each row ``r`` of ``rows`` (None: every row) and each uniform ``u`` of its row of
    ``uniforms``: the first item ``i`` with ``sum(weights[r, :i + 1]) > u * sum(weights[r])``.

    Two steps instead of a cumulative sum over every item: the block of ``BLOCK`` items
    from the cumulative block sums ``block_cdf`` (float64, ``(users, blocks + 1)``, first
    column 0), then the item within the block from the cumulative sum of the block's
    weights (float64). ``weights``: (users, blocks * BLOCK), zero past ``n_items``.
    ``(rows, draws)`` int64; -1 where ``searched`` (same shape, bool) is False.
    """
    import torch  # a batched search; imported where used (the data layer loads without it)

    cdf = block_cdf if rows is None else block_cdf[rows]  # (t, blocks + 1)
    t, blocks = cdf.shape[0], cdf.shape[1] - 1
    target = uniforms * cdf[:, -1:]
    # how many cumulative sums (the leading 0 included) are <= the target, less one: the block
    block = torch.searchsorted(torch.from_numpy(cdf), torch.from_numpy(target), right=True).numpy()
    block -= 1
    np.minimum(block, blocks - 1, out=block)
    below = cdf.reshape(-1)[np.arange(t)[:, None] * (blocks + 1) + block]  # the mass of the blocks before it
    residual = (target - below).reshape(-1)
    user = np.arange(t) if rows is None else rows
    window = (user[:, None] * blocks + block).reshape(-1)  # each draw's block, as a row of the (users * blocks, BLOCK) view
    first = (block * BLOCK).reshape(-1)
    if searched is not None:
        keep = searched.reshape(-1)
        residual, window, first = residual[keep], window[keep], first[keep]
    by_block = weights.reshape(-1, BLOCK)
    out = np.empty(window.shape[0], dtype=np.int64)
    for lo in range(0, window.shape[0], DRAWS_PER_PIECE):
        piece = slice(lo, lo + DRAWS_PER_PIECE)
        gathered, bar = np.take(by_block, window[piece], axis=0), residual[piece]
        running = np.zeros(gathered.shape[0])  # the block's cumulative sum, one column at a time (float64)
        count = np.zeros(gathered.shape[0], dtype=np.int64)  # how many cumulative sums are <= the residual
        for column in range(BLOCK):
            running += gathered[:, column]
            count += running <= bar
        out[piece] = np.minimum(count, BLOCK - 1)
    out += first
    np.minimum(out, n_items - 1, out=out)
    if searched is None:
        return out.reshape(uniforms.shape)
    full = np.full(uniforms.size, -1, dtype=np.int64)
    full[keep] = out
    return full.reshape(uniforms.shape)


def _first_distinct(drawn: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of draws (values in ``0..n_items - 1``, -1 for none): the distinct values in
    order of first appearance (left-aligned, padded with -1) and how many there are."""
    t, d = drawn.shape
    key = (np.arange(t, dtype=np.int64)[:, None] * (n_items + 1) + (drawn + 1)).reshape(-1)
    order = np.argsort(key, kind="stable")  # by row and value, then by position
    ordered = key[order]
    first = np.ones(ordered.shape[0], dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    first &= ordered % (n_items + 1) != 0  # no draw
    position = np.sort(order[first])  # each value's first draw, row by row in draw order
    row = position // d
    count = np.bincount(row, minlength=t)
    column = np.arange(position.shape[0]) - (np.cumsum(count) - count)[row]
    values = np.full((t, d), -1, dtype=np.int64)
    values[row, column] = drawn.reshape(-1)[position]
    return values, count
