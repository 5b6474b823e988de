"""Record-level DP-SGD on the device, through Opacus (Abadi et al. 2016).

Protects each single interaction of the user even from the server: every local step
clips each example's gradient (over *all* trainable parameters: item embeddings, MLP,
output layer and the private user vectors) to ``max_grad_norm`` and adds Gaussian noise
of std ``noise_multiplier * max_grad_norm`` to every parameter, with Poisson-sampled
batches; Opacus' RDP accountant counts the steps.

Embedding tables make naive per-sample gradients huge (one dense (B, n_items, d)
tensor per table), so this uses Opacus' ghost clipping (Li et al. 2022; Bu et al.
2023): per-sample gradient *norms* from the layers' activations and backprops; Opacus
then runs a second backward pass of the clipped-weighted loss, which here is replaced by
forming that same clipped sum from the kept activations and backprops (book-keeping,
Bu et al. 2023; :class:`BookkeepingDPLoss`). The Opacus pieces are the ones
``PrivacyEngine.make_private(grad_sample_mode="ghost", poisson_sampling=True)`` builds
(:class:`GradSampleModuleFastGradientClipping`, :class:`DPOptimizerFastGradientClipping`,
:class:`DPLossFastGradientClipping`, :class:`UniformWithReplacementSampler`, the
accountant's step hook), put together by hand so that per client-epoch cost stays
close to plain training (``benchmarks/local_dp_cost.py``):

* the wrapped model (hooks) is built once per thread and model shape and reused;
  each call loads the downloaded weights into it and starts a fresh optimizer;
* batches are drawn with Opacus' Poisson sampler directly from two tensors instead of
  through a ``DataLoader`` (which fetches and collates example by example), at the
  sample rate ``make_private`` would use, ``1 / ceil(n / batch_size)``, for
  ``ceil(n / batch_size)`` steps per epoch like plain training; every step, an empty
  batch included, adds noise and is counted by the accountant;
* an embedding looked up once per example has a per-example gradient with a single
  non-zero row, the example's backprop, so its norm is the backprop's norm; a norm
  sampler registered for :class:`SingleLookupEmbedding` computes exactly that instead
  of Opacus' general ``unique``-based one (inputs of another shape fall back to it);
  likewise :class:`FlatLinear` for linear layers on one vector per example
  (``||g_i|| ||a_i||`` instead of einsums);
* the optimizer accumulates without ``deepcopy`` and draws the
  noise of all parameters in one call (same distribution: i.i.d. N(0, (zC)^2) per
  coordinate).

The device keeps its accountant history across rounds in its private state and
reports its own epsilon (RDP, a fast upper bound) with every update.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from opacus.accountants import RDPAccountant
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.embedding_norm_sample import compute_embedding_norm_sample
from opacus.grad_sample.linear import compute_linear_norm_sample
from opacus.grad_sample.utils import register_norm_sampler
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping, DPTensorFastGradientClipping
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

from fedrec.data.split import ClientData
from fedrec.errors import PrivacyError
from fedrec.models import Arrays, ModelConfig, ModelKind, SharedTower, load_shared, shared_arrays
from fedrec.privacy.accountant import device_epsilon
from fedrec.training.local import LocalResult, PrivateState
from fedrec.training.steps import TrainConfig, descend, device_epochs, example_loss, make_optimizer


@dataclass(frozen=True)
class LocalDPConfig:
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5


class SingleLookupEmbedding(nn.Embedding):
    """An :class:`nn.Embedding` that each example looks up once (input shape ``(B,)``).

    Behaves exactly like ``nn.Embedding``; the type only selects the cheap exact
    per-example gradient norm below under Opacus' ghost clipping.
    """

    @classmethod
    def of(cls, embedding: nn.Embedding) -> SingleLookupEmbedding:
        """The same table (the very same parameter) under this type."""
        out = cls(embedding.num_embeddings, embedding.embedding_dim, _weight=embedding.weight.data)
        out.weight = embedding.weight
        return out


@register_norm_sampler(SingleLookupEmbedding)
def single_lookup_norm_sample(
    layer: nn.Embedding, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[torch.Tensor, torch.Tensor]:
    """Per-example gradient norm of an embedding looked up once per example.

    Example i's gradient of the table is zero except for row ``ids[i]``, which is
    ``backprops[i]``: its Frobenius norm is ``||backprops[i]||``. Any other input shape
    (several lookups per example, which may hit the same row) goes to Opacus' general
    implementation.
    """
    ids = activations[0]
    if ids.dim() != 1:
        return compute_embedding_norm_sample(layer, activations, backprops)
    return {layer.weight: backprops.reshape(backprops.shape[0], -1).norm(2, dim=-1)}


class FlatLinear(nn.Linear):
    """An :class:`nn.Linear` applied to one vector per example (input shape ``(B, d)``).

    Behaves exactly like ``nn.Linear``; the type selects the norm sampler below.
    """

    @classmethod
    def of(cls, linear: nn.Linear) -> FlatLinear:
        """The same layer (the very same parameters) under this type."""
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        out.weight = linear.weight
        out.bias = linear.bias
        return out


@register_norm_sampler(FlatLinear)
def flat_linear_norm_sample(
    layer: nn.Linear, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[torch.Tensor, torch.Tensor]:
    """Per-example gradient norms of a linear layer on one vector per example.

    Example i's weight gradient is the outer product ``backprops[i] activations[i]^T``,
    of norm ``||backprops[i]|| ||activations[i]||``; its bias gradient is
    ``backprops[i]``. (Opacus' general version computes the same with einsums that
    also cover sequences; other shapes go to it.)
    """
    a = activations[0]
    if a.dim() != 2 or backprops.dim() != 2:
        return compute_linear_norm_sample(layer, activations, backprops)
    g = backprops.norm(2, dim=1)
    out = {layer.weight: g * a.to(backprops.dtype).norm(2, dim=1)}
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g
    return out


class FusedNoiseDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping DP optimizer with cheaper bookkeeping, same mechanism.

    ``accumulate`` keeps the step's gradient tensor instead of a ``copy.deepcopy``
    of it, and ``add_noise`` draws the N(0, (zC)^2) noise of all
    parameters with one call and splits it, instead of one call per parameter.
    """

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad)
            else:  # p.grad is this step's own tensor (zero_grad drops it): no copy needed
                p.summed_grad = p.grad.detach()

    def add_noise(self) -> None:
        z = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        std = z * self.max_grad_norm
        params = self.params
        total = sum(p.numel() for p in params)
        if std == 0:
            flat = torch.zeros(total, dtype=params[0].dtype)
        else:
            flat = torch.normal(0.0, std, size=(total,), generator=self.generator, dtype=params[0].dtype)
        offset = 0
        for p in params:
            _check_processed_flag(p.summed_grad)
            noise = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            p.grad = noise.add_(p.summed_grad)  # each parameter has its own slice of the draw
            _mark_as_processed(p.summed_grad)


