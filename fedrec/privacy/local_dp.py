"""Record-level DP-SGD on the device, through Opacus (Abadi et al. 2016).

Protects each single interaction of the user even from the server: every local step
clips each example's gradient to ``max_grad_norm`` and adds Gaussian noise, with
Poisson-sampled batches. Embedding tables make naive per-sample gradients huge (one
dense (B, n_items, d) tensor per table), so this uses Opacus' ghost clipping
(Li et al. 2022; Bu et al. 2023), which computes per-sample gradient *norms* without
materialising per-sample gradients.

The device keeps its accountant history across rounds in its private state and
reports its own epsilon (RDP, a fast upper bound) with every update.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedrec.data.split import ClientData
from fedrec.models import Arrays, ModelConfig, SharedTower, load_shared, shared_arrays
from fedrec.privacy.accountant import device_epsilon
from fedrec.training import LocalResult, PrivateState, TrainConfig, epoch_examples, make_optimizer


@dataclass(frozen=True)
class LocalDPConfig:
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5


class _DeviceNet(nn.Module):
    """The device's whole model as one module of items -> logits (what Opacus wraps)."""

    def __init__(self, tower: SharedTower, private: PrivateState) -> None:
        super().__init__()
        self.tower = tower
        self.user_gmf = nn.Embedding.from_pretrained(torch.from_numpy(private.user_gmf.copy())[None, :], freeze=False)
        self.user_mlp = nn.Embedding.from_pretrained(torch.from_numpy(private.user_mlp.copy())[None, :], freeze=False)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        me = torch.zeros_like(items)  # the device has one user: row 0
        return self.tower(self.user_gmf(me), self.user_mlp(me), items)


def local_update_dp(
    *,
    shared: Arrays,
    private: PrivateState,
    data: ClientData,
    model: ModelConfig,
    train: TrainConfig,
    local: LocalDPConfig,
    rng: np.random.Generator,
) -> LocalResult:
    """Like :func:`fedrec.training.local_update`, with record-level DP-SGD."""
    tower = SharedTower(model, generator=None)
    load_shared(tower, shared)
    net = _DeviceNet(tower, private)
    optimizer = make_optimizer(
        [
            {"params": list(tower.parameters())},
            {"params": [net.user_gmf.weight, net.user_mlp.weight], "lr": train.lr * train.user_lr_scale},
        ],
        train,
    )
    excluded = data.training_exclusions()

    def examples() -> tuple[torch.Tensor, torch.Tensor]:
        items, labels = epoch_examples(
            positives=data.train_items, excluded=excluded, n_items=model.n_items, num_negatives=train.num_negatives, rng=rng
        )
        return torch.from_numpy(items), torch.from_numpy(labels)

    items, labels = examples()
    dataset = TensorDataset(items.clone(), labels.clone())
    seed = int(rng.integers(2**62))
    loader = DataLoader(dataset, batch_size=train.batch_size, generator=torch.Generator().manual_seed(seed))
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant.history = list(private.dp_history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "secure RNG turned off": noise uses the injected generator
        dp_net, dp_optimizer, criterion, dp_loader = engine.make_private(
            module=net, optimizer=optimizer, criterion=nn.BCEWithLogitsLoss(), data_loader=loader,
            noise_multiplier=local.noise_multiplier, max_grad_norm=local.max_grad_norm,
            grad_sample_mode="ghost", poisson_sampling=True,
            noise_generator=torch.Generator().manual_seed(seed + 1),
        )
    total, seen = 0.0, 0
    for epoch in range(train.local_epochs):
        if epoch:  # fresh negatives each epoch, same number of examples
            items, labels = examples()
            dataset.tensors[0].copy_(items)
            dataset.tensors[1].copy_(labels)
        for batch_items, batch_labels in dp_loader:
            if batch_items.shape[0] == 0:
                continue  # Poisson sampling can draw an empty batch
            loss = criterion(dp_net(batch_items), batch_labels)
            dp_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            dp_optimizer.step()
            total += float(loss.detach()) * batch_items.shape[0]
            seen += batch_items.shape[0]
    new_shared = shared_arrays(tower)
    history = tuple((float(z), float(q), int(n)) for z, q, n in engine.accountant.history)
    return LocalResult(
        update={name: new_shared[name] - shared[name] for name in shared},
        private=PrivateState(
            user_gmf=net.user_gmf.weight.detach()[0].numpy().copy(),
            user_mlp=net.user_mlp.weight.detach()[0].numpy().copy(),
            rounds_trained=private.rounds_trained + 1,
            dp_history=history,
        ),
        num_examples=seen,
        loss=total / max(seen, 1),
        local_epsilon=device_epsilon(history, delta=local.delta),
    )
