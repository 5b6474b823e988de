"""Server side of DP-EASE: from the two noisy sums to the released model.

Everything here is post-processing of DP releases (Dwork and Roth 2014, Prop. 2.1):
choosing the top items from the noisy counts, making the noisy Gram well conditioned,
solving EASE and the popularity prior cost no privacy.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedrec.config import DataSettings, RunConfig
from fedrec.data.interactions import ItemMetadata
from fedrec.dpease.statistics import recency_weights, unpack_symmetric
from fedrec.errors import FedrecError
from fedrec.models.ease import ease_weights

if TYPE_CHECKING:
    from fedrec.deploy.catalog import Catalog

TOP_ITEMS, WEIGHTS, PRIOR = "top_items", "weights", "prior"  # the released arrays (model.npz)
SCORE_DECAY = "score_decay"  # one value; releases without it score with equal weights
TOP_FIRST = "top_first"  # one value, 1: every top item ranks above every other item; releases without it: 0


@dataclass(frozen=True)
class EaseRelease:
    """The public DP-EASE model every device downloads."""

    top_items: np.ndarray  # (K,) item indices, most frequent first
    weights: np.ndarray  # (K, K) EASE weights B over top_items
    prior: np.ndarray  # (n_items,) popularity prior added to every score
    score_decay: float = 1.0  # a device weighs its k-th most recent item score_decay ** k
    top_first: bool = False  # every top item ranks above every item outside them

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            TOP_ITEMS: self.top_items, WEIGHTS: self.weights.astype(np.float32), PRIOR: self.prior.astype(np.float32),
            SCORE_DECAY: np.array([self.score_decay], dtype=np.float64),
            TOP_FIRST: np.array([1.0 if self.top_first else 0.0], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> EaseRelease:
        decay = float(np.asarray(arrays[SCORE_DECAY]).reshape(-1)[0]) if SCORE_DECAY in arrays else 1.0
        top_first = bool(np.asarray(arrays[TOP_FIRST]).reshape(-1)[0] > 0) if TOP_FIRST in arrays else False
        return cls(
            top_items=np.asarray(arrays[TOP_ITEMS], dtype=np.int64), weights=arrays[WEIGHTS], prior=arrays[PRIOR],
            score_decay=decay, top_first=top_first,
        )

    def score(self, history: np.ndarray, *, extra: np.ndarray | None = None) -> np.ndarray:
        """Scores over every item for (U, n_items) histories (0/1, or each item's recency
        weight, :meth:`history`): ``x_K B`` on the top items plus the prior everywhere, so
        the tail is ranked by the prior; ``extra`` (U, K) is added on the top items (another
        model's scores, :mod:`fedrec.dpease.factors`) before the shift. With ``top_first`` each user's top-item scores
        are shifted by one constant so that the lowest of them lies above every other
        item's score: the order within the top items and within the tail is unchanged,
        and a tail item whose released count is mostly noise never outranks an item the
        co-occurrence release covers."""
        history = np.atleast_2d(history)
        out = np.broadcast_to(self.prior.astype(np.float64), history.shape).copy()  # (U, n_items)
        k = self.top_items.shape[0]
        if k:
            out[:, self.top_items] += history[:, self.top_items] @ self.weights  # (U, K) @ (K, K)
            if extra is not None:
                out[:, self.top_items] += extra
        if self.top_first and 0 < k < out.shape[1]:
            tail = np.ones(out.shape[1], dtype=bool)
            tail[self.top_items] = False
            ceiling = float(self.prior[tail].max())
            lowest = out[:, self.top_items].min(axis=1, keepdims=True)  # (U, 1)
            out[:, self.top_items] += np.maximum(ceiling - lowest + 1.0, 0.0)
        return out

    def history(self, train_items: np.ndarray) -> np.ndarray:
        """(n_items,) one device's history as it scores with it: its k-th most recent
        item weighs ``score_decay ** k`` (``train_items`` in time order)."""
        x = np.zeros(self.prior.shape[0], dtype=np.float64)
        items, weights = recency_weights(train_items, decay=self.score_decay)
        x[items] = weights
        return x

    def score_items(self, train_items: np.ndarray) -> np.ndarray:
        """One device's scores (n_items,) from its own training items, in time order."""
        return self.score(self.history(train_items)[None, :])[0]

    def item_item(self) -> np.ndarray:
        """(K, K) the linear map from a history over the top items to their scores (the
        prior aside): the weights ``B``; what explanations read."""
        return np.asarray(self.weights, dtype=np.float64)


def select_top_items(counts: np.ndarray, *, noise_std: float, threshold: float, max_items: int) -> np.ndarray:
    """The items whose noisy count is at least ``threshold`` noise standard deviations
    (any positive count without noise), most frequent first, at most ``max_items``.

    The rule adapts K to the population and the budget: a larger population or a larger
    epsilon puts more items clearly above the noise. Ties keep the lower index (stable).
    """
    order = np.argsort(-counts, kind="stable")
    bar = threshold * noise_std if noise_std > 0 else 0.0
    above = int(np.sum(counts[order] > bar))
    return order[: min(above, max_items)].astype(np.int64)


def cooccurrence_signal(counts: np.ndarray, top_items: np.ndarray, *, users: int, clipping_norm: float, gram_noise_std: float) -> np.ndarray:
    """(K,) for each prefix of ``top_items`` (most frequent first), the expected mean
    co-occurrence signal of a Gram release over that prefix against the release's noise
    edge: ``sqrt(2) s mean(counts[:k]) / (2 gram_noise_std sqrt(k))``.

    A device with ``m`` of the ``k`` items uploads about ``m^2 / 2`` values of ``C sqrt(2)
    / m`` each, so the Gram's entries sum to about ``C sqrt(2)`` times the items' total
    raw count and its mean (rank-one) part has the eigenvalue ``C sqrt(2) sum(raw) / k``.
    A raw count is the released count times ``s / C``, ``s = sum(counts) / (users C)`` the
    mean square root of a history length (each device's count upload sums to ``C
    sqrt(n)``). The noise's spectrum ends near ``2 gram_noise_std sqrt(k)`` (Wigner).
    Everything here is post-processing of the count release and public sizes."""
    k = int(top_items.shape[0])
    if k == 0 or users <= 0 or gram_noise_std <= 0:
        return np.full(k, np.inf)
    s = max(float(counts.sum()), 0.0) / (users * clipping_norm)
    sizes = np.arange(1, k + 1, dtype=np.float64)
    mean_count = np.cumsum(counts[top_items]) / sizes
    return math.sqrt(2.0) * s * mean_count / (2.0 * gram_noise_std * np.sqrt(sizes))


def signal_limited(
    counts: np.ndarray, top_items: np.ndarray, *, users: int, clipping_norm: float, gram_noise_std: float, ratio: float,
) -> np.ndarray:
    """The longest prefix of ``top_items`` whose :func:`cooccurrence_signal` is at least
    ``ratio`` (all of them for ``ratio`` 0 or without noise). A longer list spreads each
    device's co-occurrence upload over more values against the same noise per value and
    raises the noise edge with ``sqrt(K)``: past this point the release carries less
    than it covers."""
    if ratio <= 0 or gram_noise_std <= 0:
        return top_items
    signal = cooccurrence_signal(counts, top_items, users=users, clipping_norm=clipping_norm, gram_noise_std=gram_noise_std)
    below = np.flatnonzero(signal < ratio)
    return top_items if below.shape[0] == 0 else top_items[: int(below[0])]


def release_top_items(counts: np.ndarray, config: RunConfig, *, users: int, z_counts: float, z_gram: float) -> np.ndarray:
    """The top items the co-occurrence release covers, from the noisy count release
    (noise multiplier ``z_counts``) of ``users`` devices: :func:`select_top_items` at
    ``ease-item-threshold`` and ``ease-max-items``, cut at the signal limit of a Gram
    release with noise multiplier ``z_gram`` (:func:`signal_limited`)."""
    e, c = config.ease, config.privacy.clipping_norm
    top = select_top_items(counts, noise_std=z_counts * c, threshold=e.item_threshold, max_items=e.max_items)
    return signal_limited(counts, top, users=users, clipping_norm=c, gram_noise_std=z_gram * c, ratio=e.signal_ratio)


def popularity_prior(counts: np.ndarray, *, noise_std: float, weight: float) -> np.ndarray:
    """``weight * asinh(count / s)``: log-like for counts well above ``s`` (``asinh(c/s) ~
    log(2c/s)``), linear around zero, so noisy (even negative) counts keep their order
    with no ties. ``s`` is the noise std, or the smallest positive count without noise."""
    positive = counts[counts > 0]
    scale = noise_std if noise_std > 0 else (float(positive.min()) if positive.shape[0] else 1.0)
    return weight * np.arcsinh(counts / scale)


def noise_edge(noise_std: float, k: int) -> float:
    """The largest eigenvalue a symmetric k x k matrix of independent N(0, noise_std^2)
    entries reaches, with room to spare: the semicircle's edge ``2 noise_std sqrt(k)``
    (Wigner) plus four times its Tracy-Widom fluctuation scale ``noise_std k^(-1/6)``
    (Tracy and Widom 1996), so pure noise stays below it with overwhelming probability."""
    return noise_std * (2.0 * math.sqrt(k) + 4.0 * k ** (-1.0 / 6.0))


def signal_directions(gram: np.ndarray, *, noise_std: float) -> int:
    """How many eigenvalues of the noisy Gram stand above :func:`noise_edge`: the number
    of directions in which the released co-occurrence carries detectable signal (all of
    them without noise)."""
    k = gram.shape[0]
    if noise_std == 0 or k == 0:
        return k
    return int(np.sum(np.linalg.eigvalsh(gram) > noise_edge(noise_std, k)))


def conditioned_gram(gram: np.ndarray, *, noise_std: float, eigen_floor: float) -> np.ndarray:
    """Raise every eigenvalue of the symmetric noisy Gram to at least
    ``eigen_floor * noise_std * sqrt(K)``: the noise matrix's spectrum spans about
    ``+- 2 noise_std sqrt(K)`` (Wigner's semicircle), so small and negative eigenvalues
    are mostly noise, and a true Gram is positive semi-definite."""
    if noise_std == 0 or eigen_floor == 0 or gram.shape[0] == 0:
        return gram
    values, vectors = np.linalg.eigh(gram)  # (K,), (K, K)
    values = np.maximum(values, eigen_floor * noise_std * math.sqrt(gram.shape[0]))
    return (vectors * values) @ vectors.T


def content_target(vectors: np.ndarray) -> np.ndarray:
    """(K, K) ridge target for EASE from public item content (rows: the top items' unit
    content vectors, :func:`fedrec.fallback.features.build_item_vectors`): the positive
    part of the cosine similarity with a zero diagonal, each column scaled to sum 1 (a
    column with no similar item stays zero). Column j predicts item j as a weighted mean
    of the content-similar items, a scale-free target whatever the data set. It reads
    no user data, so it costs no privacy."""
    target = np.maximum(np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T, 0.0)
    np.fill_diagonal(target, 0.0)
    sums = target.sum(axis=0, keepdims=True)
    return np.divide(target, sums, out=np.zeros_like(target), where=sums > 0)


def item_content(meta: ItemMetadata | None) -> np.ndarray | None:
    """(n_items, d) unit content vectors (genres, year, title TF-IDF) from the public item
    metadata alone, or None where the data set has none."""
    from fedrec.fallback.features import (  # here: fedrec.fallback imports fedrec.dpease
        FeatureConfig,
        build_item_vectors,
    )

    return None if meta is None else build_item_vectors(meta, FeatureConfig())


def catalogue_content(catalog: Catalog | None, config: RunConfig) -> np.ndarray | None:
    """The content for :func:`content_target` from the public catalogue alone (item ids,
    titles, genres, year, text: ``catalog.json`` of ``fedrec deploy split``), in the
    catalogue's item index, the devices' own. None where ``ease-content-weight`` is 0 or
    the catalogue has no item content. A server with no catalogue cannot shrink towards
    content: a clear error unless the weight is 0."""
    if config.ease.content_weight == 0:
        return None
    if catalog is None:
        raise FedrecError(
            "ease-content-weight > 0 needs the public item catalogue on the server: give the deployment "
            "catalog=PATH (the catalog.json of `fedrec deploy split`, `fedrec deploy app --catalog`) "
            "or set ease-content-weight=0"
        )
    return item_content(catalog.meta)


@functools.lru_cache(maxsize=4)
def _simulated_content(data: DataSettings, seed: int) -> np.ndarray | None:
    from fedrec.deploy.catalog import simulated_catalog  # here: fedrec.deploy imports the data loaders

    return item_content(simulated_catalog(data, seed=seed).meta)


def public_item_content(config: RunConfig) -> np.ndarray | None:
    """The catalogue content of a simulated run (:func:`catalogue_content` of the
    catalogue ``fedrec deploy split`` ships for its data set): None where the data set has
    no item metadata or ``ease-content-weight`` is 0. Only item metadata is read."""
    if config.ease.content_weight == 0:
        return None
    return _simulated_content(config.data, config.seed)


def ease_weights_towards(gram: np.ndarray, lam: float, target: np.ndarray) -> np.ndarray:
    """EASE shrunk towards ``target`` instead of 0: ``argmin ||X - XB||^2 + lam ||B -
    target||^2`` subject to ``diag(B) = 0``, in closed form from ``G = X^T X``:
    ``B = I - lam P + lam P T - P diag(mu)`` with ``P = (G + lam I)^-1`` and ``mu``
    chosen so the diagonal vanishes. ``target = 0`` gives EASE (Steck 2019, Eq. 8)."""
    k = gram.shape[0]
    precision = np.linalg.inv(np.asarray(gram, dtype=np.float64) + lam * np.eye(k))  # (K, K)
    unconstrained = np.eye(k) - lam * precision + lam * (precision @ target)
    weights = unconstrained - precision * (np.diag(unconstrained) / np.diag(precision))[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


def ease_lambda(gram: np.ndarray, *, noise_std: float, noise_scale: float, base_scale: float) -> float:
    """``noise_scale * noise_std * sqrt(K) + base_scale * trace(G) / K``: the second term
    is EASE's usual ridge in units of the mean diagonal (the data's own scale), the first
    grows with the noise's spectral norm, so the weights shrink towards zero (and the
    scores towards the prior) as the noise grows."""
    k = gram.shape[0]
    mean_diagonal = max(float(np.trace(gram)) / k, 1e-12)
    return noise_scale * noise_std * math.sqrt(k) + base_scale * mean_diagonal


def fit_release(
    *, counts: np.ndarray, top_items: np.ndarray, gram_packed: np.ndarray | None, count_noise_std: float,
    gram_noise_std: float, noise_scale: float, base_scale: float, eigen_floor: float, prior_weight: float,
    content: np.ndarray | None = None, content_weight: float = 0.0, score_decay: float = 1.0, top_first: bool = False,
) -> EaseRelease:
    """The released model from the noisy counts and (unless phase 2 was not run) the
    noisy packed Gram over ``top_items``.

    Where no eigenvalue of the noisy Gram stands above the noise edge
    (:func:`signal_directions` is 0), the co-occurrence carries nothing detectable and
    the release falls back to the DP popularity prior alone: at a small enough epsilon
    the ranking is the noisy-popularity ranking by construction.

    With public item ``content`` (n_items, d) and ``content_weight`` > 0, EASE is shrunk
    towards ``content_weight *`` :func:`content_target` instead of 0: where the noisy
    Gram is weak (lambda grows with the noise), the weights lean on the content.
    ``top_first``: devices rank every top item above every other item (:meth:`EaseRelease.score`).
    """
    prior = popularity_prior(counts, noise_std=count_noise_std, weight=prior_weight)
    empty = EaseRelease(
        top_items=np.empty(0, dtype=np.int64), weights=np.zeros((0, 0)), prior=prior, score_decay=score_decay,
        top_first=top_first,
    )
    if gram_packed is None or top_items.shape[0] == 0:
        return empty
    noisy = unpack_symmetric(gram_packed, int(top_items.shape[0]))
    if signal_directions(noisy, noise_std=gram_noise_std) == 0:
        return empty
    gram = conditioned_gram(noisy, noise_std=gram_noise_std, eigen_floor=eigen_floor)
    lam = ease_lambda(gram, noise_std=gram_noise_std, noise_scale=noise_scale, base_scale=base_scale)
    if content is None or content_weight == 0:
        return EaseRelease(
            top_items=top_items, weights=ease_weights(gram, lam), prior=prior, score_decay=score_decay,
            top_first=top_first,
        )
    target = content_weight * content_target(content[top_items])
    weights = ease_weights_towards(gram, lam, target)
    return EaseRelease(
        top_items=top_items, weights=weights, prior=prior, score_decay=score_decay, top_first=top_first,
    )
