"""The steps every local update shares: one function per concern.

Each way fedrec fits parameters to interactions (a device's update,
:mod:`fedrec.training.local`; its vectorised twin, :mod:`fedrec.training.batched`;
record-level DP-SGD, :mod:`fedrec.privacy.local_dp`; cold-start fold-in,
:mod:`fedrec.fallback.ondevice`; centralized NeuMF, :mod:`fedrec.training.central`) is
put together from these, so that a change to one concern is made once:

* **examples**: positives plus freshly drawn negatives (He et al. 2017, Sec. 4.1), labelled
  1 and 0 (:func:`with_negatives`, :func:`labelled_examples`), shuffled by one permutation
  (:func:`shuffled`, :func:`epoch_examples`), one epoch after another (:func:`device_epochs`);
* **batches**: an epoch cut into consecutive mini-batches that never straddle epochs
  (:func:`minibatches`, :func:`batches`);
* **the loss**: binary cross-entropy on logits, the mean over a mini-batch
  (:func:`batch_loss`; :func:`client_batch_losses` for many clients' stacked batches;
  :func:`example_loss` for Opacus, which needs it as a module);
* **the optimizer**: one rule for learning rates (private user vectors at
  ``user_lr_scale`` times the shared rate, :func:`learning_rate`), Adam's constants, one
  optimizer (:func:`make_optimizer`) and one step (:func:`descend`).

The central MF reference (:mod:`fedrec.training.mf`) trains a different model on dense
per-user rows with draw counts and its own Adam; it shares only :func:`minibatches` and
Adam's constants. May import ``fedrec.data`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedrec.data.split import ClientData, sample_negatives
from fedrec.training.spec import Optimizer, TrainConfig

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, written out so every Adam here uses the same
ADAM_EPS = 1e-8


# --- examples -------------------------------------------------------------------------


def labelled_examples(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(items, labels)``: the positives then the negatives, labelled 1.0 and 0.0 (float32)."""
    items = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(positives.shape[0]), np.zeros(negatives.shape[0])]).astype(np.float32)
    return items, labels


def with_negatives(
    *, positives: np.ndarray, excluded: np.ndarray, n_items: int, num_negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``num_negatives`` fresh negatives per positive (never an ``excluded`` item), labelled;
    unshuffled: the positives first."""
    negatives = sample_negatives(n_items=n_items, excluded=excluded, count=positives.shape[0] * num_negatives, rng=rng)
    return labelled_examples(positives, negatives)


def shuffled(rng: np.random.Generator, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The arrays (of equal length) reordered by one random permutation drawn from ``rng``."""
    order = rng.permutation(arrays[0].shape[0])
    return tuple(a[order] for a in arrays)


def epoch_examples(
    *, positives: np.ndarray, excluded: np.ndarray, n_items: int, num_negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of (item, label) examples in random order: the negatives are drawn, then the
    permutation, both from ``rng``."""
    items, labels = with_negatives(
        positives=positives, excluded=excluded, n_items=n_items, num_negatives=num_negatives, rng=rng
    )
    return shuffled(rng, items, labels)  # type: ignore[return-value]


def device_epochs(
    *, data: ClientData, n_items: int, train: TrainConfig, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A device's ``train.local_epochs`` epochs of examples, each drawn from ``rng`` only when
    the caller asks for it (so draws the caller makes in between keep their place in the stream)."""
    excluded = data.training_exclusions()
    for _ in range(train.local_epochs):
        yield epoch_examples(
            positives=data.train_items, excluded=excluded, n_items=n_items, num_negatives=train.num_negatives, rng=rng
        )


# --- batches --------------------------------------------------------------------------


def minibatches(n: int, batch_size: int, *, offset: int = 0) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``[offset, offset + n)``; the
    last may be short."""
    for start in range(offset, offset + n, batch_size):
        yield slice(start, min(start + batch_size, offset + n))


def batches(arrays: Sequence[np.ndarray], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """One epoch's mini-batches of ``arrays`` (equal length, already shuffled) as tensors."""
    for part in minibatches(arrays[0].shape[0], batch_size):
        yield tuple(torch.from_numpy(a[part]) for a in arrays)


# --- the loss -------------------------------------------------------------------------


def batch_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits, the mean over the mini-batch: ``(B,), (B,) -> ()``."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def client_batch_losses(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`batch_loss` of many clients' padded mini-batches at once.

    ``logits``, ``labels``, ``mask`` are (K, B), ``mask`` 1.0 on a client's real examples
    and 0.0 on padding. Returns each client's mean loss over its own examples (K,) and its
    mini-batch size (K,).
    """
    per_example = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    count = mask.sum(dim=1)
    return (per_example * mask).sum(dim=1) / count, count


def example_loss() -> nn.Module:
    """:func:`batch_loss` as a module, for wrappers that set its reduction themselves (Opacus)."""
    return nn.BCEWithLogitsLoss()


# --- the optimizer --------------------------------------------------------------------


def learning_rate(train: TrainConfig, *, user: bool) -> float:
    """The learning rate of shared weights, or of private user vectors (``user``)."""
    return train.lr * (train.user_lr_scale if user else 1.0)


OPTIMIZERS: dict[Optimizer, Callable[..., torch.optim.Optimizer]] = {
    Optimizer.ADAM: lambda groups, lr: torch.optim.Adam(groups, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS),
    Optimizer.SGD: lambda groups, lr: torch.optim.SGD(groups, lr=lr),
}


def make_optimizer(
    train: TrainConfig, *, shared: Sequence[torch.Tensor] = (), users: Sequence[torch.Tensor] = ()
) -> torch.optim.Optimizer:
    """A fresh ``train.optimizer`` over ``shared`` weights and private user vectors ``users``,
    each at its :func:`learning_rate` (an empty group is left out)."""
    groups: list[dict[str, object]] = []
    if shared:
        groups.append({"params": list(shared)})
    if users:
        groups.append({"params": list(users), "lr": learning_rate(train, user=True)})
    return OPTIMIZERS[train.optimizer](groups, learning_rate(train, user=False))


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimizer step on ``loss``: fresh gradients, backward, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
