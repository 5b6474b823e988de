"""On-device recommendations from the device's own state file.

The device scores every catalogue item with the latest shared parameters it received
and its private user vectors, and drops the items its user has already interacted
with. Below ``min_history`` positive interactions, or before the device has trained at
all, the private vectors are not worth much: it falls back to the popularity prior
shipped in the catalogue. Nothing is sent anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedrec.config import ModelFamily
from fedrec.data.ids import shown
from fedrec.deploy.catalog import load_catalog
from fedrec.deploy.device import DeviceFiles, load_state, load_user_interactions, saved_config
from fedrec.deploy.fleet import DATA_FILE
from fedrec.dpease.fit import EaseRelease
from fedrec.errors import DataError
from fedrec.models import SharedTower, load_shared


@dataclass(frozen=True)
class Recommendation:
    item_id: int | str  # the data set's own item id
    title: str
    score: float


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
    ease = config is not None and config.model.family is ModelFamily.DP_EASE
    if state is None or state.shared is None or config is None or (state.private is None and not ease):
        not_yet = "received a DP-EASE release" if ease else "trained a private model"
        scores, source, reason = catalog.popularity, "popularity", f"the device has not {not_yet} yet"
    elif history < min_history:
        scores, source, reason = catalog.popularity, "popularity", f"{history} positive interactions (< {min_history})"
    elif ease or state.private is None:  # (no private state here means DP-EASE)
        # DP-EASE: the released weights score the device's own positives, most recent weighing most
        positives = seen_data.positives(threshold)
        in_time = positives.items[np.lexsort((np.arange(len(positives)), positives.timestamps))]
        scores = EaseRelease.from_arrays(state.shared).score_items(in_time)
        source = "federated"
        reason = f"DP-EASE release received in round {state.round_}, scored from {history} positive interactions"
    else:
        tower = SharedTower(config.model.build(catalog.n_items), generator=None)
        load_shared(tower, state.shared)
        tower.eval()
        user_gmf = torch.from_numpy(state.private.user_gmf)
        user_mlp = torch.from_numpy(state.private.user_mlp)
        scores = tower.score_all(user_gmf, user_mlp).numpy()
        source = "federated"
        reason = f"shared parameters of round {state.round_}, private vectors trained {state.private.rounds_trained} rounds"
    best = top_k(scores, exclude=seen, k=k)
    items = tuple(Recommendation(shown(catalog.item_ids[i]), catalog.titles[i], float(scores[i])) for i in best)
    return Recommendations(source=source, items=items, reason=reason)