class BookkeepingGradSampleModule(GradSampleModuleFastGradientClipping):
    """Opacus' ghost-clipping module that also keeps each layer's activations and
    backprops of the norm pass, so that the clipped gradient sum can be formed from them
    directly (book-keeping, Bu et al. 2023) instead of by a second backward pass."""

    def __init__(self, m: nn.Module, *, max_grad_norm: float) -> None:
        super().__init__(m, batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm, use_ghost_clipping=True)
        self.kept: list[tuple[nn.Module, list[torch.Tensor], torch.Tensor]] = []

    def add_hooks(self, *, loss_reduction: str = "mean", batch_first: bool = True, force_functorch: bool = False) -> None:
        """Opacus' own two hooks per layer (``capture_activations_hook``,
        ``capture_backprops_hook``), reached more cheaply.

        Opacus registers the second as a module full backward hook, which wraps every
        layer's inputs and outputs in an extra autograd function on every forward. For a
        layer with a single tensor output, what that hook receives is the gradient of
        the loss with respect to the output, which a hook on the output tensor receives
        too: the forward hook below registers one.
        """
        if hasattr(self._module, "autograd_grad_sample_hooks"):
            raise ValueError("Trying to add hooks twice to the same model")
        hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._module.autograd_grad_sample_hooks = hooks
        self.autograd_grad_sample_hooks = hooks
        for module in self.iterate_submodules(self._module):
            if type(module) not in self.NORM_SAMPLERS:
                raise PrivacyError(f"local DP: no per-example norm rule for a {type(module).__name__} layer")

            def forward_hook(
                module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
            ) -> None:
                before = len(getattr(module, "activations", ()))
                self.capture_activations_hook(module, list(inputs), output)
                if len(getattr(module, "activations", ())) > before:  # kept (training, grad enabled, hooks on)
                    if not isinstance(output, torch.Tensor) or not output.requires_grad:
                        raise PrivacyError(f"local DP: the output of {type(module).__name__} takes no gradient")
                    output.register_hook(partial(self._on_output_grad, module, loss_reduction, batch_first))

            hooks.append(module.register_forward_hook(forward_hook))
        self.enable_hooks()

    def _on_output_grad(self, module: nn.Module, loss_reduction: str, batch_first: bool, grad: torch.Tensor) -> None:
        self.capture_backprops_hook(module, None, (grad,), loss_reduction, batch_first)  # type: ignore[arg-type]

    def rearrange_grad_samples(  # type: ignore[override]
        self, *, module: nn.Module, backprops: torch.Tensor, loss_reduction: str, batch_first: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        activations, backprops = super().rearrange_grad_samples(
            module=module, backprops=backprops, loss_reduction=loss_reduction, batch_first=batch_first
        )
        self.kept.append((module, activations, backprops))  # backprops: per-example, x batch size for "mean"
        return activations, backprops


def clipped_gradient_sum(
    kept: list[tuple[nn.Module, list[torch.Tensor], torch.Tensor]], coeff: torch.Tensor
) -> dict[torch.Tensor, torch.Tensor]:
    """``sum_i coeff_i * grad_i`` per parameter, from each layer's activations and
    per-example backprops: what the second backward pass of ghost clipping computes."""
    grads: dict[torch.Tensor, torch.Tensor] = {}

    def add(p: torch.Tensor, g: torch.Tensor) -> None:
        grads[p] = grads[p] + g if p in grads else g

    for module, activations, backprops in kept:
        weighted = coeff[:, None] * backprops
        if isinstance(module, SingleLookupEmbedding) and activations[0].dim() == 1:
            weight = torch.zeros_like(module.weight).index_add_(0, activations[0], weighted)
            add(module.weight, weight)
        elif isinstance(module, nn.Linear) and activations[0].dim() == 2 and backprops.dim() == 2:
            if module.weight.requires_grad:
                add(module.weight, weighted.t() @ activations[0])
            if module.bias is not None and module.bias.requires_grad:
                add(module.bias, weighted.sum(0))
        else:
            raise PrivacyError(f"no book-keeping rule for {type(module).__name__} with inputs of shape "
                               f"{tuple(activations[0].shape)}; use Opacus' DPLossFastGradientClipping")
    return grads


class _BookkeepingLoss(DPTensorFastGradientClipping):
    def backward(self) -> None:  # type: ignore[override]
        module = self.module
        assert isinstance(module, BookkeepingGradSampleModule)
        module.kept = []
        torch.mean(self.loss_per_sample, dim=0).backward()  # norm pass: hooks keep what they saw
        coeff = module.get_clipping_coef()
        grads = clipped_gradient_sum(module.kept, coeff)
        module.kept = []
        for p in module.trainable_parameters:
            if p not in grads:
                raise PrivacyError("a trainable parameter got no clipped gradient; its layer is not supported")
            p.grad = grads[p]


class BookkeepingDPLoss(DPLossFastGradientClipping):
    """Opacus' ghost-clipping loss whose ``backward`` is one backward pass plus book-keeping."""

    def __call__(self, *args: torch.Tensor, shape: object = None, **kwargs: torch.Tensor) -> DPTensorFastGradientClipping:
        out = super().__call__(*args, shape=shape, **kwargs)
        return _BookkeepingLoss(self.module, self.optimizer, out.loss_per_sample, self.loss_reduction)


class _DeviceNet(nn.Module):
    """The device's whole model as one module of items -> logits (what Opacus wraps).

    Only the vectors the forward uses are parameters: GMF has no MLP branch, and its
    empty MLP user vector is left out (Opacus needs a per-example gradient of every
    parameter it wraps, and an unused one gets none).
    """

    def __init__(self, model: ModelConfig) -> None:
        super().__init__()
        self.tower = SharedTower(model, generator=None)  # weights are loaded per call
        self.tower.item_gmf = SingleLookupEmbedding.of(self.tower.item_gmf)
        if model.kind == ModelKind.NEUMF:
            self.tower.item_mlp = SingleLookupEmbedding.of(self.tower.item_mlp)
            for i, layer in enumerate(self.tower.mlp):
                if isinstance(layer, nn.Linear):
                    self.tower.mlp[i] = FlatLinear.of(layer)
        self.tower.output = FlatLinear.of(self.tower.output)
        self.user_gmf = SingleLookupEmbedding(1, model.gmf_dim)
        self.user_mlp = SingleLookupEmbedding(1, model.mlp_dim) if model.mlp_dim else None

    def user_vectors(self) -> list[torch.Tensor]:
        """The device's own vectors that are parameters (GMF: the GMF vector only)."""
        return [e.weight for e in (self.user_gmf, self.user_mlp) if e is not None]

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        me = torch.zeros_like(items)  # the device has one user: row 0
        user_mlp = self.user_mlp(me) if self.user_mlp is not None else torch.zeros(items.shape[0], 0)  # (B, m)
        return self.tower(self.user_gmf(me), user_mlp, items)


class _Wrapped:
    """A device model wrapped by Opacus once, reused by every call on this thread."""

    def __init__(self, model: ModelConfig, max_grad_norm: float) -> None:
        self.net = _DeviceNet(model)
        self.module = BookkeepingGradSampleModule(self.net, max_grad_norm=max_grad_norm)


_local = threading.local()


def _wrapped(model: ModelConfig, max_grad_norm: float) -> _Wrapped:
    cache: dict[tuple[ModelConfig, float], _Wrapped] = _local.__dict__.setdefault("wrapped", {})
    key = (model, float(max_grad_norm))
    if key not in cache:
        cache[key] = _Wrapped(model, max_grad_norm)
    return cache[key]


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps per epoch: as many as the plain loader has batches, ``ceil(n / batch_size)``.
    The Poisson sample rate is its inverse, as in ``make_private``."""
    return -(-num_examples // batch_size)


def poisson_batches(num_examples: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of ``steps`` Poisson batches (each example in each with probability
    ``1 / steps``) from Opacus' own sampler; a batch may be empty. The step count is
    passed explicitly: the sampler's default ``int(1 / rate)`` can round down."""
    sampler = UniformWithReplacementSampler(num_samples=num_examples, sample_rate=1.0 / steps, generator=generator, steps=steps)
    for indices in sampler:
        yield torch.tensor(indices, dtype=torch.long)


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
    """Like :func:`fedrec.training.local.local_update`, with record-level DP-SGD."""
    wrapped = _wrapped(model, local.max_grad_norm)
    _load_device(wrapped.net, shared=shared, private=private)
    # Lazy: the first epoch is drawn before the sampling seed, every later one after it.
    epochs = device_epochs(data=data, n_items=model.n_items, train=train, rng=rng)
    first = next(epochs)
    steps = batches_per_epoch(first[0].shape[0], train.batch_size)
    seed = int(rng.integers(2**62))
    dp_optimizer, accountant = _dp_sgd(
        wrapped.net, train=train, local=local, examples=first[0].shape[0], steps=steps, seed=seed,
        history=private.dp_history,
    )
    try:
        total, seen = _dp_epochs(
            wrapped.module, dp_optimizer, first=first, later=epochs, epochs=train.local_epochs, steps=steps,
            sampling=torch.Generator().manual_seed(seed),
        )
    except BaseException:
        _local.__dict__.pop("wrapped", None)  # hooks may hold a half-done step: rebuild next time
        raise
    history = tuple((float(z), float(q), int(k)) for z, q, k in accountant.history)
    return LocalResult(
        update=_update(wrapped.net, shared=shared),
        private=_trained_private(wrapped.net, before=private, history=history),
        num_examples=seen,
        loss=total / max(seen, 1),
        local_epsilon=device_epsilon(history, delta=local.delta),
    )


def _load_device(net: _DeviceNet, *, shared: Arrays, private: PrivateState) -> None:
    """The downloaded shared weights and the device's own vectors into the reused model."""
    load_shared(net.tower, shared)
    with torch.no_grad():
        net.user_gmf.weight.copy_(torch.from_numpy(private.user_gmf)[None, :])
        if net.user_mlp is not None:
            net.user_mlp.weight.copy_(torch.from_numpy(private.user_mlp)[None, :])


def _dp_sgd(
    net: _DeviceNet, *, train: TrainConfig, local: LocalDPConfig, examples: int, steps: int, seed: int,
    history: tuple[tuple[float, float, int], ...],
) -> tuple[FusedNoiseDPOptimizer, RDPAccountant]:
    """A fresh DP optimizer (Poisson rate ``1 / steps``, noise drawn from ``seed + 1``) and
    the accountant that continues the device's ``history`` with every step it takes."""
    optimizer = make_optimizer(train, shared=list(net.tower.parameters()), users=net.user_vectors())
    rate = 1.0 / steps
    dp_optimizer = FusedNoiseDPOptimizer(
        optimizer,
        noise_multiplier=local.noise_multiplier,
        max_grad_norm=local.max_grad_norm,
        expected_batch_size=int(examples * rate),
        loss_reduction="mean",
        generator=torch.Generator().manual_seed(seed + 1),
    )
    accountant = RDPAccountant()
    accountant.history = list(history)
    dp_optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=rate))
    return dp_optimizer, accountant


