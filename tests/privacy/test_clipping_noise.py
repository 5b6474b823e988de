from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedrec.federation.fedavg import mean_updates
from fedrec.privacy.clipping import clip_update, global_norm
from fedrec.privacy.dp_fedavg import DPFedAvg
from fedrec.privacy.noise import add_gaussian_noise, noise_generator

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(
    a=arrays(np.float32, st.integers(0, 20), elements=finite),
    b=arrays(np.float32, (), elements=finite),
    c=st.floats(1e-3, 1e3),
)
def test_clipped_norm_never_exceeds_c_and_direction_is_kept(a, b, c) -> None:
    update = {"a": a, "scalar": b}
    clipped, norm = clip_update(update, max_norm=c)
    assert global_norm(clipped) <= c
    assert math.isclose(norm, global_norm(update), rel_tol=1e-6)
    if norm <= c:
        assert all(np.array_equal(clipped[k], update[k]) for k in update)
    else:  # one common factor for every tensor, the 0-d one included
        factor = c / norm
        assert np.allclose(clipped["scalar"], b * factor, rtol=1e-4, atol=1e-6)
        assert np.allclose(clipped["a"], a * factor, rtol=1e-4, atol=1e-6)


def test_zero_update_and_zero_dim_tensors() -> None:
    zero = {"w": np.zeros((3, 2), np.float32), "b": np.zeros((), np.float32)}
    clipped, norm = clip_update(zero, max_norm=1.0)
    assert norm == 0.0 and all(not v.any() for v in clipped.values())
    only_scalar = {"b": np.array(10.0, np.float32)}
    clipped, norm = clip_update(only_scalar, max_norm=2.0)
    assert norm == 10.0 and float(clipped["b"]) == pytest.approx(2.0)


def test_infinite_clip_is_identity() -> None:
    update = {"w": np.array([1e30, -3.0], np.float32)}
    clipped, _ = clip_update(update, max_norm=math.inf)
    assert np.array_equal(clipped["w"], update["w"])


def test_dp_with_no_noise_and_no_clipping_is_plain_fedavg_exactly() -> None:
    rng = np.random.default_rng(0)
    like = {"w": np.zeros((4, 3), np.float32), "b": np.zeros((), np.float32)}
    updates = [{k: rng.normal(size=v.shape).astype(np.float32) * 100 for k, v in like.items()} for _ in range(7)]
    dp = DPFedAvg(noise_multiplier=0.0, clipping_norm=math.inf, expected_clients=7)
    got = dp.aggregate(updates, like=like, rng=np.random.default_rng(1))
    want = mean_updates(updates, like, denominator=7)
    assert all(np.array_equal(got[k], want[k]) for k in like)


def test_dp_aggregate_is_the_mean_of_individually_clipped_updates_exactly() -> None:
    """Hostile-sized and honest updates mixed: each is clipped on its own, then summed in order."""
    rng = np.random.default_rng(2)
    like = {"w": np.zeros((5, 3), np.float32), "b": np.zeros((), np.float32)}
    updates = [
        {k: rng.normal(size=v.shape).astype(np.float32) * scale for k, v in like.items()}
        for scale in (1e-3, 1e6, 0.3, 1.0)
    ]
    dp = DPFedAvg(noise_multiplier=0.0, clipping_norm=0.5, expected_clients=3.5)
    got = dp.aggregate(iter(updates), like=like, rng=np.random.default_rng(1))  # a one-pass iterable is enough
    want = mean_updates([clip_update(u, max_norm=0.5)[0] for u in updates], like, denominator=3.5)
    assert all(np.array_equal(got[k], want[k]) for k in like)
    assert global_norm(got) <= 4 * 0.5 / 3.5


def test_noise_std_is_z_c_over_expected_clients() -> None:
    z, c, expected = 1.3, 0.7, 25.0
    dp = DPFedAvg(noise_multiplier=z, clipping_norm=c, expected_clients=expected)
    like = {"w": np.zeros(200_000, np.float32)}
    noise = dp.aggregate([], like=like, rng=noise_generator(seed=4, secure=False))["w"].astype(np.float64)
    n, sigma = noise.size, z * c / expected
    # The sample std of n normals has std sigma / sqrt(2n); allow 5 of those.
    assert abs(noise.std() - sigma) < 5 * sigma / math.sqrt(2 * n)
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(n)


def test_noise_is_reproducible_with_a_seed_and_not_in_secure_mode() -> None:
    total = {"w": np.zeros(10)}
    a = add_gaussian_noise(total, std=1.0, rng=noise_generator(seed=1, secure=False))
    b = add_gaussian_noise(total, std=1.0, rng=noise_generator(seed=1, secure=False))
    s1 = add_gaussian_noise(total, std=1.0, rng=noise_generator(seed=None, secure=True))
    s2 = add_gaussian_noise(total, std=1.0, rng=noise_generator(seed=None, secure=True))
    assert np.array_equal(a["w"], b["w"]) and not np.array_equal(s1["w"], s2["w"])
    assert np.array_equal(add_gaussian_noise(total, std=0.0, rng=noise_generator(seed=1, secure=False))["w"], total["w"])


@settings(max_examples=100, deadline=None)
@given(
    k=st.integers(1, 5),
    n=st.integers(0, 12),
    c=st.floats(1e-3, 1e3),
    data=st.data(),
)
def test_stacked_clipping_equals_per_client_clipping(k, n, c, data) -> None:
    import torch

    from fedrec.privacy.clipping import clip_stacked

    a = data.draw(arrays(np.float32, (k, n), elements=finite))
    s = data.draw(arrays(np.float32, (k,), elements=finite))
    a[0] = 0.0  # a zero update among them
    s[0] = 0.0
    clipped, norms = clip_stacked({"a": torch.from_numpy(a), "scalar": torch.from_numpy(s)}, max_norm=c)
    for row in range(k):
        ref, ref_norm = clip_update({"a": a[row], "scalar": s[row]}, max_norm=c)
        assert math.isclose(float(norms[row]), ref_norm, rel_tol=1e-9, abs_tol=1e-12)
        np.testing.assert_allclose(clipped["a"][row].numpy(), ref["a"], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(clipped["scalar"][row].numpy(), ref["scalar"], rtol=1e-6, atol=1e-12)
        assert global_norm({"a": clipped["a"][row].numpy(), "scalar": clipped["scalar"][row].numpy()}) <= c
