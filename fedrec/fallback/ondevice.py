"""The federated model seen from the fallback: scoring with a private embedding, fitting
a new user's embedding on their few items, and initialising it from the content profile.

A cold user who joins federated training starts from a private embedding. By default it
is random (N(0, init_std^2)); :func:`profile_init` instead places it at the mean of the
shared item embeddings of the items the content recommender ranks highest for the
user's profile, so the first rounds start near items the user is likely to like.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedrec.fallback.profile import Query
from fedrec.fallback.recommender import Recommendation, top_k
from fedrec.models import Arrays, ModelConfig, ModelKind, SharedTower, load_shared
from fedrec.training.local import PrivateState
from fedrec.training.steps import TrainConfig, batch_loss, descend, make_optimizer, with_negatives


def load_tower(shared: Arrays, model: ModelConfig) -> SharedTower:
    tower = SharedTower(model, generator=None)
    load_shared(tower, shared)
    tower.eval()
    return tower


class FederatedRecommender:
    """NeuMF scores for one user with its private vectors (what runs on the device)."""

    def __init__(self, *, tower: SharedTower, private: PrivateState) -> None:
        self.tower = tower
        self.private = private

    @torch.no_grad()
    def scores(self, query: Query) -> np.ndarray:
        logits = self.tower.score_all(torch.from_numpy(self.private.user_gmf), torch.from_numpy(self.private.user_mlp))
        return logits.numpy().astype(np.float64)

    def recommend(self, query: Query, *, k: int) -> list[Recommendation]:
        scores = self.scores(query)
        return [
            Recommendation(int(i), float(scores[i]), "predicted by your on-device model")
            for i in top_k(scores, k=k, exclude=query.given)
        ]


def profile_init(
    *, shared: Arrays, model: ModelConfig, content_scores: np.ndarray, given: np.ndarray, top: int = 20,
    norms: tuple[float, float] | None = None,
) -> PrivateState:
    """Private vectors at the mean shared item embedding of the profile's best content matches.

    The items used are ``given`` (what the user liked) plus the ``top`` items by
    ``content_scores``; with neither signal, every item counts (the catalogue mean).
    ``norms`` (GMF, MLP), e.g. the median norms of trained users' vectors, rescale the
    result: a mean of many item vectors is much shorter than a trained user vector,
    and a near-zero user vector leaves the ranking to the item side alone.
    """
    ranked = top_k(content_scores, k=top, exclude=given) if np.any(content_scores) else np.empty(0, np.int64)
    anchor = np.unique(np.concatenate([given, ranked])).astype(np.int64)
    if anchor.shape[0] == 0:
        anchor = np.arange(model.n_items)
    gmf = shared["item_gmf.weight"][anchor].mean(axis=0)  # (g,)
    mlp = shared["item_mlp.weight"][anchor].mean(axis=0) if model.kind == ModelKind.NEUMF else np.zeros(0, np.float32)
    if norms is not None:
        gmf = _with_norm(gmf, norms[0])
        mlp = _with_norm(mlp, norms[1])
    return PrivateState(user_gmf=gmf.astype(np.float32), user_mlp=mlp.astype(np.float32))


def _with_norm(vector: np.ndarray, norm: float) -> np.ndarray:
    length = float(np.linalg.norm(vector))
    return vector * (norm / length) if length > 0 else vector


def fold_in(
    *, shared: Arrays, model: ModelConfig, private: PrivateState, items: np.ndarray, train: TrainConfig,
    epochs: int, rng: np.random.Generator,
) -> PrivateState:
    """Fit only the private vectors on ``items`` (shared parameters frozen).

    What a new device does before its first round: it cannot change the shared model
    yet, but it can place its own user in it. Zero items or zero epochs return ``private``.
    """
    if items.shape[0] == 0 or epochs == 0:
        return private
    tower = load_tower(shared, model)
    for p in tower.parameters():
        p.requires_grad_(False)
    user_gmf = nn.Parameter(torch.from_numpy(private.user_gmf.copy()))
    user_mlp = nn.Parameter(torch.from_numpy(private.user_mlp.copy()))
    optimizer = make_optimizer(train, users=[user_gmf, user_mlp])
    excluded = np.unique(items)
    for _ in range(epochs):  # one full batch per epoch: a new user has few items
        examples, labels = with_negatives(
            positives=items, excluded=excluded, n_items=model.n_items, num_negatives=train.num_negatives, rng=rng
        )
        b = examples.shape[0]
        logits = tower(user_gmf.expand(b, -1), user_mlp.expand(b, -1), torch.from_numpy(examples))
        descend(optimizer, batch_loss(logits, torch.from_numpy(labels)))
    return PrivateState(
        user_gmf=user_gmf.detach().numpy().copy(), user_mlp=user_mlp.detach().numpy().copy(),
        rounds_trained=private.rounds_trained,
    )
