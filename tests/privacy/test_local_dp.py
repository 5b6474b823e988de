"""Record-level DP-SGD on the device (Opacus ghost clipping): accounting, clipping, noise."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.embedding_norm_sample import compute_embedding_norm_sample
from opacus.grad_sample.linear import compute_linear_norm_sample
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

from fedrec.config import parse_run_config
from fedrec.federation.device import Device, simulated_population
from fedrec.federation.rounds import InProcessTransport, run_federated
from fedrec.models import ModelConfig, init_shared, load_shared, shared_spec
from fedrec.privacy.accountant import INTEGER_ORDERS, device_epsilon, epsilon
from fedrec.privacy.ledger import LEDGER
from fedrec.privacy.local_dp import (
    BookkeepingDPLoss,
    BookkeepingGradSampleModule,
    FlatLinear,
    FusedNoiseDPOptimizer,
    SingleLookupEmbedding,
    _DeviceNet,
    batches_per_epoch,
    flat_linear_norm_sample,
    noise_only_step,
    poisson_batches,
    single_lookup_norm_sample,
)


@pytest.fixture()
def local_config(tiny_config):
    return replace(tiny_config, privacy=replace(tiny_config.privacy, local_dp=True, local_noise_multiplier=1.1))


def test_device_accounts_its_own_steps_across_rounds(local_config) -> None:
    device = Device.simulated(local_config, 1)
    shared = init_shared(device.model, seed=0)
    first = device.train(shared=shared, private=None, config=local_config, round_=1)
    assert set(first.update) == set(shared_spec(device.model))
    (z, q, steps), = first.private.dp_history
    n = device.data.train_items.shape[0] * (1 + local_config.train.num_negatives)
    # Opacus samples each example with q = 1 / (number of batches of the plain loader)
    assert z == 1.1 and q == pytest.approx(1 / np.ceil(n / local_config.train.batch_size)) and steps >= 1
    second = device.train(shared=shared, private=first.private, config=local_config, round_=2)
    assert second.private.dp_history[0][2] == 2 * steps  # the history carries over
    assert second.local_epsilon > first.local_epsilon > 0
    # the device's integer-order RDP bound is valid: never below Opacus' full-order RDP
    full = epsilon(second.private.dp_history, delta=1e-5, accountant="rdp")
    assert second.local_epsilon == pytest.approx(device_epsilon(second.private.dp_history, delta=1e-5))
    assert full <= second.local_epsilon <= 1.1 * full


def test_local_dp_is_deterministic_given_the_seed(local_config) -> None:
    device = Device.simulated(local_config, 2)
    shared = init_shared(device.model, seed=0)
    a = device.train(shared=shared, private=None, config=local_config, round_=1)
    b = device.train(shared=shared, private=None, config=local_config, round_=1)
    assert all(np.array_equal(a.update[k], b.update[k]) for k in a.update)


def test_the_ledger_keeps_the_devices_epsilon(local_config, tmp_path: Path) -> None:
    split = simulated_population(local_config).split
    run_federated(local_config, InProcessTransport(local_config, split.n_users), model=local_config.model.build(split.n_items), run_dir=tmp_path)
    rounds = [json.loads(line) for line in (tmp_path / LEDGER).read_text().splitlines() if '"round"' in line]
    assert rounds and all(r["local_dp"]["max_epsilon"] > 0 for r in rounds if r["clients"] > 0)


def test_gmf_trains_with_local_dp_and_the_ledger_accounts_it(tmp_path: Path) -> None:
    """GMF has no MLP branch: its empty MLP user vector is no parameter of what Opacus
    wraps, and stays empty; the rest trains, is noised and is accounted like NeuMF."""
    config = parse_run_config({
        "dataset": "synthetic", "synthetic-users": 24, "synthetic-items": 200, "synthetic-interactions": 8, "num-eval-negatives": 20,
        "model": "gmf", "gmf-dim": 4, "local-dp": True, "local-noise-multiplier": 1.1, "num-rounds": 2,
        "clients-per-round": 8, "eval-every": 2, "epsilon": 50.0, "seed": 1, "ledger-key": str(tmp_path / "ledger.pem"),
    })
    device = Device.simulated(config, 0)
    assert device.model.mlp_dim == 0 and not any(p.numel() == 0 for p in _DeviceNet(device.model).parameters())
    shared = init_shared(device.model, seed=0)
    first = device.train(shared=shared, private=None, config=config, round_=1)
    second = device.train(shared=shared, private=first.private, config=config, round_=2)
    assert set(first.update) == set(shared_spec(device.model)) and first.private.user_mlp.shape == (0,)
    assert all(np.all(np.isfinite(v)) and np.any(v != 0) for v in first.update.values())
    assert not np.array_equal(first.private.user_gmf, device.fresh_private(config.seed).user_gmf)
    assert second.private.dp_history[0][2] == 2 * first.private.dp_history[0][2]  # the device's history carries over
    assert second.local_epsilon > first.local_epsilon > 0
    split = simulated_population(config).split
    final, history, _ = run_federated(
        config, InProcessTransport(config, split.n_users), model=config.model.build(split.n_items), run_dir=tmp_path / "run"
    )
    assert history.rounds_run == 2 and history.local_epsilon > 0 and not history.rejected
    assert any(not np.array_equal(final[k], v) for k, v in init_shared(config.model.build(split.n_items), seed=config.seed).items())
    rounds = [json.loads(line) for line in (tmp_path / "run" / LEDGER).read_text().splitlines() if '"round"' in line]
    assert len(rounds) == 2 and all(r["local_dp"]["max_epsilon"] > 0 for r in rounds)


# --- the DP-SGD mechanism itself: per-example clipping over all parameters, noise on all ---

SMALL = ModelConfig(n_items=50, gmf_dim=4, mlp_layers=(8, 4))


def _net_with_weights(seed: int = 0) -> _DeviceNet:
    net = _DeviceNet(SMALL)
    load_shared(net.tower, init_shared(SMALL, seed=seed))
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        net.user_gmf.weight.normal_(0, 0.5, generator=g)
        net.user_mlp.weight.normal_(0, 0.5, generator=g)
        net.tower.item_gmf.weight.normal_(0, 0.5, generator=g)
    return net


def _per_example_grads(net: _DeviceNet, items: torch.Tensor, labels: torch.Tensor) -> list[list[torch.Tensor]]:
    """Brute force: each example's gradient of its own loss over every trainable parameter."""
    params = [p for p in net.parameters() if p.requires_grad]
    loss = torch.nn.BCEWithLogitsLoss()
    return [list(torch.autograd.grad(loss(net(items[i : i + 1]), labels[i : i + 1]), params)) for i in range(items.shape[0])]


