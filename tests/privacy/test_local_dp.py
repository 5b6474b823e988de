"""Record-level DP-SGD on the device (Opacus ghost clipping)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedrec.client import Device, simulated_population
from fedrec.models import init_shared, shared_spec
from fedrec.privacy.accountant import device_epsilon, epsilon
from fedrec.privacy.ledger import LEDGER
from fedrec.runner import InProcessTransport, run_federated


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
