"""On-device recommendations from the device's own state file.

The device scores every catalogue item with the latest release it received (and its
private user vectors, for a family that keeps them) through the run's model family
(:mod:`fedrec.families`), drops the items its user has already interacted with, and
says why each item is recommended: the history items that weigh most for it under the
release (the family's :meth:`explain`). Below ``min_history`` positive interactions, or
before the device has what its family scores with, it falls back to the popularity
prior shipped in the catalogue. Nothing is sent anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedrec.data.ids import shown
from fedrec.deploy.catalog import load_catalog
from fedrec.deploy.device import DeviceFiles, load_state, load_user_interactions, saved_config
from fedrec.deploy.fleet import DATA_FILE
from fedrec.errors import DataError
from fedrec.families import family_of


@dataclass(frozen=True)
class Recommendation:
    item_id: int | str  # the data set's own item id
    title: str
    score: float
    because: tuple[str, ...] = ()  # the titles (else ids) of the history items that weigh most for it
    weights: tuple[float, ...] = ()  # how much each weighs, in ``measure``
    measure: str = ""

    def reason(self) -> str:
        """One line: why this item, from the device's own history and the release."""
        if not self.because:
            return "popular" if not self.measure else f"popular (no history item adds to it; {self.measure})"
        parts = ", ".join(f"{title} ({weight:.3g})" for title, weight in zip(self.because, self.weights, strict=True))
        return f"because of {parts} [{self.measure}]"


@dataclass(frozen=True)
class Recommendations:
    source: str  # "federated" or "popularity"
    items: tuple[Recommendation, ...]
    reason: str  # why this source was used


def top_k(scores: np.ndarray, *, exclude: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores outside ``exclude``, best first (ties: lower index)."""
    masked = scores.astype(np.float64).copy()
    masked[exclude] = -np.inf
    allowed = int(np.isfinite(masked).sum())
    order = np.lexsort((np.arange(masked.shape[0]), -masked))
    return order[: min(k, allowed)]


@torch.no_grad()
def recommend(device_dir: Path, *, k: int = 10, min_history: int = 3, data_file: str = DATA_FILE) -> Recommendations:
    """Top-``k`` unseen items for the user of ``device_dir``."""
    if k <= 0:
        raise DataError("-k must be > 0")
    files = DeviceFiles.beside(Path(device_dir) / data_file)
    catalog = load_catalog(files.catalog)
    state = load_state(files) if files.state.is_file() else None
    config = saved_config(state) if state is not None and state.run_config is not None else None
    threshold = config.data.rating_threshold if config is not None else 0.0
    seen_data = load_user_interactions(files, catalog)
    seen = np.unique(seen_data.items)
    history = int(np.unique(seen_data.positives(threshold).items).shape[0])
    family = family_of(config) if config is not None else None
    # the device's own positives in time order: what a family scores and explains with
    positives = seen_data.positives(threshold)
    in_time = positives.items[np.lexsort((np.arange(len(positives)), positives.timestamps))]
    if (state is None or state.shared is None or config is None or family is None
            or (state.private is None and family.private_state)):
        not_yet = "trained a private model" if family is None or family.private_state else f"received a {family.label} release"
        scores, source, reason = catalog.popularity, "popularity", f"the device has not {not_yet} yet"
    elif history < min_history:
        scores, source, reason = catalog.popularity, "popularity", f"{history} positive interactions (< {min_history})"
    else:
        scores = family.scores(state.shared, in_time, config=config, private=state.private)
        source = "federated"
        reason = family.source(round_=state.round_, private=state.private, history=history)
    best = top_k(scores, exclude=seen, k=k)
    explained = (family.explain(state.shared, in_time, best, config=config, private=state.private)
                 if source == "federated" and family is not None and state is not None and state.shared is not None
                 and config is not None else [])

    def title(index: int) -> str:
        return catalog.titles[index] or str(shown(catalog.item_ids[index]))

    items = tuple(
        Recommendation(shown(catalog.item_ids[i]), catalog.titles[i], float(scores[i]))
        if not explained else
        Recommendation(shown(catalog.item_ids[i]), catalog.titles[i], float(scores[i]),
                       because=tuple(title(j) for j in why.because), weights=why.weights, measure=why.measure)
        for i, why in zip(best, explained or [None] * len(best), strict=True)
    )
    return Recommendations(source=source, items=items, reason=reason)
