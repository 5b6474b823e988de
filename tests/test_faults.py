"""Hostile, broken and missing client updates against the real server loop (issue 7)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fedrec.config import RunConfig, parse_run_config
from fedrec.engine.vectorised import VectorisedTransport
from fedrec.federation.device import simulated_population
from fedrec.federation.faults import HOSTILE, CorruptingTransport, DropoutTransport, huge
from fedrec.federation.rounds import RunHistory, run_federated
from fedrec.models import Arrays, init_shared
from fedrec.privacy.audit import audit_run
from fedrec.privacy.clipping import global_norm
from fedrec.privacy.dp_fedavg import DPFedAvg
from fedrec.privacy.ledger import LEDGER, read_entries

HOSTILE_CLIENT = 2


def _config(tiny_config: RunConfig, **overrides: object) -> RunConfig:
    """tiny_config with every client sampled each round (rate 1), plain server SGD, and
    the RDP accountant (calibrating z with it is quicker than with PRV)."""
    flat = {**tiny_config.to_flat(), "clients-per-round": 6, "server-momentum": 0.0, "accountant": "rdp", **overrides}
    return parse_run_config(flat)


def _run(config: RunConfig, transport: object, run_dir: Path) -> tuple[Arrays, RunHistory]:
    model = config.model.build(simulated_population(config).split.n_items)
    shared, history, _ = run_federated(config, transport, model=model, run_dir=run_dir)  # type: ignore[arg-type]
    return shared, history


# What the rejection reason says for each kind (tensor names only).
REASONS = {
    "nan": "not finite", "inf": "not finite", "wrong-shape": "shape", "float64": "dtype float64",
    "int": "dtype int64", "extra-tensor": "unexpected", "missing-tensor": "missing",
    "private-user_gmf": "private tensors ['user_gmf']", "private-user_mlp": "private tensors ['user_mlp']",
    "not-an-array": "expected a numpy array", "not-a-mapping": "expected a mapping",
}


def test_every_hostile_kind_is_rejected_counted_and_logged(tiny_config, tmp_path, caplog) -> None:
    """One round, one client per kind of bad update, one honest client."""
    kinds = sorted(HOSTILE)
    assert set(kinds) == set(REASONS)
    n = len(kinds) + 1
    config = _config(tiny_config, **{"num-rounds": 1, "eval-every": 0, "max-users": n, "clients-per-round": n})
    transport = CorruptingTransport(VectorisedTransport(config), {c: HOSTILE[kind] for c, kind in enumerate(kinds)})
    with caplog.at_level(logging.WARNING, logger="fedrec.federation.rounds"):
        _, history = _run(config, transport, tmp_path / "run")
    info = history.rounds[0]
    assert info["sampled"] == n
    assert info["invalid"] == info["rejected"] == len(kinds) == history.rejected
    assert info["aggregated"] == 1  # the honest client only
    warnings = [r for r in caplog.records if "rejected an invalid update" in r.getMessage()]
    assert len(warnings) == len(kinds)
    for record, kind in zip(warnings, kinds):  # replies come back in the order sampled
        assert REASONS[kind] in record.getMessage(), kind
        assert isinstance(record.args, tuple) and len(record.args) == 2  # the round and the reason: no client id
    assert audit_run(tmp_path / "run").code == 0


def test_rejected_update_leaves_the_model_as_if_the_client_had_dropped_out(tiny_config, tmp_path) -> None:
    config = _config(tiny_config, **{"num-rounds": 1, "eval-every": 0})
    hostile, _ = _run(config, CorruptingTransport(VectorisedTransport(config), {HOSTILE_CLIENT: HOSTILE["nan"]}), tmp_path / "a")
    failed, history = _run(
        config, CorruptingTransport(VectorisedTransport(config), {HOSTILE_CLIENT: lambda u: None}), tmp_path / "b"
    )
    assert [r["rejected"] for r in history.rounds] == [1] and [r["invalid"] for r in history.rounds] == [0]
    for name in hostile:
        np.testing.assert_array_equal(hostile[name], failed[name])


def test_huge_norm_update_moves_the_model_no_more_than_an_honest_client(tiny_config, tmp_path) -> None:
    """Same seeds, so the same sample and the same noise in each run: the model difference
    is exactly the hostile client's clipped contribution, lr * clip(update) / (q N)."""
    config = _config(tiny_config, **{"num-rounds": 1, "eval-every": 0, "clipping-norm": 0.5, "server-lr": 3.0})
    honest, _ = _run(config, VectorisedTransport(config), tmp_path / "honest")
    attacked, _ = _run(config, CorruptingTransport(VectorisedTransport(config), {HOSTILE_CLIENT: huge(1e9)}), tmp_path / "huge")
    absent, _ = _run(config, CorruptingTransport(VectorisedTransport(config), {HOSTILE_CLIENT: lambda u: None}), tmp_path / "gone")
    bound = config.federation.server_lr * config.privacy.clipping_norm / 6  # lr C / expected clients
    attack_influence = global_norm({k: attacked[k].astype(np.float64) - absent[k] for k in attacked})
    honest_influence = global_norm({k: honest[k].astype(np.float64) - absent[k] for k in honest})
    assert 0 < honest_influence <= bound * (1 + 1e-4)
    assert bound * 0.999 <= attack_influence <= bound * (1 + 1e-4)  # clipped to exactly C, not 1e9


