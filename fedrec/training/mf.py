"""Centralized dot-product matrix factorisation, the tuned neural reference.

Rendle et al. (2020), "Neural Collaborative Filtering vs. Matrix Factorization
Revisited", Sec. 4: a dot product ``<p_u, q_i> + b_u + b_i`` trained with the
logistic loss on every positive and ``num_negatives`` negatives per positive,
resampled every epoch, with L2 on the embeddings of each example, beats NeuMF on
the NCF protocol. In NCF terms this is GMF (He et al. 2017, Sec. 3.2) with its output
weights fixed to one, so it is a neural model of the NCF family.

The training is vectorised: all examples of an epoch are built at once (negatives
drawn in bulk from a passed-in ``torch.Generator``, never one of the user's
evaluation candidates: :meth:`fedrec.data.split.ClientData.training_exclusions`),
then shuffled into large batches. The number of epochs is chosen on validation users
(early stopping on validation NDCG@10); test users are scored once, at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedrec.data.split import LeaveOneOutSplit
from fedrec.evaluation.scoring import evaluate_scorer
from fedrec.training.steps import ADAM_BETAS, ADAM_EPS, minibatches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MFConfig:
    """Hyper-parameters of the central MF reference."""

    dim: int = 128
    num_negatives: int = 8
    l2: float = 0.005  # per example, on the user and item vectors it touches (Rendle et al. 2020)
    lr: float = 0.02  # Adam
    batch_users: int = 128  # users per step (all items scored for each)
    max_epochs: int = 60
    eval_every: int = 2  # epochs between validation evaluations
    patience: int = 4  # evaluations without a better validation NDCG@10 before stopping
    init_std: float = 0.1


@dataclass(frozen=True)
class MFResult:
    test: dict[str, float]
    best_epoch: int
    curve: list[dict[str, float]]  # validation metrics per evaluation


class DotProductMF(nn.Module):
    """``score(u, i) = <p_u, q_i> + b_u + b_i``; the user bias does not change a ranking
    but lets the logistic loss fit each user's share of positives."""

    def __init__(self, n_users: int, n_items: int, dim: int, *, init_std: float, generator: torch.Generator) -> None:
        super().__init__()
        self.users = nn.Parameter(torch.randn(n_users, dim, generator=generator) * init_std)
        self.items = nn.Parameter(torch.randn(n_items, dim, generator=generator) * init_std)
        self.user_bias = nn.Parameter(torch.zeros(n_users))
        self.item_bias = nn.Parameter(torch.zeros(n_items))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of (user, item) pairs: ``(B,), (B,) -> (B,)``."""
        # index_select: its backward is a plain index_add (advanced indexing's is far slower on CPU)
        p, q = self.users.index_select(0, users), self.items.index_select(0, items)  # (B, d)
        return (p * q).sum(-1) + self.user_bias.index_select(0, users) + self.item_bias.index_select(0, items)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Logits of every item: ``(U,) -> (U, n_items)``."""
        return self.users[users] @ self.items.T + self.user_bias[users, None] + self.item_bias[None, :]


def exclusion_mask(split: LeaveOneOutSplit) -> torch.Tensor:
    """(n_users, n_items) bool: True where an item may never be a training negative."""
    mask = torch.zeros(split.n_users, split.n_items, dtype=torch.bool)
    for u in range(split.n_users):
        mask[u, torch.from_numpy(split.client(u).training_exclusions())] = True
    return mask