def _dp_grads(
    net: _DeviceNet, items: torch.Tensor, labels: torch.Tensor, clip: float, *, opacus_two_pass: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The clipped gradient sum and per-example norms from the real pipeline (or from
    Opacus' own two-backward-pass ghost clipping)."""
    if opacus_two_pass:
        module = GradSampleModuleFastGradientClipping(net, batch_first=True, loss_reduction="mean", max_grad_norm=clip)
    else:
        module = BookkeepingGradSampleModule(net, max_grad_norm=clip)
    optimizer = FusedNoiseDPOptimizer(
        torch.optim.SGD(net.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=1
    )
    loss_type = DPLossFastGradientClipping if opacus_two_pass else BookkeepingDPLoss
    criterion = loss_type(module, optimizer, torch.nn.BCEWithLogitsLoss(), "mean")
    optimizer.zero_grad(set_to_none=True)
    criterion(module(items), labels).backward()
    grads = [p.grad.detach().clone() for p in net.parameters() if p.requires_grad]
    norms = module.per_sample_gradient_norms.detach().clone()
    module._close()
    return grads, norms


def test_ghost_clipping_clips_each_example_over_all_parameters() -> None:
    net = _net_with_weights()
    with torch.no_grad():
        net.tower.item_mlp.weight[7] *= 1e4  # example 0 (item 7) has a huge gradient
    items = torch.tensor([7, 3, 3, 12, 40, 0, 49, 21])
    labels = torch.tensor([0.0, 1, 0, 1, 0, 1, 1, 0])
    per_example = _per_example_grads(net, items, labels)
    norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in gs)) for gs in per_example])  # type: ignore[misc]
    clip = float(norms[1:].median())
    assert norms[0] > 100 * clip and (norms > clip).sum() >= 2 and (norms < clip).sum() >= 2
    grads, ghost_norms = _dp_grads(net, items, labels, clip)
    torch.testing.assert_close(ghost_norms, norms, rtol=1e-4, atol=1e-6)  # exact norms, all parameters
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    for k, grad in enumerate(grads):
        expected = sum(f * gs[k] for f, gs in zip(factors, per_example))
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    # the same as Opacus' own ghost clipping with its second backward pass
    opacus_grads, _ = _dp_grads(net, items, labels, clip, opacus_two_pass=True)
    for grad, theirs in zip(grads, opacus_grads):
        torch.testing.assert_close(grad, theirs, rtol=1e-4, atol=1e-6)
    # the huge example alone contributes a gradient of norm at most C
    alone, _ = _dp_grads(net, items[:1], labels[:1], clip)
    assert float(torch.sqrt(sum((g**2).sum() for g in alone))) <= clip * (1 + 1e-5)  # type: ignore[arg-type]


def test_single_lookup_norms_equal_opacus_general_embedding_norms() -> None:
    layer = SingleLookupEmbedding(30, 5)
    ids = torch.tensor([3, 3, 0, 29, 7, 3])
    backprops = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    ours = single_lookup_norm_sample(layer, [ids], backprops)[layer.weight]
    theirs = compute_embedding_norm_sample(layer, [ids], backprops)[layer.weight]
    torch.testing.assert_close(ours, theirs)
    two_per_example = torch.tensor([[1, 1], [2, 0]])  # not a single lookup: Opacus' general answer
    bp = torch.randn(2, 2, 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        single_lookup_norm_sample(layer, [two_per_example], bp)[layer.weight],
        compute_embedding_norm_sample(layer, [two_per_example], bp)[layer.weight],
    )


