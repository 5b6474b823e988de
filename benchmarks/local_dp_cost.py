"""Cost of record-level local DP-SGD (Opacus ghost clipping) vs plain local training.

Times one client-epoch for a sample of MovieLens 100K users, plain and with DP-SGD,
same model, batch size, data and number of optimizer steps, one thread, in one
process. Plain and DP calls are interleaved client by client (the order alternating
between repeats), so a change in machine load hits both alike. Prints ms per
client-epoch (the fastest repeat and the median) and the ratio (target: <= 2x), plus
the one-time cost of wrapping the model on a fresh thread.

``--reference`` adds the previous implementation (``PrivacyEngine.make_private`` per
call with a ``DataLoader``), in the given grad-sample modes, on the same clients.

    FEDREC_DATA_DIR=../shared/data python benchmarks/local_dp_cost.py [--clients 60] [--repeats 5]
    FEDREC_DATA_DIR=../shared/data python benchmarks/local_dp_cost.py --reference ghost --reference hooks
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedrec.config import RunConfig, parse_run_config
from fedrec.federation.device import Device, client_rng
from fedrec.models import Arrays, SharedTower, init_shared, load_shared
from fedrec.training.local import PrivateState
from fedrec.training.steps import epoch_examples, make_optimizer


class _ReferenceNet(nn.Module):
    def __init__(self, tower: SharedTower, private: PrivateState) -> None:
        super().__init__()
        self.tower = tower
        self.user_gmf = nn.Embedding.from_pretrained(torch.from_numpy(private.user_gmf.copy())[None, :], freeze=False)
        self.user_mlp = nn.Embedding.from_pretrained(torch.from_numpy(private.user_mlp.copy())[None, :], freeze=False)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        me = torch.zeros_like(items)
        return self.tower(self.user_gmf(me), self.user_mlp(me), items)


def reference_epoch(device: Device, shared: Arrays, config: RunConfig, mode: str) -> None:
    """One client-epoch the way fedrec did it before: make_private per call, DataLoader."""
    train = config.train.build()
    rng = client_rng(seed=config.seed, round_=1, client=device.client_id)
    tower = SharedTower(device.model, generator=None)
    load_shared(tower, shared)
    net = _ReferenceNet(tower, device.fresh_private(config.seed))
    optimizer = make_optimizer(train, shared=list(net.parameters()))
    items, labels = epoch_examples(
        positives=device.data.train_items, excluded=device.data.training_exclusions(), n_items=device.model.n_items,
        num_negatives=train.num_negatives, rng=rng,
    )
    seed = int(rng.integers(2**62))
    loader = DataLoader(TensorDataset(torch.from_numpy(items), torch.from_numpy(labels)), batch_size=train.batch_size,
                        generator=torch.Generator().manual_seed(seed))
    engine = PrivacyEngine(accountant="rdp")
    out = engine.make_private(
        module=net, optimizer=optimizer, criterion=nn.BCEWithLogitsLoss(), data_loader=loader,
        noise_multiplier=config.privacy.local_noise_multiplier, max_grad_norm=config.privacy.local_clipping_norm,
        grad_sample_mode=mode, poisson_sampling=True, noise_generator=torch.Generator().manual_seed(seed + 1),
    )
    if mode == "ghost":
        dp_net, dp_optimizer, criterion, dp_loader = out
    else:
        (dp_net, dp_optimizer, dp_loader), criterion = out, nn.BCEWithLogitsLoss()
    for batch_items, batch_labels in dp_loader:
        if batch_items.shape[0] == 0:
            continue
        dp_optimizer.zero_grad(set_to_none=True)
        criterion(dp_net(batch_items), batch_labels).backward()
        dp_optimizer.step()


def first_call_ms(device: Device, shared: Arrays, config: RunConfig) -> float:
    """A DP call on a fresh thread: includes the one-time wrapping of the model."""
    out: list[float] = []

    def run() -> None:
        torch.set_num_threads(1)
        started = time.perf_counter()
        device.train(shared=shared, private=None, config=config, round_=1)
        out.append(time.perf_counter() - started)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out[0] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference", action="append", default=[], choices=["ghost", "hooks", "functorch", "ew"],
                        help="also time the previous make_private implementation in this grad-sample mode")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    plain = parse_run_config({"model": "neumf", "local-epochs": 1, "dp": "off"})
    private = parse_run_config({"model": "neumf", "local-epochs": 1, "dp": "off", "local-dp": True})
    users = np.linspace(0, 942, args.clients).astype(int)
    devices = [Device.simulated(plain, int(u)) for u in users]
    shared = init_shared(devices[0].model, seed=0)
    runs: dict[str, Callable[[Device], object]] = {
        "plain": lambda d: d.train(shared=shared, private=None, config=plain, round_=1),
        "local DP-SGD": lambda d: d.train(shared=shared, private=None, config=private, round_=1),
    }
    for mode in args.reference:
        runs[f"make_private ({mode})"] = lambda d, mode=mode: reference_epoch(d, shared, private, mode)
    for run in runs.values():  # warm-up: imports, this thread's wrapped model
        run(devices[0])
    first = first_call_ms(devices[1], shared, private)  # imports done: wrapping + one call
    load_before = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {name: [0.0] * args.repeats for name in runs}
    for r in range(args.repeats):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for device in devices:
            for name in order:
                started = time.perf_counter()
                runs[name](device)
                seconds[name][r] += time.perf_counter() - started
    load_after = os.getloadavg()[0]
    best = {name: min(v) / len(devices) * 1000 for name, v in seconds.items()}
    median = {name: statistics.median(v) / len(devices) * 1000 for name, v in seconds.items()}
    examples = np.mean([d.data.train_items.shape[0] * 5 for d in devices])
    print(f"{args.clients} MovieLens 100K clients, ~{examples:.0f} examples per client-epoch, batch 64, 1 thread, "
          f"{args.repeats} interleaved repeats, 1-min load {load_before:.2f} -> {load_after:.2f}")
    print(f"  {'':<26} {'best':>8} {'median':>8}  ms per client-epoch")
    for name in runs:
        print(f"  {name:<26} {best[name]:8.1f} {median[name]:8.1f}   ratio to plain {best[name] / best['plain']:.2f}x "
              f"(median {median[name] / median['plain']:.2f}x)")
    print(f"  first DP call on a fresh thread (wraps the model once per thread), client {devices[1].client_id}: "
          f"{first:.1f} ms")


if __name__ == "__main__":
    main()
