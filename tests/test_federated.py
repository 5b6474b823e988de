from __future__ import annotations

import numpy as np

from fedrec.evaluation.scoring import evaluate_scorer
from fedrec.federation.device import simulated_population
from fedrec.federation.fedavg import ServerOptimizer, mean_updates
from fedrec.federation.rounds import InProcessTransport, PoissonSampler, check_update, run_federated
from fedrec.models import SharedTower, load_shared


def test_federated_evaluation_equals_direct_computation(tiny_config, tmp_path) -> None:
    split = simulated_population(tiny_config).split
    model = tiny_config.model.build(split.n_items)
    transport = InProcessTransport(tiny_config, split.n_users)
    shared, _, test = run_federated(tiny_config, transport, model=model, run_dir=tmp_path / "run")
    # Direct: one score matrix for all users from the same shared + private vectors.
    import torch

    tower = SharedTower(model, generator=None)
    load_shared(tower, shared)
    private = [transport.private.get(u) or transport.devices[u].fresh_private(tiny_config.seed) for u in range(split.n_users)]

    def score(users: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.stack(
                [tower.score_all(torch.from_numpy(private[u].user_gmf), torch.from_numpy(private[u].user_mlp)).numpy() for u in users]
            )

    direct = evaluate_scorer(score, split, which="test")
    assert direct.keys() == test.keys()
    for name in test:
        assert abs(direct[name] - test[name]) < 1e-12, name


def test_same_seed_same_model_different_seed_different(tiny_config, tmp_path) -> None:
    split = simulated_population(tiny_config).split
    model = tiny_config.model.build(split.n_items)
    a, _, ma = run_federated(tiny_config, InProcessTransport(tiny_config, split.n_users), model=model, run_dir=tmp_path / "a")
    b, _, mb = run_federated(tiny_config, InProcessTransport(tiny_config, split.n_users), model=model, run_dir=tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a) and ma == mb
    from dataclasses import replace

    other = replace(tiny_config, seed=tiny_config.seed + 1)
    c, _, _ = run_federated(
        other, InProcessTransport(other, simulated_population(other).split.n_users), model=model, run_dir=tmp_path / "c"
    )
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_mean_and_server_step() -> None:
    like = {"w": np.zeros(2, np.float32)}
    mean = mean_updates([{"w": np.array([1.0, 2.0])}, {"w": np.array([3.0, 0.0])}], like, denominator=2)
    assert mean["w"].tolist() == [2.0, 1.0]
    params, buf = ServerOptimizer(lr=0.5, momentum=0.9).step({"w": np.ones(2, np.float32)}, mean, None)
    assert params["w"].tolist() == [2.0, 1.5]
    params, _ = ServerOptimizer(lr=0.5, momentum=0.9).step(params, mean, buf)
    assert np.allclose(params["w"], [2.0 + 0.5 * 3.8, 1.5 + 0.5 * 1.9])


def test_poisson_sampler_rate_and_expectation() -> None:
    sampler = PoissonSampler(expected_clients=100, population=943)
    rng = np.random.default_rng(0)
    sizes = [len(sampler.sample(list(range(943)), rng)) for _ in range(400)]
    assert abs(np.mean(sizes) - 100) < 3  # std of the mean ~ 0.47
    assert sampler.expected_clients == 100


def test_bad_updates_are_rejected() -> None:
    spec = {"a": (2,), "b": (1, 3)}
    good = {"a": np.zeros(2, np.float32), "b": np.zeros((1, 3), np.float32)}
    assert check_update(good, spec) == ""
    assert "shape" in check_update({**good, "a": np.zeros(3, np.float32)}, spec)
    assert "finite" in check_update({**good, "a": np.array([np.nan, 0], np.float32)}, spec)
    assert "private" in check_update({**good, "user_gmf": np.zeros(2, np.float32)}, spec)
    assert "unexpected" in check_update({**good, "c": np.zeros(2, np.float32)}, spec)
    assert "missing" in check_update({"a": good["a"]}, spec)
