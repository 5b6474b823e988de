"""The vectorised population sums: the same floats as the per-device uploads, every
device within C, the same run and ledger, and bounded memory per simulated user."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fedrec.config import parse_run_config
from fedrec.data.split import LeaveOneOutSplit, leave_one_out
from fedrec.data.synthetic import SyntheticSpec, generate
from fedrec.deploy.catalog import run_catalog
from fedrec.dpease.population import Histories, PopulationStatistics, _clip_rows, count_sums, gram_sums
from fedrec.dpease.run import GRAM, InProcessStatistics, run_dp_ease
from fedrec.dpease.statistics import COUNTS, count_statistic, gram_statistic, last_positions, packed_size
from fedrec.federation.device import simulated_population
from fedrec.privacy.clipping import clip_update, global_norm
from fedrec.privacy.ledger import LEDGER, read_entries

ITEMS = 60


def _split(seed: int = 0, users: int = 300) -> LeaveOneOutSplit:
    """Histories with repeated items (the last occurrence counts) and some users with
    none of the top items."""
    rng = np.random.default_rng(seed)
    train = [rng.integers(0, ITEMS, size=int(rng.integers(0, 25))) for _ in range(users)]
    indptr = np.concatenate([[0], np.cumsum([t.shape[0] for t in train])]).astype(np.int64)
    return LeaveOneOutSplit(
        n_items=ITEMS, users=np.arange(users), train_indptr=indptr, train_items=np.concatenate(train).astype(np.int64),
        val_item=np.zeros(users, np.int64), test_item=np.ones(users, np.int64),
        val_negatives=np.zeros((users, 3), np.int64), test_negatives=np.zeros((users, 3), np.int64),
    )


def _per_device(split: LeaveOneOutSplit, phase: str, *, c: float, top: np.ndarray, decay: float) -> np.ndarray:
    """The per-device path's sum: dense uploads, clipped by the server, added in order."""
    total = np.zeros(ITEMS if phase == "counts" else packed_size(top.shape[0]), dtype=np.float64)
    for user in range(split.n_users):
        items = split.train_of(user)
        upload = (
            count_statistic(items, n_items=ITEMS, clipping_norm=c) if phase == "counts"
            else gram_statistic(items, top_items=top, clipping_norm=c, pair_decay=decay)
        )
        clipped, _ = clip_update(upload, max_norm=c)
        total += clipped[COUNTS if phase == "counts" else GRAM]
    return total


@pytest.mark.parametrize("decay", [1.0, 0.97, 0.5])
@pytest.mark.parametrize("c", [0.3, 2.0])
def test_one_chunk_gives_the_per_device_sums_exactly(decay: float, c: float) -> None:
    split = _split()
    histories = Histories.of(split)
    users = np.arange(split.n_users)
    top = np.random.default_rng(1).permutation(ITEMS)[:25]
    (counts,) = list(count_sums(histories, users, clipping_norm=c))
    (gram,) = list(gram_sums(histories, users, top_items=top, clipping_norm=c, pair_decay=decay))
    np.testing.assert_array_equal(counts.total, _per_device(split, "counts", c=c, top=top, decay=decay))
    # the pair weights' norm is summed by bincount on one path, np.linalg.norm on the
    # other: a value may differ in its last float32 bit, hence the relative 1e-6
    np.testing.assert_allclose(gram.total, _per_device(split, "gram", c=c, top=top, decay=decay), rtol=1e-6, atol=0)
    assert counts.devices == gram.devices == split.n_users


def test_chunked_sums_match_to_float64_rounding_and_every_device_stays_within_c() -> None:
    split, c = _split(seed=3), 1.5
    histories = Histories.of(split)
    users = np.arange(split.n_users)
    top = np.arange(40)[::-1].copy()
    counts = list(count_sums(histories, users, clipping_norm=c, chunk=7))
    grams = list(gram_sums(histories, users, top_items=top, clipping_norm=c, pair_decay=0.9, pairs_per_chunk=100))
    assert len(counts) > 1 and len(grams) > 1 and sum(g.devices for g in grams) == split.n_users
    np.testing.assert_allclose(sum(p.total for p in counts), _per_device(split, "counts", c=c, top=top, decay=0.9), rtol=1e-12)
    np.testing.assert_allclose(sum(p.total for p in grams), _per_device(split, "gram", c=c, top=top, decay=0.9), rtol=1e-6)
    for parts, phase in ((counts, "counts"), (grams, "gram")):
        norms = np.concatenate([p.norms for p in parts])
        assert norms.shape == (split.n_users,) and norms.max() <= c
        for user in range(split.n_users):  # each device's norm is the norm of its own upload
            items = split.train_of(user)
            upload = (
                count_statistic(items, n_items=ITEMS, clipping_norm=c) if phase == "counts"
                else gram_statistic(items, top_items=top, clipping_norm=c, pair_decay=0.9)
            )
            assert norms[user] == pytest.approx(global_norm(upload), rel=1e-6, abs=1e-12)


