"""Many devices' local updates as one vectorised computation.

The per-device path (:func:`fedrec.training.local.local_update`) builds a model per client and
loops over its mini-batches. Here K clients train at once: every shared tensor is
stacked along a leading client axis (``(K, *shape)``), each client's user vectors are
rows of one ``(K, d)`` tensor, and each step runs one batched forward/backward over the
K clients' current mini-batches (padded to the batch size and masked). The clients'
parameters never mix: the loss is a sum of per-client losses, so each client's gradient
is exactly its own.

It is the same computation as :func:`local_update`, client by client: the same
examples in the same order (drawn from the same per-client generator by
:func:`fedrec.training.steps.device_epochs`), the same mean loss per mini-batch, learning
rates and Adam constants (:mod:`fedrec.training.steps`) and the same Adam/SGD arithmetic
with per-client step counts, so results agree to float rounding (a test checks it). Clients are sorted by how many steps they take, so the clients
still training at step t are a prefix of the stack and finished ones cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.optim.adam import adam

from fedrec.data.split import ClientData
from fedrec.models import Arrays, ModelConfig, shared_spec
from fedrec.models.neumf import stacked_logits
from fedrec.training.steps import (
    ADAM_BETAS,
    ADAM_EPS,
    Optimizer,
    TrainConfig,
    client_batch_losses,
    device_epochs,
    learning_rate,
    minibatches,
)


@dataclass(frozen=True)
class Schedule:
    """Every client's mini-batches, padded into dense arrays, over the client's own items.

    A client's local training only ever touches the items in its mini-batches, and its
    optimizer state is fresh each round, so every other embedding row keeps a zero
    gradient, zero Adam moments and hence exactly a zero update. Each client therefore
    trains a compact table of just its items: ``items[k, s]`` is the item in client k's
    slot s (``n_used[k]`` slots used, the rest padding), and ``slots`` address them.
    ``slots``/``labels``/``mask`` are (K, T, B): client k's t-th mini-batch, padded with
    mask 0 beyond its size; ``steps[k]`` is how many mini-batches client k has.
    """

    items: np.ndarray  # (K, S) int64 item of each slot (padding slots hold item 0)
    n_used: np.ndarray  # (K,) slots in use
    slots: np.ndarray  # (K, T, B) int64
    labels: np.ndarray  # (K, T, B) float32
    mask: np.ndarray  # (K, T, B) float32
    steps: np.ndarray  # (K,) int64
    examples: np.ndarray  # (K,) int64, examples seen over all epochs

    @classmethod
    def build(
        cls, *, data: list[ClientData], model: ModelConfig, train: TrainConfig, rngs: list[np.random.Generator]
    ) -> Schedule:
        per_client: list[tuple[np.ndarray, np.ndarray]] = []
        for client, rng in zip(data, rngs):
            epochs = list(device_epochs(data=client, n_items=model.n_items, train=train, rng=rng))
            per_client.append((np.concatenate([e[0] for e in epochs]), np.concatenate([e[1] for e in epochs])))
        b, epochs_ = train.batch_size, train.local_epochs
        # An epoch's last mini-batch may be short: batches never straddle epochs.
        epoch_size = [len(items) // epochs_ for items, _ in per_client]
        steps = np.array([epochs_ * math.ceil(n / b) for n in epoch_size], dtype=np.int64)
        uniques = [np.unique(items, return_inverse=True) for items, _ in per_client]
        k, t = len(data), int(steps.max(initial=0))
        n_used = np.array([u.shape[0] for u, _ in uniques], dtype=np.int64)
        items = np.zeros((k, int(n_used.max(initial=0))), dtype=np.int64)
        slots = np.zeros((k, t, b), dtype=np.int64)
        labels = np.zeros((k, t, b), dtype=np.float32)
        mask = np.zeros((k, t, b), dtype=np.float32)
        for c, ((_, client_labels), (unique, inverse), n) in enumerate(zip(per_client, uniques, epoch_size)):
            items[c, : unique.shape[0]] = unique
            step = 0
            for offset in range(0, n * epochs_, n) if n else ():
                for part in minibatches(n, b, offset=offset):
                    size = part.stop - part.start
                    slots[c, step, :size] = inverse[part]
                    labels[c, step, :size] = client_labels[part]
                    mask[c, step, :size] = 1.0
                    step += 1
        examples = np.array([len(i) for i, _ in per_client], dtype=np.int64)
        return cls(items=items, n_used=n_used, slots=slots, labels=labels, mask=mask, steps=steps, examples=examples)


EMBEDDINGS = ("item_gmf.weight", "item_mlp.weight")  # shared tensors with one row per item


class StackedNeuMF:
    """K independent copies of the shared tower plus K user vectors, as stacked tensors.

    Parameter names are those of :class:`fedrec.models.SharedTower`. Dense tensors are
    (K, *shape); the item embeddings are rows ``items`` of the shared tables: the
    clients' compact tables of their own items (see :class:`Schedule`), one after the
    other.
    """

    def __init__(
        self, model: ModelConfig, shared: Arrays, items: np.ndarray, user_gmf: torch.Tensor, user_mlp: torch.Tensor
    ) -> None:
        self.model = model
        self.items = items
        k = user_gmf.shape[0]
        spec = shared_spec(model)
        self.params = {}
        for name, shape in spec.items():
            value = torch.from_numpy(np.asarray(shared[name], dtype=np.float32))
            self.params[name] = value[torch.from_numpy(items)] if name in EMBEDDINGS else value.expand(k, *shape).clone()
        self.user = {"user_gmf": user_gmf.clone(), "user_mlp": user_mlp.clone()}
        self.linear_names = [name[: -len(".weight")] for name in spec if name.startswith("mlp.") and name.endswith(".weight")]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.params, **self.user}

    def logits(self, p: dict[str, torch.Tensor], rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """``p``: the active clients' dense tensors (a, ...); ``rows``: each item
        embedding's rows for the mini-batch, (a, B, d) -> logits (a, B). The model's own
        stacked forward (:func:`fedrec.models.neumf.stacked_logits`)."""
        return stacked_logits(self.model, p, rows, linear_names=self.linear_names)

    def updates(self, shared: Arrays) -> dict[str, torch.Tensor]:
        """New - downloaded parameters, compact like the parameters themselves."""
        out = {}
        for name, value in self.params.items():
            base = torch.from_numpy(np.asarray(shared[name], dtype=np.float32))
            out[name] = value - (base[torch.from_numpy(self.items)] if name in EMBEDDINGS else base)
        return out


def _adam_pieces(
    names: list[str], *, a: int, rows: int, params: dict[str, torch.Tensor], leaves: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor | None], moments: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Parameters, gradients and moments of the active clients: the first ``a`` of every
    stacked tensor, the first ``rows`` rows of the flat item tables. Contiguous prefixes
    only: torch's fused Adam kernel ignores strides."""
    out: tuple[list[torch.Tensor], ...] = ([], [], [], [])
    for name in names:
        grad = grads[name]
        assert grad is not None
        m, v = moments[name]
        n = a if name in leaves else rows
        for full, part in zip(out, (leaves[name] if name in leaves else params[name][:n], grad, m[:n], v[:n])):
            full.append(part)
    return out  # type: ignore[return-value]


