"""Leave-one-out evaluation of a user (on its device) or of many users (centrally).

Both paths score every item for the user, then rank the held-out item (a) among the
99 sampled negatives and (b) among every item the user has not trained on, using the
same functions in :mod:`fedrec.evaluation.metrics`; a federated average of per-client metrics
therefore equals the direct computation over all users.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fedrec.data.split import ClientData, LeaveOneOutSplit
from fedrec.evaluation.metrics import full_rank, mean_metrics, rank_of, user_metrics
from fedrec.models import Arrays, ModelConfig, SharedTower, load_shared

HELD_OUT = ("test", "val")


def _targets(data: ClientData, which: str) -> tuple[int, int, np.ndarray]:
    """(held-out item, the other held-out item, its sampled negatives)."""
    if which == "test":
        return data.test_item, data.val_item, data.test_negatives
    if which == "val":
        return data.val_item, data.test_item, data.val_negatives
    raise ValueError(f"held-out split must be one of {HELD_OUT}, got {which!r}")


def metrics_from_scores(scores: np.ndarray, data: list[ClientData], which: str) -> dict[str, np.ndarray]:
    """Per-user metrics from a (U, n_items) score matrix."""
    rows = np.arange(len(data))
    targets = np.array([_targets(d, which)[0] for d in data])
    negatives = np.stack([_targets(d, which)[2] for d in data])
    sampled = rank_of(scores[rows, targets], np.take_along_axis(scores, negatives, axis=1))
    exclude = [np.append(d.train_items, _targets(d, which)[1]) for d in data]
    full = full_rank(scores, target=targets, exclude=exclude)
    return user_metrics(sampled, full)


@torch.no_grad()
def evaluate_client(
    *, shared: Arrays, user_gmf: np.ndarray, user_mlp: np.ndarray, data: ClientData, model: ModelConfig, which: str = "test"
) -> dict[str, float]:
    """One device's metrics, computed with its private vectors on the device."""
    tower = SharedTower(model, generator=None)
    load_shared(tower, shared)
    tower.eval()
    scores = tower.score_all(torch.from_numpy(user_gmf), torch.from_numpy(user_mlp)).numpy()[None, :]
    return mean_metrics(metrics_from_scores(scores, [data], which))


def per_user_scores(
    score_users: Callable[[np.ndarray], np.ndarray], split: LeaveOneOutSplit, *, which: str = "test", chunk: int = 256
) -> dict[str, np.ndarray]:
    """Per-user metric arrays (split order) for any scorer ``users -> (U, n_items)``."""
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, split.n_users, chunk):
        users = np.arange(start, min(start + chunk, split.n_users))
        parts.append(metrics_from_scores(score_users(users), [split.client(int(u)) for u in users], which))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def evaluate_scorer(
    score_users: Callable[[np.ndarray], np.ndarray], split: LeaveOneOutSplit, *, which: str = "test", chunk: int = 256
) -> dict[str, float]:
    """Mean metrics over every user of ``split`` for any scorer ``users -> (U, n_items)``.

    Used for the central model and for the baselines, with the very same protocol.
    """
    per_user = per_user_scores(score_users, split, which=which, chunk=chunk)
    return {name: float(np.mean(values)) for name, values in per_user.items()}


def paired_difference(model: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per metric, the mean over users of ``model - reference`` and its standard error
    (the same users score both, so the difference is paired: far less noisy than two
    separate means)."""
    out: dict[str, dict[str, float]] = {}
    for name, values in model.items():
        diff = np.asarray(values, dtype=np.float64) - np.asarray(reference[name], dtype=np.float64)
        se = float(np.std(diff, ddof=1) / np.sqrt(diff.shape[0])) if diff.shape[0] > 1 else float("nan")
        out[name] = {"difference": float(np.mean(diff)), "standard_error": se}
    return out
