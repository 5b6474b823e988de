"""Upload quantization: the codec, the server's decode path and DP's re-clipping."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from fedrec.config import RunConfig, parse_run_config
from fedrec.engine.vectorised import VectorisedTransport
from fedrec.errors import ConfigError
from fedrec.experiments.run import run_and_report, upload_summary
from fedrec.federation.compression import CODES, decode_update, encode_update, payload_bytes, payload_scales
from fedrec.federation.device import simulated_population
from fedrec.federation.faults import CorruptingTransport
from fedrec.federation.rounds import InProcessTransport, run_federated
from fedrec.models import shared_spec
from fedrec.privacy.audit import audit_run
from fedrec.privacy.clipping import clip_update, global_norm
from fedrec.privacy.dp_fedavg import DPFedAvg

SPEC = {"a": (30, 4), "b": (7,), "c": ()}


def _update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, 0.1, size=shape).astype(np.float32) for name, shape in SPEC.items()}


def _roundtrip(update, bits, seed=0):
    payload = encode_update(update, bits=bits, rng=np.random.default_rng(seed))
    decoded, problem = decode_update(payload, {n: v.shape for n, v in update.items()}, bits=bits)
    assert problem == "" and decoded is not None
    return payload, decoded


@pytest.mark.parametrize("bits", [4, 8])
def test_roundtrip_error_is_below_one_step_and_payload_is_small(bits: int) -> None:
    update = _update()
    payload, decoded = _roundtrip(update, bits)
    assert set(payload) == {CODES} and payload[CODES].dtype == np.uint8
    n = sum(v.size for v in update.values())
    assert payload_bytes(payload) == (n if bits == 8 else (n + 1) // 2) + 8 * len(SPEC)
    for i, name in enumerate(sorted(SPEC)):
        assert decoded[name].dtype == np.float32 and decoded[name].shape == SPEC[name]
        step = float(payload_scales(payload, len(SPEC))[i, 1])
        assert np.all(np.abs(decoded[name] - update[name]) <= step * (1 + 1e-5) + 1e-7), name
        # every decoded value lies on the tensor's own grid, inside its range
        assert decoded[name].min() >= update[name].min() - 1e-7 and decoded[name].max() <= update[name].max() + step


@pytest.mark.parametrize("bits", [4, 8])
def test_stochastic_rounding_is_unbiased(bits: int) -> None:
    update = _update(1)
    trials = 2000
    total = {n: np.zeros(v.shape) for n, v in update.items()}
    steps = {}
    for seed in range(trials):
        payload, decoded = _roundtrip(update, bits, seed)
        for n in total:
            total[n] += decoded[n]
        steps = {n: float(payload_scales(payload, len(SPEC))[i, 1]) for i, n in enumerate(sorted(SPEC))}
    for n, value in update.items():
        # per coordinate the rounding error has std <= step / 2: the mean of 2000 is within 5 sigma
        bound = 5 * steps[n] / 2 / np.sqrt(trials) + 1e-7
        assert np.all(np.abs(total[n] / trials - value) <= bound), n
    # and it is not deterministic rounding: the same update gives different codes for different seeds
    a = encode_update(update, bits=bits, rng=np.random.default_rng(0))[CODES]
    b = encode_update(update, bits=bits, rng=np.random.default_rng(1))[CODES]
    assert not np.array_equal(a, b)


def test_same_generator_same_payload() -> None:
    update = _update()
    a = encode_update(update, bits=8, rng=np.random.default_rng(5))
    b = encode_update(update, bits=8, rng=np.random.default_rng(5))
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bits", [4, 8])
def test_zero_constant_and_scalar_tensors_are_exact(bits: int) -> None:
    update = {"a": np.zeros((30, 4), np.float32), "b": np.full(7, -0.25, np.float32), "c": np.array(1.5, np.float32)}
    _, decoded = _roundtrip(update, bits)
    for name, value in update.items():
        np.testing.assert_array_equal(decoded[name], value)


def test_bits_zero_sends_the_dense_update() -> None:
    update = _update()
    assert encode_update(update, bits=0, rng=np.random.default_rng(0)) is update


def test_non_finite_update_decodes_to_nan_and_is_rejected_by_check_update() -> None:
    from fedrec.federation.rounds import check_update

    update = _update()
    update["b"][2] = np.inf
    _, decoded = _roundtrip(update, 8)
    assert "not finite" in check_update(decoded, SPEC)


def _good_payload(bits: int = 8) -> dict[str, np.ndarray]:
    return encode_update(_update(), bits=bits, rng=np.random.default_rng(0))


def _negative_step(blob: np.ndarray) -> np.ndarray:
    out = blob.copy()
    out[4:8] = np.array([-1.0], dtype="<f4").view(np.uint8)  # the first tensor's step
    return out


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (np.zeros(3), "expected a mapping"),
        ({}, "must hold exactly"),
        ({**_good_payload(), "user_gmf": np.zeros(3, np.float32)}, "'user_gmf'"),
        ({**_good_payload(), CODES: _good_payload()[CODES].astype(np.int16)}, "expected uint8"),
        ({**_good_payload(), CODES: _good_payload()[CODES][:-1]}, "expected uint8"),
        ({**_good_payload(), CODES: [1, 2, 3]}, "is list"),
        ({CODES: _good_payload()[CODES][8:]}, "expected uint8"),  # scales cut short
        ({CODES: _negative_step(_good_payload()[CODES])}, "negative step"),
        (_good_payload(4), "expected uint8"),  # a 4-bit payload where 8-bit codes are expected
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(payload, reason: str) -> None:
    decoded, problem = decode_update(payload, SPEC, bits=8)
    assert decoded is None and reason in problem


@pytest.mark.parametrize("value", ["2", "16", "-8", "eight"])
def test_config_rejects_bad_upload_bits(value: str) -> None:
    with pytest.raises(ConfigError, match="upload-bits"):
        parse_run_config({"upload-bits": value})


def test_config_accepts_upload_bits() -> None:
    assert parse_run_config({"upload-bits": "8"}).federation.upload_bits == 8
    assert RunConfig().federation.upload_bits == 0


def test_server_reclips_a_decoded_update_to_the_clipping_norm() -> None:
    """Quantization may push a clipped update past C by a rounding step per coordinate;
    DPFedAvg clips every decoded update again, so one user still moves the sum by <= C."""
    c = 0.5
    rng = np.random.default_rng(0)
    over = 0
    for seed in range(50):
        update = {n: rng.normal(0, 1, size=s).astype(np.float32) for n, s in SPEC.items()}
        clipped = clip_update(update, max_norm=c)[0]
        _, decoded = _roundtrip(clipped, 4, seed)
        over += global_norm(decoded) > c
        dp = DPFedAvg(noise_multiplier=0.0, clipping_norm=c, expected_clients=1.0)
        summed = dp.aggregate([decoded], like=clipped, rng=np.random.default_rng(0))
        assert global_norm(summed) <= c * (1 + 1e-6)
    assert over > 0  # the case the server's clip is there for does happen


def _tiny(config: RunConfig, bits: int) -> RunConfig:
    return dataclasses.replace(config, federation=dataclasses.replace(config.federation, upload_bits=bits))


@pytest.mark.parametrize(("engine", "bits"), [("vectorised", 8), ("device", 4)])
def test_quantized_run_completes_reports_bytes_and_ledger_verifies(tiny_config: RunConfig, tmp_path, engine: str, bits: int) -> None:
    config = _tiny(tiny_config, bits)
    n = simulated_population(config).split.n_users
    transport = VectorisedTransport(config) if engine == "vectorised" else InProcessTransport(config, n)
    results = run_and_report(config, transport, out_dir=tmp_path / "run", engine=engine)
    assert results["rejected_updates"] == 0 and results["rounds"] == 2
    dense = results["upload_bytes_dense_float32"]
    assert dense == 4 * sum(int(np.prod(s)) for s in VectorisedTransport(config).spec.values())
    n_tensors = len(VectorisedTransport(config).spec)
    values = dense // 4
    assert results["upload_bytes_per_client"] == (values if bits == 8 else (values + 1) // 2) + 8 * n_tensors
    assert results["upload_ratio_vs_dense"] <= bits / 32 + (8 * n_tensors + 1) / dense  # + a padding nibble
    assert all(np.isfinite(r["upload_bytes"]) for r in results["round_log"])
    assert np.isfinite(results["ndcg@10"])
    assert audit_run(tmp_path / "run").code == 0
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["upload_bits"] == bits and stored["config"]["upload-bits"] == bits


def test_upload_summary_of_a_dense_run(tiny_config: RunConfig) -> None:
    model = tiny_config.model.build(50)
    dense = 4 * sum(int(np.prod(s)) for s in shared_spec(model).values())
    summary = upload_summary(tiny_config, model, [{"upload_bytes": float(dense)}, {"upload_bytes": float("nan")}])
    assert summary == {
        "upload_bits": 0, "upload_bytes_per_client": dense, "upload_bytes_dense_float32": dense, "upload_ratio_vs_dense": 1.0,
    }


def test_malformed_encoded_updates_are_counted_invalid(tiny_config: RunConfig, tmp_path) -> None:
    config = _tiny(tiny_config, 8)
    split = simulated_population(config).split
    inner = VectorisedTransport(config)
    dense = {c: (lambda p: decode_update(p, inner.spec, bits=8)[0]) for c in (0, 1)}  # a device that sends float32
    transport = CorruptingTransport(inner, dense)
    _, history, _ = run_federated(config, transport, model=config.model.build(split.n_items), run_dir=tmp_path / "r")
    invalid = sum(r["invalid"] for r in history.rounds)
    assert invalid > 0 and history.rejected == invalid
