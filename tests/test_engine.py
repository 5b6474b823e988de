"""The vectorised in-process engine against the per-device reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedrec.client import simulated_population
from fedrec.config import RunConfig
from fedrec.engine import VectorisedTransport
from fedrec.runner import InProcessTransport, run_federated


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