def test_flat_linear_norms_equal_opacus_linear_norms() -> None:
    layer = FlatLinear.of(torch.nn.Linear(6, 3))
    g = torch.Generator().manual_seed(3)
    activations, backprops = torch.randn(5, 6, generator=g), torch.randn(5, 3, generator=g)
    ours = flat_linear_norm_sample(layer, [activations], backprops)
    theirs = compute_linear_norm_sample(layer, [activations], backprops)
    assert set(ours) == set(theirs) == {layer.weight, layer.bias}
    for p in ours:
        torch.testing.assert_close(ours[p], theirs[p])


def test_noise_has_std_z_c_on_every_parameter_and_empty_batches_count() -> None:
    net = _net_with_weights()
    params = [p for p in net.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    z, clip, batch = 2.0, 0.5, 4
    optimizer = FusedNoiseDPOptimizer(
        torch.optim.SGD(params, lr=1.0), noise_multiplier=z, max_grad_norm=clip, expected_batch_size=batch,
        generator=torch.Generator().manual_seed(0),
    )
    accountant = RDPAccountant()
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=0.25))
    draws = []
    for _ in range(40):  # an empty Poisson batch: zero clipped sum, noise only
        noise_only_step(optimizer)
        draws.append([(b - p.detach()) * batch for b, p in zip(before, params)])  # = the noise, N(0, (zC)^2)
        with torch.no_grad():
            for b, p in zip(before, params):
                p.copy_(b)
    assert accountant.history == [(z, 0.25, 40)]  # every noisy step is accounted
    for k, p in enumerate(params):
        noise = torch.stack([d[k] for d in draws])
        assert bool((noise != 0).all()), f"parameter {k} {tuple(p.shape)} has coordinates without noise"
        assert float(noise.std()) == pytest.approx(z * clip, rel=0.35 if noise.numel() < 100 else 0.05)
        assert abs(float(noise.mean())) < 5 * z * clip / noise.numel() ** 0.5
    flat = torch.cat([d[k].flatten() for d in draws for k in range(len(params))])
    assert float(flat.std()) == pytest.approx(z * clip, rel=0.01)
    # parameters get independent draws, not slices of one another
    assert abs(float(torch.corrcoef(torch.stack([draws[0][0].flatten()[:50], draws[0][1].flatten()[:50]]))[0, 1])) < 0.5


def test_reported_epsilon_is_opacus_rdp_for_the_steps_taken(local_config) -> None:
    device = Device.simulated(local_config, 4)
    result = device.train(shared=init_shared(device.model, seed=0), private=None, config=local_config, round_=1)
    n = device.data.train_items.shape[0] * (1 + local_config.train.num_negatives)
    batches = -(-n // local_config.train.batch_size)
    assert result.private.dp_history == ((1.1, 1 / batches, batches * local_config.train.local_epochs),)
    orders = list(INTEGER_ORDERS)
    rdp = compute_rdp(q=1 / batches, noise_multiplier=1.1, steps=batches * local_config.train.local_epochs, orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=local_config.privacy.local_delta)
    assert result.local_epsilon == pytest.approx(float(eps), rel=1e-9)
    # every embedding row is noised, also the rows of items the device never saw
    assert bool(np.all(np.any(result.update["item_gmf.weight"] != 0, axis=1)))


def test_the_reused_wrapped_model_carries_nothing_between_calls(local_config) -> None:
    a_device, b_device = Device.simulated(local_config, 1), Device.simulated(local_config, 2)
    shared = init_shared(a_device.model, seed=0)
    first = a_device.train(shared=shared, private=None, config=local_config, round_=1)
    b_device.train(shared=init_shared(b_device.model, seed=5), private=None, config=local_config, round_=3)
    again = a_device.train(shared=shared, private=None, config=local_config, round_=1)
    out: list = []
    thread = threading.Thread(target=lambda: out.append(a_device.train(shared=shared, private=None, config=local_config, round_=1)))
    thread.start()
    thread.join()
    for other in (again, out[0]):
        assert all(np.array_equal(first.update[k], other.update[k]) for k in first.update)
        assert np.array_equal(first.private.user_gmf, other.private.user_gmf)


def test_poisson_batches_take_every_step_the_plain_loader_takes() -> None:
    steps = batches_per_epoch(93 * 64, 64)
    assert steps == 93 and int(1 / (1.0 / steps)) == 92  # what the sampler's default would do
    sizes = [b.shape[0] for b in poisson_batches(93 * 64, steps, torch.Generator().manual_seed(0))]
    assert len(sizes) == 93 and abs(np.mean(sizes) - 64) < 3