def test_histories_keep_each_items_last_position() -> None:
    split = _split(seed=5, users=50)
    histories = Histories.of(split)
    for user in range(split.n_users):
        items, last = last_positions(split.train_of(user))
        lo, hi = histories.indptr[user], histories.indptr[user + 1]
        np.testing.assert_array_equal(histories.items[lo:hi], items)
        np.testing.assert_array_equal(histories.last[lo:hi], last)


def test_the_servers_clipping_scales_a_device_above_c_as_clip_update_does() -> None:
    rng = np.random.default_rng(2)
    sizes = np.array([3, 5, 4, 1])
    owner = np.repeat(np.arange(4), sizes)
    values = (rng.normal(size=owner.shape[0]) * np.array([0.1, 3.0, 0.2, 9.0])[owner]).astype(np.float32)
    clipped, norms = _clip_rows(values, owner, devices=4, clipping_norm=1.0)
    for device in range(4):
        expected, norm = clip_update({"x": values[owner == device]}, max_norm=1.0)
        np.testing.assert_array_equal(clipped[owner == device], expected["x"])
        assert norms[device] == pytest.approx(norm, rel=1e-12)
        assert global_norm({"x": clipped[owner == device]}) <= 1.0
    assert (norms > 1.0).sum() == 2


def test_a_run_gives_the_per_device_release_and_ledger(tmp_path: Path) -> None:
    config = parse_run_config(
        {
            "model": "dp-ease", "dataset": "synthetic", "synthetic-users": 150, "synthetic-items": 200,
            "synthetic-interactions": 12, "num-eval-negatives": 20, "seed": 1, "epsilon": 50.0,
            "ledger-key": str(tmp_path / "keys" / "ledger.pem"),
        }
    )
    split = simulated_population(config).split
    c = config.privacy.clipping_norm
    runs = {}
    for name, transport in (("device", InProcessStatistics(split, clipping_norm=c)), ("population", PopulationStatistics(split, clipping_norm=c))):
        runs[name] = run_dp_ease(config, transport, run_dir=tmp_path / name, catalog=run_catalog(config))
    (release, history, val, test), (expected, expected_history, expected_val, expected_test) = runs["population"], runs["device"]
    assert history.top_items > 1 and history.top_items == expected_history.top_items
    for name, value in expected.to_arrays().items():
        np.testing.assert_allclose(release.to_arrays()[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert [p["aggregated"] for p in history.phases] == [p["aggregated"] for p in expected_history.phases] == [150, 150]
    fields = ("kind", "mechanism", "noise_multiplier", "sample_rate", "clipping_norm", "clients")

    def releases(run: str) -> list[tuple[object, ...]]:
        return [tuple(e.get(f) for f in fields) for e in read_entries(tmp_path / run / LEDGER).entries if e.get("kind") == "release"]

    assert releases("population") == releases("device") and len(releases("device")) == 2
    assert history.privacy["epsilon"] == expected_history.privacy["epsilon"]
    assert test == pytest.approx(expected_test, abs=1e-3) and val == pytest.approx(expected_val, abs=1e-3)


def test_memory_per_simulated_user_is_bounded() -> None:
    users = 20_000
    data = generate(SyntheticSpec(n_users=users, n_items=1000, mean_interactions=20), rng=np.random.default_rng(0))
    split = leave_one_out(data, rng=np.random.default_rng(1), num_eval_negatives=5)
    top = np.arange(300)
    tracemalloc.start()
    transport = PopulationStatistics(split, clipping_norm=1.0)
    clients = transport.clients()
    for phase, request in (("counts", {}), ("gram", {"top_items": top, "pair_decay": np.array([0.97])})):
        for part in transport.statistics(clients, phase, request):
            assert part.contributors >= 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the distinct histories (about 20 items a user) and one chunk of pairs; the split itself is
    # not counted (4.1 KB a user measured here; the chunk is capped, so it falls with more users)
    assert peak / users < 6 * 1024, f"{peak / users:.0f} bytes per simulated user"
