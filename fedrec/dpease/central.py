"""The DP-EASE sums computed for a whole simulated population at once (sparse
products instead of one dense upload per device), for fast validation sweeps.

:func:`population_sums` equals the sum of the devices' :mod:`fedrec.dpease.statistics`
uploads (tested against it), and :func:`simulate_release` draws the noise from the same
generator in the same order as :func:`fedrec.dpease.run.run_dp_ease`, so a seed gives
the same release either way. Nothing here writes a ledger: a run whose release is used
goes through ``run_dp_ease``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from fedrec.config import RunConfig
from fedrec.data.split import LeaveOneOutSplit
from fedrec.dpease.fit import EaseRelease, fit_release, public_item_content, release_top_items
from fedrec.dpease.run import phase_noise
from fedrec.dpease.statistics import last_positions, pair_entries, recency_weights
from fedrec.privacy.noise import noise_generator


def _history(split: LeaveOneOutSplit) -> sp.csr_matrix:
    """(U, n_items) 0/1 training histories."""
    users, items = split.train_pairs()
    matrix = sp.csr_matrix((np.ones(users.shape[0]), (users, items)), shape=(split.n_users, split.n_items))
    matrix.data[:] = 1.0  # a repeated (user, item) pair counts once, as on the device
    return matrix


def recency_history(split: LeaveOneOutSplit, *, decay: float) -> sp.csr_matrix:
    """(U, n_items) histories weighted as a device weighs its own when it scores
    (:func:`fedrec.dpease.statistics.recency_weights`); 0/1 for ``decay = 1``."""
    if decay == 1.0:
        return _history(split)
    per_user = [recency_weights(split.train_of(user), decay=decay) for user in range(split.n_users)]
    rows = np.repeat(np.arange(split.n_users), [items.shape[0] for items, _ in per_user])
    cols = np.concatenate([items for items, _ in per_user])
    values = np.concatenate([weights for _, weights in per_user])
    return sp.csr_matrix((values, (rows, cols)), shape=(split.n_users, split.n_items))


def device_scorer(release: EaseRelease, split: LeaveOneOutSplit) -> Callable[[np.ndarray], np.ndarray]:
    """``users -> (U, n_items)`` scores of ``release`` for users of ``split``, each user
    scored as its device scores (its own recency-weighted history)."""
    history = recency_history(split, decay=release.score_decay)
    return lambda users: release.score(history[users].toarray())


def _decayed_gram(split: LeaveOneOutSplit, *, clipping_norm: float, top_items: np.ndarray, decay: float) -> np.ndarray:
    """The phase-2 sum with pair weights ``decay ** gap``, one user at a time."""
    k = int(top_items.shape[0])
    where = np.full(split.n_items, -1, dtype=np.int64)
    where[top_items] = np.arange(k)
    gram = np.zeros((k, k), dtype=np.float64)
    for user in range(split.n_users):
        distinct, times = last_positions(split.train_of(user))
        keep = where[distinct] >= 0
        rows, cols, values = pair_entries(where[distinct[keep]], times[keep], clipping_norm=clipping_norm, pair_decay=decay)
        gram[rows, cols] += values
    rows, cols = np.triu_indices(k)
    return gram[rows, cols]


def population_sums(
    split: LeaveOneOutSplit, *, clipping_norm: float, top_items: np.ndarray | None, pair_decay: float = 1.0,
) -> np.ndarray:
    """Sum over users of the phase-1 statistic (``top_items`` None) or of the phase-2
    packed upper triangle over ``top_items``."""
    if top_items is not None and pair_decay != 1.0:
        return _decayed_gram(split, clipping_norm=clipping_norm, top_items=top_items, decay=pair_decay)
    x = _history(split)
    if top_items is None:
        n = np.asarray(x.sum(axis=1)).ravel()
        weight = np.where(n > 0, clipping_norm / np.sqrt(np.maximum(n, 1)), 0.0) * (1 - 1e-6)
        return np.asarray(x.T @ weight).ravel()
    xk = x[:, top_items]  # (U, K)
    m = np.asarray(xk.sum(axis=1)).ravel()
    weight = np.where(m > 0, clipping_norm / np.sqrt(np.maximum(m * (m + 1) / 2, 1)), 0.0) * (1 - 1e-6)
    gram = (xk.T @ sp.diags(weight) @ xk).toarray()  # (K, K)
    rows, cols = np.triu_indices(top_items.shape[0])
    return np.asarray(gram[rows, cols])


def simulate_release(config: RunConfig, split: LeaveOneOutSplit, *, draw: int = 0) -> EaseRelease:
    """The release ``run_dp_ease`` would make for ``config`` on ``split`` (same noise);
    ``draw`` k > 0 draws the noise from seed ``config.seed + k`` instead: another
    release the same run could have made."""
    rng = noise_generator(seed=config.seed + draw, secure=False) if config.privacy.enabled else None
    return noisy_release(config, split, noise_multipliers=phase_noise(config, n_items=split.n_items), rng=rng)


def noisy_release(
    config: RunConfig, split: LeaveOneOutSplit, *, noise_multipliers: tuple[float, float],
    rng: np.random.Generator | None, before_use: Callable[[str, float], None] | None = None,
) -> EaseRelease:
    """Both sums with noise ``(z_counts, z_gram)`` drawn from ``rng`` (None: no noise),
    then the fit. ``before_use(phase, z)`` is called once each noisy sum exists and
    before anything reads it: where the ledger records the release."""
    e = config.ease
    z_counts, z_gram = noise_multipliers
    c = config.privacy.clipping_norm
    counts = population_sums(split, clipping_norm=c, top_items=None)
    if rng is not None:
        counts = counts + rng.normal(0.0, z_counts * c, size=counts.shape)
    if before_use is not None:
        before_use("counts", z_counts)
    top = release_top_items(counts, config, users=split.n_users, z_counts=z_counts, z_gram=z_gram)
    gram = population_sums(split, clipping_norm=c, top_items=top, pair_decay=e.pair_decay)
    if rng is not None:
        gram = gram + rng.normal(0.0, z_gram * c, size=gram.shape)
    if before_use is not None:
        before_use("gram", z_gram)
    return fit_release(
        counts=counts, top_items=top, gram_packed=gram, count_noise_std=z_counts * c, gram_noise_std=z_gram * c,
        noise_scale=e.lambda_noise, base_scale=e.lambda_base, eigen_floor=e.eigen_floor, prior_weight=e.prior_weight,
        content=public_item_content(config), content_weight=e.content_weight, score_decay=e.score_decay,
        top_first=e.top_first,
    )