def negative_counts(users: torch.Tensor, excluded: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Draw one uniform negative per entry of ``users`` among the items not excluded for
    that user; return the draws as counts.

    ``users`` (N,), ``excluded`` (n_users, n_items) bool -> (n_users, n_items) float,
    how often each item was drawn for each user. Summing a loss weighted by these counts
    equals summing it over the drawn (user, negative) pairs. Each user's allowed items
    are packed to the front of a row, so one draw is a uniform index below the row's
    length: no rejection loop.
    """
    n_users, n_items = excluded.shape
    allowed = (~excluded).sum(1)  # (U,)
    if bool((allowed == 0).any()):
        raise ValueError("a user has no item left to draw as a negative; drop such users from the split first")
    # stable sort puts each row's allowed items first, in item order
    packed = torch.sort(excluded.to(torch.uint8), dim=1, stable=True).indices  # (U, I)
    slot = (torch.rand(users.shape, generator=generator, dtype=torch.float64) * allowed[users]).long()
    items = packed.reshape(-1)[users * n_items + slot]
    return torch.bincount(users * n_items + items, minlength=n_users * n_items).reshape(n_users, n_items).float()


class _Adam:
    """Adam (Kingma & Ba 2015, Algorithm 1) on a few dense tensors. torch.optim would do
    the same but imports torch._dynamo on its first step, seconds of a short run."""

    def __init__(self, params: list[torch.Tensor], *, lr: float, betas: tuple[float, float] = ADAM_BETAS, eps: float = ADAM_EPS):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        scale = self.lr * (1 - b2**self.t) ** 0.5 / (1 - b1**self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, v.sqrt().add_(self.eps), value=-scale)
            p.grad = None


def train_mf(
    split: LeaveOneOutSplit,
    *,
    config: MFConfig = MFConfig(),
    generator: torch.Generator,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    excluded: torch.Tensor | None = None,
) -> MFResult:
    """Train on every user's training items; keep the epoch with the best validation NDCG@10.

    Each step takes a batch of users and scores all items for them with one matrix
    product; the loss weights each (user, item) cell by how often it occurs among the
    epoch's examples (once per positive, by its draw count per negative), which is the
    per-example loss of Rendle et al. summed, at the cost of dense BLAS kernels.
    ``excluded`` (n_users, n_items) bool: items never drawn as negatives (default:
    :func:`exclusion_mask`, the training items and every evaluation candidate).
    """
    model = DotProductMF(split.n_users, split.n_items, config.dim, init_std=config.init_std, generator=generator)
    optimizer = _Adam(list(model.parameters()), lr=config.lr)
    excluded = exclusion_mask(split) if excluded is None else excluded
    pos_users_np, pos_items_np = split.train_pairs()
    pos_users = torch.from_numpy(pos_users_np)
    positives = torch.zeros(split.n_users, split.n_items)  # (U, I)
    positives[pos_users, torch.from_numpy(pos_items_np)] = 1.0
    neg_users = pos_users.repeat(config.num_negatives)
    n_examples = pos_users.shape[0] * (1 + config.num_negatives)

    @torch.no_grad()
    def score(users: np.ndarray) -> np.ndarray:
        return model.score_all(torch.from_numpy(users)).numpy()

    curve: list[dict[str, float]] = []
    best_ndcg, best_epoch, best_state, stale = -1.0, 0, {k: v.detach().clone() for k, v in model.state_dict().items()}, 0
    for epoch in range(1, config.max_epochs + 1):
        negatives = negative_counts(neg_users, excluded, generator=generator)  # (U, I)
        weights = positives + negatives  # examples per cell
        order = torch.randperm(split.n_users, generator=generator)
        for batch in minibatches(split.n_users, config.batch_users):
            users = order[batch]
            logits = model.score_all(users)  # (B, I)
            w = weights[users]
            loss = nn.functional.binary_cross_entropy_with_logits(logits, positives[users], weight=w, reduction="sum")
            # L2 once per example on the vectors it touches (Rendle et al. 2020, Eq. 3)
            per_user = w.sum(1)  # (B,)
            per_item = w.sum(0)  # (I,)
            p = model.users.index_select(0, users)
            loss = loss + config.l2 * ((per_user[:, None] * p.square()).sum() + (per_item[:, None] * model.items.square()).sum())
            (loss * (split.n_users / (users.shape[0] * n_examples))).backward()
            optimizer.step()
        if epoch % config.eval_every and epoch != config.max_epochs:
            continue
        val = evaluate_scorer(score, split, which="val")
        curve.append({"epoch": float(epoch), **val})
        logger.info("mf epoch %d: val ndcg@10 %.4f hr@10 %.4f", epoch, val["ndcg@10"], val["hr@10"])
        if on_eval is not None:
            on_eval(epoch, val)
        if val["ndcg@10"] > best_ndcg:
            best_ndcg, best_epoch, stale = val["ndcg@10"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    return MFResult(test=evaluate_scorer(score, split, which="test"), best_epoch=best_epoch, curve=curve)