def _adam_step(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
               exp_avg_sq: list[torch.Tensor], *, step: int, lr: float) -> None:
    """torch.optim.Adam's update (no weight decay) of contiguous tensors at ``step``, in
    place: torch's own fused kernel, one pass over memory instead of eight."""
    counts = torch.full((len(params),), float(step - 1)).unbind(0)  # the kernel adds the step itself
    adam(
        params, grads, exp_avg, exp_avg_sq, [], list(counts),
        fused=True, amsgrad=False, beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], lr=lr, weight_decay=0.0,
        eps=ADAM_EPS, maximize=False,
    )


@dataclass(frozen=True)
class BatchedResult:
    """What K clients computed, row k = client k.

    ``update`` is new - downloaded shared parameters, (K, *shape) per tensor, except
    that the item embeddings are compact, (K, S, d), over the rows ``items[k]`` (the
    first ``n_used[k]`` of them; every other row of a client's update is exactly 0,
    padding slots included). :meth:`client_update` gives one client's dense upload.
    """

    update: dict[str, torch.Tensor]
    items: np.ndarray  # (K, S)
    n_used: np.ndarray  # (K,)
    user_gmf: torch.Tensor  # (K, g)
    user_mlp: torch.Tensor  # (K, m)
    loss: np.ndarray  # (K,) mean training loss per example
    examples: np.ndarray  # (K,)

    def client_update(self, k: int, spec: dict[str, tuple[int, ...]]) -> Arrays:
        """Client k's update as the dense float32 arrays a device uploads."""
        return {name: self.client_tensor(k, name, shape) for name, shape in spec.items()}

    def client_tensor(self, k: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """One tensor of client k's dense upload (a new array for the item embeddings, a
        view of the stacked update for the others)."""
        value = self.update[name][k].numpy()
        if name not in EMBEDDINGS:
            return value
        dense = np.zeros(shape, dtype=np.float32)
        used = self.n_used[k]
        dense[self.items[k, :used]] = value[:used]
        return dense


class CompactUpload(Mapping[str, np.ndarray]):
    """Client k's upload, read as the dense float32 arrays a device sends
    (:meth:`BatchedResult.client_update`), built from the group's compact result when it
    is read.

    A round's replies then hold each client's touched item rows instead of a dense copy of
    the item tables per client (10,000 sampled devices over 5,000 items: about 12 GB
    dense). The arrays are read-only, so every read gives equal values: the server's
    checks, clipping and sum see exactly what the dense upload would hold. The arrays of
    the upload read last are kept until another upload is read (the server reads one
    upload's tensors several times in a row: its size, its checks, its norm, its copy).
    """

    __slots__ = ("_k", "_result", "_spec")
    _last: ClassVar[list[tuple[CompactUpload, dict[str, np.ndarray]]]] = []  # the upload read last, with its arrays built so far

    def __init__(self, result: BatchedResult, k: int, spec: dict[str, tuple[int, ...]]) -> None:
        self._result, self._k, self._spec = result, k, spec

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._spec:
            raise KeyError(name)
        last = CompactUpload._last
        if not last or last[0][0] is not self:
            last[:] = [(self, {})]
        built = last[0][1]
        if name not in built:
            value = self._result.client_tensor(self._k, name, self._spec[name]).view()
            value.flags.writeable = False  # nobody may change what another read of this upload gives
            built[name] = value
        return built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._spec)

    def __len__(self) -> int:
        return len(self._spec)


