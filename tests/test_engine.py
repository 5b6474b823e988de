"""The vectorised in-process engine against the per-device reference."""

from __future__ import annotations

import dataclasses
import os
import signal

import numpy as np
import pytest

from fedrec.config import RunConfig
from fedrec.engine.vectorised import LANES_ENV, VectorisedTransport, default_lanes
from fedrec.errors import FedrecError
from fedrec.federation.device import simulated_population
from fedrec.federation.rounds import InProcessTransport, run_federated
from fedrec.models import init_shared


def _run(config: RunConfig, transport, path):
    split = simulated_population(config).split
    return run_federated(config, transport, model=config.model.build(split.n_items), run_dir=path)


@pytest.mark.parametrize("dp", [True, False])
def test_vectorised_engine_equals_device_by_device(tiny_config: RunConfig, tmp_path, dp: bool) -> None:
    config = dataclasses.replace(
        tiny_config,
        federation=dataclasses.replace(tiny_config.federation, num_rounds=3, server_lr=2.0),
        privacy=dataclasses.replace(tiny_config.privacy, dp="user" if dp else "off", clipping_norm=0.05),
    )
    n = simulated_population(config).split.n_users
    ref_shared, ref_history, ref_test = _run(config, InProcessTransport(config, n), tmp_path / "ref")
    fast = VectorisedTransport(config)
    shared, history, test = _run(config, fast, tmp_path / "fast")
    assert [r["sampled"] for r in history.rounds] == [r["sampled"] for r in ref_history.rounds]
    assert history.rejected == ref_history.rejected == 0
    for name, value in ref_shared.items():
        np.testing.assert_allclose(shared[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    for name, value in ref_test.items():
        assert test[name] == pytest.approx(value, abs=1e-9), name
    if dp:
        assert history.privacy["epsilon"] == ref_history.privacy["epsilon"]


def _lane_config(tiny_config: RunConfig) -> RunConfig:
    return dataclasses.replace(
        tiny_config,
        data=dataclasses.replace(tiny_config.data, max_users=60),
        federation=dataclasses.replace(tiny_config.federation, num_rounds=3, clients_per_round=40, eval_every=0),
        privacy=dataclasses.replace(tiny_config.privacy, clipping_norm=0.05),
    )


def test_groups_split_the_round_by_history_length(tiny_config: RunConfig) -> None:
    transport = VectorisedTransport(_lane_config(tiny_config), lanes=1)
    clients = list(range(40))
    groups = transport._groups(clients)
    assert sorted(c for g in groups for c in g) == clients
    assert len(groups) >= 2 and max(len(g) for g in groups) <= 16
    for group in groups:  # similar lengths within a group; no group waits on a 4x longer history
        lengths = transport.history[group]
        assert lengths.max() <= 4 * lengths.min()
    assert transport._groups(list(reversed(clients))) == groups  # by the clients, not their order


def test_lanes_in_worker_processes_give_the_same_run(tiny_config: RunConfig, tmp_path) -> None:
    """A round's groups trained in two processes (one forked) = all of them in this one, exactly."""
    config = _lane_config(tiny_config)
    one = VectorisedTransport(config, lanes=1)
    with VectorisedTransport(config, lanes=2) as two:
        ref_shared, ref_history, ref_test = _run(config, one, tmp_path / "one")
        shared, history, test = _run(config, two, tmp_path / "two")
        assert len(two._lane_workers) == 1 and two._lane_workers[0].process.is_alive()
        assert two._lane_workers[0].jobs >= 3  # the worker trained groups in every round
    assert not two._lane_workers  # stopped on leaving the block
    assert [r["sampled"] for r in history.rounds] == [r["sampled"] for r in ref_history.rounds]
    for name, value in ref_shared.items():
        np.testing.assert_array_equal(shared[name], value, err_msg=name)
    np.testing.assert_array_equal(two.user_gmf.numpy(), one.user_gmf.numpy())
    assert two.started.tolist() == one.started.tolist()
    assert test == ref_test
    assert history.privacy["epsilon"] == ref_history.privacy["epsilon"]


def test_a_lane_that_dies_is_an_error_not_a_hang(tiny_config: RunConfig, tmp_path) -> None:
    config = _lane_config(tiny_config)
    transport = VectorisedTransport(config, lanes=2)
    shared = init_shared(config.model.build(simulated_population(config).split.n_items), seed=0)
    transport.train(list(range(40)), shared, 1)
    worker = transport._lane_workers[0]
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.join()
    with pytest.raises(FedrecError, match="died"):
        transport.train(list(range(40)), shared, 2)
    transport.close()


def test_a_failing_lane_reports_its_error(tiny_config: RunConfig, tmp_path) -> None:
    config = _lane_config(tiny_config)
    transport = VectorisedTransport(config, lanes=2)
    shared = init_shared(config.model.build(simulated_population(config).split.n_items), seed=0)
    broken = {**shared, "mlp.0.weight": shared["mlp.0.weight"][:, :3]}  # wrong shape: training fails in both lanes
    try:
        with pytest.raises((FedrecError, RuntimeError)):
            transport.train(list(range(40)), broken, 1)
        # the worker survived its error and still serves rounds
        assert transport._lane_workers[0].process.is_alive()
        assert len(transport.train(list(range(40)), shared, 2)) == 40
    finally:
        transport.close()
    assert not transport._lane_workers


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_lanes_setting_is_checked(monkeypatch, value: str) -> None:
    monkeypatch.setenv(LANES_ENV, value)
    with pytest.raises(FedrecError, match=LANES_ENV):
        default_lanes()


def test_lanes_setting_is_used(monkeypatch) -> None:
    monkeypatch.setenv(LANES_ENV, "3")
    assert default_lanes() == 3
    monkeypatch.delenv(LANES_ENV)
    assert default_lanes() >= 1


def test_a_feeder_failure_is_an_error_and_no_group_is_lost(tiny_config: RunConfig, monkeypatch) -> None:
    config = _lane_config(tiny_config)
    shared = init_shared(config.model.build(simulated_population(config).split.n_items), seed=0)
    with VectorisedTransport(config, lanes=2) as transport:
        transport._workers(1)
        worker = transport._lane_workers[0]
        original = worker.send

        def fail_on_groups(**message: object) -> None:
            if message["kind"] == "group":
                raise ValueError("cannot send")
            original(**message)

        monkeypatch.setattr(worker, "send", fail_on_groups)
        with pytest.raises(FedrecError, match="feeding an in-process engine lane failed: ValueError"):
            transport.train(list(range(40)), shared, 1)