def test_dp_fedavg_bounds_each_client_by_c_over_expected_clients() -> None:
    like = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    rng = np.random.default_rng(0)
    honest = [{k: rng.normal(size=v.shape).astype(np.float32) * 0.01 for k, v in like.items()} for _ in range(9)]
    hostile = {k: np.full(v.shape, 1e9 / np.sqrt(15), np.float32) for k, v in like.items()}
    dp = DPFedAvg(noise_multiplier=0.0, clipping_norm=1.0, expected_clients=20.0)
    without = dp.aggregate(honest, like=like, rng=np.random.default_rng(1))
    with_attack = dp.aggregate([*honest, hostile], like=like, rng=np.random.default_rng(1))
    change = global_norm({k: with_attack[k].astype(np.float64) - without[k] for k in like})
    assert change == pytest.approx(1.0 / 20.0, rel=1e-4)


def test_dp_fedavg_divides_by_expected_clients_not_by_replies() -> None:
    """Dropouts shrink the sum, never the denominator: the noise on the mean stays z C / (q N)."""
    like = {"w": np.zeros(20_000, np.float32)}
    dp = DPFedAvg(noise_multiplier=1.5, clipping_norm=2.0, expected_clients=50.0)
    one = {"w": np.full(20_000, 0.01, np.float32)}
    for replies in (0, 5, 35):
        mean = dp.aggregate([one] * replies, like=like, rng=np.random.default_rng(replies))["w"]
        noise = mean - replies * 0.01 / 50.0
        assert np.std(noise) == pytest.approx(1.5 * 2.0 / 50.0, rel=0.03)  # 20k draws: std of std ~ 0.5 %
        assert abs(np.mean(noise)) < 5 * 0.06 / np.sqrt(20_000)


def test_run_with_30_percent_dropout_completes_and_ledger_verifies(tiny_config, tmp_path) -> None:
    config = _config(tiny_config, **{"num-rounds": 5, "eval-every": 0})
    transport = DropoutTransport(VectorisedTransport(config), rate=0.3, rng=np.random.default_rng(7))
    _, history = _run(config, transport, tmp_path / "run")
    assert history.rounds_run == 5 and not history.stopped_by_budget
    dropped = sum(transport.dropped)
    assert 0 < dropped < 30
    aggregated = sum(r["aggregated"] for r in history.rounds)
    assert aggregated == 30 - dropped  # every sampled client was either aggregated or dropped
    # an error reply is counted as rejected; a silent one just never arrives
    assert 0 < sum(r["rejected"] for r in history.rounds) <= dropped
    report = audit_run(tmp_path / "run")
    assert report.code == 0, report
    # every round is recorded with the run's z and q, whoever replied: dropouts cost no privacy
    rounds = [e for e in read_entries(tmp_path / "run" / LEDGER).entries if e.get("kind") == "round"]
    assert len(rounds) == 5
    assert {(e["noise_multiplier"], e["sample_rate"]) for e in rounds} == {
        (history.privacy["noise_multiplier"], history.sample_rate)
    }
    assert history.privacy["epsilon"] <= config.privacy.epsilon


def test_dropout_rate_is_checked(tiny_config) -> None:
    with pytest.raises(ValueError, match="dropout rate"):
        DropoutTransport(VectorisedTransport(tiny_config), rate=1.5, rng=np.random.default_rng(0))


def test_init_shared_is_what_check_update_expects(tiny_config) -> None:
    """Honest updates are float32: the dtype rule rejects no real device."""
    model = tiny_config.model.build(simulated_population(tiny_config).split.n_items)
    assert {v.dtype for v in init_shared(model, seed=0).values()} == {np.dtype(np.float32)}
