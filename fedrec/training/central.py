"""Centralized, non-private NeuMF: all data in one place, the upper reference.

Same model classes, same negatives sampling, same split and evaluation as the
federated path; only the data sits in one place and the user table is central.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.data.split import LeaveOneOutSplit, sample_negatives
from fedrec.evaluation.scoring import evaluate_scorer
from fedrec.models import ModelConfig, SharedTower, UserEmbeddings
from fedrec.training.steps import TrainConfig, batch_loss, batches, descend, labelled_examples, make_optimizer, shuffled

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CentralResult:
    test: dict[str, float]
    best_epoch: int
    curve: list[dict[str, float]]  # validation metrics per epoch


def _epoch_examples(
    split: LeaveOneOutSplit, exclusions: list[np.ndarray], num_negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """Every user's positives and fresh negatives, (users, items, labels) in one random order."""
    users, items = split.train_pairs()
    neg_users = np.repeat(users, num_negatives)
    neg_items = np.concatenate(
        [
            sample_negatives(n_items=split.n_items, excluded=exclusions[u], count=len(split.train_of(u)) * num_negatives, rng=rng)
            for u in range(split.n_users)
        ]
    )
    all_items, labels = labelled_examples(items, neg_items)
    return shuffled(rng, np.concatenate([users, neg_users]), all_items, labels)


def train_centralized(
    split: LeaveOneOutSplit,
    *,
    model: ModelConfig,
    train: TrainConfig,
    epochs: int,
    seed: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> CentralResult:
    """Train on every user's training items; pick the epoch with the best validation NDCG@10."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    tower = SharedTower(model, generator=gen)
    users_table = UserEmbeddings(model, split.n_users, generator=gen)
    optimizer = make_optimizer(train, shared=list(tower.parameters()), users=list(users_table.parameters()))
    exclusions = [split.client(u).training_exclusions() for u in range(split.n_users)]

    @torch.no_grad()
    def score(users: np.ndarray) -> np.ndarray:
        tower.eval()
        u_gmf, u_mlp = users_table(torch.from_numpy(users))
        return tower.score_users(u_gmf, u_mlp).numpy()

    curve: list[dict[str, float]] = []
    best = (-1.0, 0, {k: v.detach().clone() for k, v in {**tower.state_dict(), **{"u." + k: v for k, v in users_table.state_dict().items()}}.items()})
    for epoch in range(1, epochs + 1):
        tower.train()
        for users, items, labels in batches(_epoch_examples(split, exclusions, train.num_negatives, rng), train.batch_size):
            u_gmf, u_mlp = users_table(users)
            descend(optimizer, batch_loss(tower(u_gmf, u_mlp, items), labels))
        val = evaluate_scorer(score, split, which="val")
        curve.append({"epoch": float(epoch), **val})
        logger.info("epoch %d: val ndcg@10 %.4f hr@10 %.4f", epoch, val["ndcg@10"], val["hr@10"])
        if on_epoch is not None:
            on_epoch(epoch, val)
        if val["ndcg@10"] > best[0]:
            state = {**tower.state_dict(), **{"u." + k: v for k, v in users_table.state_dict().items()}}
            best = (val["ndcg@10"], epoch, {k: v.detach().clone() for k, v in state.items()})
    _, best_epoch, state = best
    tower.load_state_dict({k: v for k, v in state.items() if not k.startswith("u.")})
    users_table.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("u.")})
    return CentralResult(test=evaluate_scorer(score, split, which="test"), best_epoch=best_epoch, curve=curve)
