"""The local update: what one device computes in one round.

Given the shared parameters it downloaded, its private user vectors and its own
interactions, a client runs E local epochs over its positives plus freshly sampled
negatives (He et al. 2017, Sec. 4.1: 4 negatives per positive) and returns the
*update* of the shared parameters and its new private state. Deterministic given the
injected generators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedrec.data.split import ClientData
from fedrec.models import Arrays, ModelConfig, SharedTower, load_shared, shared_arrays
from fedrec.training.steps import (
    Optimizer,
    TrainConfig,
    batch_loss,
    batches,
    descend,
    device_epochs,
    epoch_examples,
    make_optimizer,
)

# TrainConfig and epoch_examples are defined in steps and re-exported here, where callers found them first

__all__ = [
    "LocalResult", "Optimizer", "PrivateState", "TrainConfig", "epoch_examples", "fresh_private", "init_private", "local_update",
]


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
    optimizer = make_optimizer(train, shared=list(tower.parameters()), users=[user_gmf, user_mlp])
    total, seen = 0.0, 0
    for items, labels in device_epochs(data=data, n_items=model.n_items, train=train, rng=rng):
        for batch_items, batch_labels in batches((items, labels), train.batch_size):
            b = batch_items.shape[0]
            loss = batch_loss(tower(user_gmf.expand(b, -1), user_mlp.expand(b, -1), batch_items), batch_labels)
            descend(optimizer, loss)
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