def _dp_epochs(
    module: BookkeepingGradSampleModule, dp_optimizer: FusedNoiseDPOptimizer, *,
    first: tuple[np.ndarray, np.ndarray], later: Iterator[tuple[np.ndarray, np.ndarray]], epochs: int, steps: int,
    sampling: torch.Generator,
) -> tuple[float, int]:
    """``epochs`` epochs of ``steps`` DP-SGD steps on Poisson batches (``first``'s
    examples, then fresh negatives from ``later`` each epoch); returns (loss sum, examples seen)."""
    criterion = BookkeepingDPLoss(module, dp_optimizer, example_loss(), "mean")
    items, labels = map(torch.from_numpy, first)
    n = items.shape[0]
    total, seen = 0.0, 0
    for epoch in range(epochs):
        if epoch:  # fresh negatives each epoch, same number of examples
            items, labels = map(torch.from_numpy, next(later))
        for batch in poisson_batches(n, steps, sampling):
            if batch.shape[0] == 0:
                noise_only_step(dp_optimizer)
                continue
            loss = criterion(module(items[batch]), labels[batch])
            descend(dp_optimizer, loss)
            total += float(loss.detach()) * batch.shape[0]
            seen += batch.shape[0]
    return total, seen


def _trained_private(
    net: _DeviceNet, *, before: PrivateState, history: tuple[tuple[float, float, int], ...]
) -> PrivateState:
    """The device's private state after this call: its trained vectors (an empty MLP
    vector as it was) and the accountant's history."""
    user_mlp = before.user_mlp.copy() if net.user_mlp is None else net.user_mlp.weight.detach()[0].numpy().copy()
    return PrivateState(
        user_gmf=net.user_gmf.weight.detach()[0].numpy().copy(),
        user_mlp=user_mlp,
        rounds_trained=before.rounds_trained + 1,
        dp_history=history,
    )


def _update(net: _DeviceNet, *, shared: Arrays) -> Arrays:
    """The trained shared weights minus the downloaded ones."""
    new_shared = shared_arrays(net.tower)
    return {name: new_shared[name] - shared[name] for name in shared}


def noise_only_step(dp_optimizer: DPOptimizerFastGradientClipping) -> None:
    """The DP-SGD step of an empty Poisson batch: the clipped sum is zero, the noise and
    the accounting are not skipped (skipping would reveal that the batch was empty)."""
    dp_optimizer.zero_grad(set_to_none=True)
    for p in dp_optimizer.params:
        p.grad = torch.zeros_like(p)
    dp_optimizer.step()