def local_update_batched(
    *,
    shared: Arrays,
    user_gmf: torch.Tensor,
    user_mlp: torch.Tensor,
    data: list[ClientData],
    model: ModelConfig,
    train: TrainConfig,
    rngs: list[np.random.Generator],
) -> BatchedResult:
    """:func:`fedrec.training.local.local_update` for K clients at once.

    ``user_gmf`` (K, g) and ``user_mlp`` (K, m) are the clients' private vectors;
    ``rngs[k]`` is client k's generator (the one the per-device path would get).
    """
    schedule = Schedule.build(data=data, model=model, train=train, rngs=rngs)
    layout = _FlatLayout.of(schedule)
    net = StackedNeuMF(model, shared, layout.items, user_gmf[layout.order], user_mlp[layout.order])
    loss_sum = _train(net, schedule, layout, train)
    return _result(net, shared, schedule, layout, loss_sum)


@dataclass(frozen=True)
class _FlatLayout:
    """Where each client sits while the stack trains.

    Clients are ordered by how many steps they take, most first, so that the clients
    still training at any step are a prefix of the stack. Their compact item tables
    follow one another in that order as one flat ``(R, d)`` table: the rows of the
    clients still training are a prefix of it too, and no client pays for another's
    longer history (no padding).
    """

    order: np.ndarray  # (K,) the caller's index of the client at each stack position
    n_used: np.ndarray  # (K,) rows of each client's compact table, in stack order
    offsets: np.ndarray  # (K + 1,) first flat row of each client; offsets[a]: rows of the first a
    items: np.ndarray  # (R,) the item of each flat row

    @classmethod
    def of(cls, schedule: Schedule) -> _FlatLayout:
        """The layout of ``schedule``'s clients."""
        order = np.argsort(-schedule.steps, kind="stable")
        n_used = schedule.n_used[order]
        offsets = np.concatenate([[0], np.cumsum(n_used)]).astype(np.int64)
        items = np.concatenate([schedule.items[c, :n] for c, n in zip(order, n_used)]) if len(order) else np.zeros(0, np.int64)
        return cls(order=order, n_used=n_used, offsets=offsets, items=items)


