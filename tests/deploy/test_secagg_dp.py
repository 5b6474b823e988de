"""DP-FedAvg gives the same aggregate with and without secure aggregation.

SecAgg+ hands the server one sum of k clipped updates; the DP aggregator must add its
noise to that sum as it is, not clip the sum again to C (which would shrink k updates
to the size of one while the noise stays the same). Real device ClientApps and Flower's
real SecAgg+ workflow, in one process (the grid of ``test_secagg``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedrec.config import RunConfig, parse_run_config
from fedrec.data import Interactions
from fedrec.deploy.device import DeviceFiles, DeviceState, save_state
from fedrec.deploy.fleet import split_fleet
from fedrec.federation.fedavg import sum_updates
from fedrec.federation.rounds import run_federated
from fedrec.models import init_shared
from fedrec.privacy.clipping import clip_update, global_norm
from fedrec.privacy.dp_fedavg import DPFedAvg, Part, clipped_sum
from server.secagg import SecAggTransport
from server.transport import GridTransport
from tests.deploy.test_secagg import InlineGrid

DEVICES = 4


def _fleet(ml100k: Interactions, folder: Path) -> dict[int, dict[str, Any]]:
    fleet = split_fleet(ml100k, folder, devices=DEVICES, rating_threshold=0.0, rng=np.random.default_rng(3))
    for k, device in enumerate(fleet):
        save_state(DeviceFiles.beside(device.data_path), DeviceState(device_seed=100 + k))
    return {10 + k: {"data-path": str(d.data_path)} for k, d in enumerate(fleet)}


def _run(config: RunConfig, transport: Any, run_dir: Path) -> dict[str, np.ndarray]:
    shared, history, _ = run_federated(config, transport, model=config.model.build(1682), run_dir=run_dir)
    assert history.rounds_run == config.federation.num_rounds and history.rejected == 0
    return shared


def test_the_same_round_with_and_without_secure_aggregation_gives_the_same_model(
    ml100k: Interactions, tmp_path: Path, flower_task_identity: None
) -> None:
    config = parse_run_config(
        {
            "model": "neumf", "gmf-dim": 4, "mlp-layers": "8,4", "seed": 2, "clipping-norm": 0.05, "num-rounds": 2, "eval-every": 0,
            "clients-per-round": DEVICES, "epsilon": 50.0, "ledger-key": str(tmp_path / "k.pem"),
        }
    )  # q = 1: every device in every round; C small enough that every update is clipped
    context = Context(1, 0, {}, RecordDict(), {})
    # two identical fleets (same split, same device seeds): devices keep private state on disk
    plain = _run(config, GridTransport(InlineGrid(_fleet(ml100k, tmp_path / "a")), config, expected_nodes=DEVICES, patience=1), tmp_path / "plain")
    secure = _run(
        config,
        SecAggTransport(InlineGrid(_fleet(ml100k, tmp_path / "b")), config, context=context, expected_nodes=DEVICES, timeout=60, patience=1),
        tmp_path / "secure",
    )
    start = init_shared(config.model.build(1682), seed=config.seed)
    moved = sum(float(np.abs(plain[n] - start[n]).max()) for n in plain)
    assert moved > 0
    step = 2 * config.privacy.clipping_norm / 4194304  # SecAgg+'s quantization step per device and coordinate
    for name in plain:
        # per round: DEVICES quantized updates / q N, through the server step (lr 1), over 2 rounds
        np.testing.assert_allclose(secure[name], plain[name], atol=2 * DEVICES * step + 1e-6, err_msg=name)


def test_a_presummed_part_is_bounded_by_k_times_c_not_clipped_to_c() -> None:
    rng = np.random.default_rng(0)
    like = {"w": np.zeros(50, dtype=np.float32)}
    updates = [clip_update({"w": rng.normal(size=50).astype(np.float32)}, max_norm=1.0)[0] for _ in range(5)]
    assert all(global_norm(u) == pytest.approx(1.0, rel=1e-5) for u in updates)
    total = {"w": sum_updates(updates, like)["w"].astype(np.float32)}
    one_by_one = clipped_sum((Part(u) for u in updates), max_norm=1.0, like=like)
    presummed = clipped_sum([Part(total, contributors=5)], max_norm=1.0, like=like)
    assert one_by_one.contributors == presummed.contributors == 5
    np.testing.assert_allclose(presummed.total["w"], one_by_one.total["w"], rtol=1e-6, atol=1e-6)
    # single updates' norms are reported (all at C here); a pre-summed part has none of its own
    assert len(one_by_one.norms) == 5 and presummed.norms == ()
    # a "sum" larger than k C (a broken or hostile aggregator) is cut to k C
    huge = clipped_sum([Part({"w": total["w"] * 100}, contributors=5)], max_norm=1.0, like=like)
    assert global_norm(huge.total) == pytest.approx(5.0, rel=1e-5)
    dp = DPFedAvg(noise_multiplier=0.0, clipping_norm=1.0, expected_clients=5.0)
    mean, summed = dp.aggregate_parts([Part(total, contributors=5)], like=like, rng=np.random.default_rng(1))
    assert summed.contributors == 5
    np.testing.assert_allclose(mean["w"], dp.aggregate(updates, like=like, rng=np.random.default_rng(1))["w"], atol=1e-6)
