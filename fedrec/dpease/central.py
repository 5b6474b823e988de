"""The DP-EASE sums computed for a whole simulated population at once (sparse
products instead of one dense upload per device), for fast validation sweeps.

:func:`population_sums` equals the sum of the devices' :mod:`fedrec.dpease.statistics`
uploads (tested against it), and :func:`simulate_release` draws the noise from the same
generator in the same order as :func:`fedrec.dpease.run.run_dp_ease`, so a seed gives
the same release either way. Nothing here writes a ledger: a run whose release is used
goes through ``run_dp_ease``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from fedrec.config import RunConfig
from fedrec.data.split import LeaveOneOutSplit
from fedrec.dpease.fit import EaseRelease, fit_release, public_item_content, select_top_items
from fedrec.dpease.run import phase_noise
from fedrec.privacy.noise import noise_generator


def _history(split: LeaveOneOutSplit) -> sp.csr_matrix:
    """(U, n_items) 0/1 training histories."""
    users, items = split.train_pairs()
    matrix = sp.csr_matrix((np.ones(users.shape[0]), (users, items)), shape=(split.n_users, split.n_items))
    matrix.data[:] = 1.0  # a repeated (user, item) pair counts once, as on the device
    return matrix


def population_sums(split: LeaveOneOutSplit, *, clipping_norm: float, top_items: np.ndarray | None) -> np.ndarray:
    """Sum over users of the phase-1 statistic (``top_items`` None) or of the phase-2
    packed upper triangle over ``top_items``."""
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


def simulate_release(config: RunConfig, split: LeaveOneOutSplit) -> EaseRelease:
    """The release ``run_dp_ease`` would make for ``config`` on ``split`` (same noise)."""
    p, e = config.privacy, config.ease
    z_counts, z_gram = phase_noise(config)
    rng = noise_generator(seed=config.seed, secure=False) if p.enabled else None
    c = p.clipping_norm
    counts = population_sums(split, clipping_norm=c, top_items=None)
    if rng is not None:
        counts = counts + rng.normal(0.0, z_counts * c, size=counts.shape)
    top = select_top_items(counts, noise_std=z_counts * c, threshold=e.item_threshold, max_items=e.max_items)
    gram = population_sums(split, clipping_norm=c, top_items=top)
    if rng is not None:
        gram = gram + rng.normal(0.0, z_gram * c, size=gram.shape)
    return fit_release(
        counts=counts, top_items=top, gram_packed=gram, count_noise_std=z_counts * c, gram_noise_std=z_gram * c,
        noise_scale=e.lambda_noise, base_scale=e.lambda_base, eigen_floor=e.eigen_floor, prior_weight=e.prior_weight,
        content=public_item_content(config), content_weight=e.content_weight,
    )