class _StackedOptimizer:
    """Adam or SGD over the stacked tensors, with per-client step counts.

    One optimizer group per learning rate (shared weights, private user vectors:
    :func:`fedrec.training.steps.learning_rate`). An item table's gradient is non-zero
    only on the mini-batch's rows: it lives in a buffer that is zero between steps, gets
    those rows added and is cleared again (instead of a fresh zero tensor the size of
    the table every step).
    """

    def __init__(self, tensors: dict[str, torch.Tensor], *, users: dict[str, torch.Tensor], tables: list[str],
                 train: TrainConfig) -> None:
        self.tensors = tensors
        self.tables = tables
        self.groups: dict[float, list[str]] = {}  # learning rate -> tensors
        for name in tensors:
            self.groups.setdefault(learning_rate(train, user=name in users), []).append(name)
        self.moments = (
            {name: (torch.zeros_like(t), torch.zeros_like(t)) for name, t in tensors.items()} if train.optimizer == Optimizer.ADAM else {}
        )
        self.table_grads = {name: torch.zeros_like(tensors[name]) for name in tables}

    @torch.no_grad()
    def step(self, *, t: int, a: int, active_rows: int, index: torch.Tensor, leaves: dict[str, torch.Tensor],
             rows: dict[str, torch.Tensor]) -> None:
        """Step ``t`` (from 0) of the first ``a`` clients, whose tables are the first
        ``active_rows`` flat rows, from the gradients that backward left on ``leaves``
        (dense tensors) and ``rows`` (the mini-batch's table rows at ``index``)."""
        grads = {name: leaf.grad for name, leaf in leaves.items()}
        for name in self.tables:  # what autograd's backward of the row lookup computes
            grads[name] = self.table_grads[name][:active_rows].index_put_((index,), rows[name].grad, accumulate=True)  # type: ignore[arg-type]
        # a 0-d branch (user_mlp of a GMF model) takes no part and has no gradient
        trained = [n for n in self.tensors if grads[n] is not None]
        if self.moments:
            for lr, names in self.groups.items():
                _adam_step(*_adam_pieces([n for n in names if n in trained], a=a, rows=active_rows, params=self.tensors,
                                         leaves=leaves, grads=grads, moments=self.moments), step=t + 1, lr=lr)
        else:
            for lr, names in self.groups.items():
                names = [n for n in names if n in trained]
                params = [leaves[n] if n in leaves else self.tensors[n][:active_rows] for n in names]
                torch._foreach_add_(params, [grads[n] for n in names], alpha=-lr)  # type: ignore[misc]
        for name in self.tables:
            self.table_grads[name][index] = 0.0


def _train(net: StackedNeuMF, schedule: Schedule, layout: _FlatLayout, train: TrainConfig) -> torch.Tensor:
    """Every client's mini-batches, step by step, the finished clients dropping off the
    end of the stack; ``net``'s tensors are updated in place. Returns each client's
    summed training loss (K,), in stack order."""
    tensors = net.tensors()
    tables = [name for name in EMBEDDINGS if name in tensors]
    optimizer = _StackedOptimizer(tensors, users=net.user, tables=tables, train=train)
    order, offsets = layout.order, layout.offsets
    steps = schedule.steps[order]
    flat_slots = torch.from_numpy(schedule.slots[order] + offsets[:-1, None, None])  # (K, T, B) rows of the flat tables
    labels = torch.from_numpy(schedule.labels[order])
    mask = torch.from_numpy(schedule.mask[order])
    loss_sum = torch.zeros(len(order), dtype=torch.float64)
    for t in range(int(steps.max(initial=0))):
        a = int(np.count_nonzero(steps > t))
        index = flat_slots[:a, t]  # (a, B): each example's row (padding: its client's first row, masked out)
        # Leaves viewing the active prefix: gradients are (a, ...) and updates land in place.
        leaves = {name: value[:a].detach().requires_grad_(True) for name, value in tensors.items() if name not in tables}
        rows = {name: tensors[name][index].requires_grad_(True) for name in tables}  # (a, B, d) copies
        per_client, count = client_batch_losses(net.logits(leaves, rows), labels[:a, t], mask[:a, t])
        # per_client: (a,) each client's mean batch loss; count: (a,) its mini-batch size
        per_client.sum().backward()
        with torch.no_grad():
            loss_sum[:a] += (per_client * count).double()
        optimizer.step(t=t, a=a, active_rows=int(offsets[a]), index=index, leaves=leaves, rows=rows)
    return loss_sum


def _result(net: StackedNeuMF, shared: Arrays, schedule: Schedule, layout: _FlatLayout, loss_sum: torch.Tensor) -> BatchedResult:
    """The trained stack back in the callers' order, item tables in the compact (K, S, d)
    form per client."""
    order, n_used, offsets = layout.order, layout.n_used, layout.offsets
    inverse = np.argsort(order)
    examples = schedule.examples
    owner = torch.from_numpy(np.repeat(order, n_used))  # flat row -> client
    slot = torch.from_numpy(np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], n_used))  # flat row -> its slot
    update = {}
    for name, value in net.updates(shared).items():
        if name in EMBEDDINGS:
            compact = value.new_zeros((len(order), schedule.items.shape[1], value.shape[1]))
            compact[owner, slot] = value
            update[name] = compact
        else:
            update[name] = value[inverse]
    return BatchedResult(
        update=update,
        items=schedule.items,
        n_used=schedule.n_used,
        user_gmf=net.user["user_gmf"][inverse],
        user_mlp=net.user["user_mlp"][inverse],
        loss=(loss_sum.numpy()[inverse] / np.maximum(examples, 1)),
        examples=examples,
    )
