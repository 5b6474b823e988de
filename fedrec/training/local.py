"""The local update: what one device computes in one round.

Given the shared parameters it downloaded, its private user vectors and its own
interactions, a client runs E local epochs over its positives plus freshly sampled
negatives (He et al. 2017, Sec. 4.1: 4 negatives per positive) and returns the
*update* of the shared parameters and its new private state. Deterministic given the
injected generators.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from torch import nn

from fedrec.data.split import ClientData, sample_negatives
from fedrec.models import Arrays, ModelConfig, SharedTower, load_shared, shared_arrays


class Optimizer(StrEnum):
    """The local optimiser (config key ``optimizer``); its state is fresh every round."""

    ADAM = "adam"
    SGD = "sgd"


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyper-parameters (same meaning in federated and central runs)."""

    local_epochs: int = 1
    lr: float = 0.01
    batch_size: int = 64
    num_negatives: int = 4
    optimizer: Optimizer = Optimizer.ADAM
    user_lr_scale: float = 1.0  # private user vectors may learn faster than shared weights


@dataclass(frozen=True)
class PrivateState:
    """What a device keeps across rounds: its user vectors. Never uploaded."""

    user_gmf: np.ndarray  # (gmf_dim,)
    user_mlp: np.ndarray  # (mlp_dim,)
    rounds_trained: int = 0
    dp_history: tuple[tuple[float, float, int], ...] = ()  # record-level DP-SGD steps (z, q, steps)


@dataclass(frozen=True)
class LocalResult:
    update: Arrays  # new shared - downloaded shared, per tensor
    private: PrivateState
    num_examples: int
    loss: float
    local_epsilon: float = 0.0  # record-level epsilon the device has spent (0: no local DP)


def init_private(config: ModelConfig, *, rng: np.random.Generator) -> PrivateState:
    """Fresh private user vectors, N(0, init_std^2) like the central embedding table."""
    return PrivateState(
        user_gmf=(rng.standard_normal(config.gmf_dim) * config.init_std).astype(np.float32),
        user_mlp=(rng.standard_normal(config.mlp_dim) * config.init_std).astype(np.float32),
    )


def fresh_private(model: ModelConfig, *, seed: int, client: int) -> PrivateState:
    """The private vectors a device starts with: deterministic per (seed, client), so
    every engine gives a client the same start."""
    return init_private(model, rng=np.random.default_rng([seed, client, 11]))


def make_optimizer(params: list[dict[str, object]], train: TrainConfig) -> torch.optim.Optimizer:
    factories = {Optimizer.ADAM: torch.optim.Adam, Optimizer.SGD: torch.optim.SGD}
    return factories[train.optimizer](params, lr=train.lr)  # type: ignore[arg-type]


def epoch_examples(
    *, positives: np.ndarray, excluded: np.ndarray, n_items: int, num_negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of (item, label) examples in random order."""
    negatives = sample_negatives(n_items=n_items, excluded=excluded, count=positives.shape[0] * num_negatives, rng=rng)
    items = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(positives.shape[0]), np.zeros(negatives.shape[0])]).astype(np.float32)
    order = rng.permutation(items.shape[0])
    return items[order], labels[order]


def local_update(
    *,
    shared: Arrays,
    private: PrivateState,
    data: ClientData,
    model: ModelConfig,
    train: TrainConfig,
    rng: np.random.Generator,
) -> LocalResult:
    """Run ``train.local_epochs`` epochs on one user's data; return the shared update."""
    tower = SharedTower(model, generator=None)
    load_shared(tower, shared)
    user_gmf = nn.Parameter(torch.from_numpy(private.user_gmf.copy()))
    user_mlp = nn.Parameter(torch.from_numpy(private.user_mlp.copy()))
    optimizer = make_optimizer(
        [
            {"params": list(tower.parameters())},
            {"params": [user_gmf, user_mlp], "lr": train.lr * train.user_lr_scale},
        ],
        train,
    )
    excluded = data.training_exclusions()
    loss_fn = nn.BCEWithLogitsLoss()
    total, seen = 0.0, 0
    for _ in range(train.local_epochs):
        items, labels = epoch_examples(
            positives=data.train_items, excluded=excluded, n_items=model.n_items,
            num_negatives=train.num_negatives, rng=rng,
        )
        for start in range(0, items.shape[0], train.batch_size):
            batch_items = torch.from_numpy(items[start : start + train.batch_size])
            batch_labels = torch.from_numpy(labels[start : start + train.batch_size])
            b = batch_items.shape[0]
            logits = tower(user_gmf.expand(b, -1), user_mlp.expand(b, -1), batch_items)
            loss = loss_fn(logits, batch_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * b
            seen += b
    new_shared = shared_arrays(tower)
    update = {name: new_shared[name] - shared[name] for name in shared}
    return LocalResult(
        update=update,
        private=PrivateState(
            user_gmf=user_gmf.detach().numpy().copy(),
            user_mlp=user_mlp.detach().numpy().copy(),
            rounds_trained=private.rounds_trained + 1,
        ),
        num_examples=seen,
        loss=total / max(seen, 1),
    )
