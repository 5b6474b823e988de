"""The vectorised local update against the per-device reference, client by client."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.data import LeaveOneOutSplit
from fedrec.federation.compression import payload_bytes
from fedrec.federation.fedavg import client_rng
from fedrec.federation.rounds import check_update
from fedrec.models import ModelConfig, init_shared, shared_spec
from fedrec.privacy.clipping import clip_update, global_norm
from fedrec.training.batched import CompactUpload, local_update_batched
from fedrec.training.local import TrainConfig, init_private, local_update


@pytest.mark.parametrize(
    ("kind", "train"),
    [
        ("neumf", TrainConfig()),
        ("neumf", TrainConfig(local_epochs=2, batch_size=16, user_lr_scale=3.0)),
        ("gmf", TrainConfig(optimizer="sgd", lr=0.1, num_negatives=2)),
    ],
)
def test_batched_equals_per_device(ml100k_split: LeaveOneOutSplit, kind: str, train: TrainConfig) -> None:
    model = ModelConfig(n_items=ml100k_split.n_items, kind=kind, gmf_dim=8, mlp_layers=(16, 8))
    shared = init_shared(model, seed=1)
    spec = shared_spec(model)
    users = [5, 0, 17, 3, 250]  # different history lengths, so different step counts
    data = [ml100k_split.client(u) for u in users]
    private = [init_private(model, rng=np.random.default_rng(u)) for u in users]
    batched = local_update_batched(
        shared=shared,
        user_gmf=torch.from_numpy(np.stack([p.user_gmf for p in private])),
        user_mlp=torch.from_numpy(np.stack([p.user_mlp for p in private])),
        data=data, model=model, train=train,
        rngs=[client_rng(seed=0, round_=1, client=u) for u in users],
    )
    assert len({int(n) for n in batched.examples}) > 1
    for k, u in enumerate(users):
        ref = local_update(
            shared=shared, private=private[k], data=data[k], model=model, train=train,
            rng=client_rng(seed=0, round_=1, client=u),
        )
        assert set(batched.update) == set(ref.update)
        for name, value in ref.update.items():
            np.testing.assert_allclose(batched.client_update(k, spec)[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(batched.user_gmf[k].numpy(), ref.private.user_gmf, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(batched.user_mlp[k].numpy(), ref.private.user_mlp, rtol=1e-4, atol=1e-6)
        assert batched.examples[k] == ref.num_examples
        assert batched.loss[k] == pytest.approx(ref.loss, rel=1e-5)


def test_compact_upload_reads_as_the_dense_upload(ml100k_split: LeaveOneOutSplit) -> None:
    model = ModelConfig(n_items=ml100k_split.n_items, gmf_dim=8, mlp_layers=(16, 8))
    shared, spec = init_shared(model, seed=1), shared_spec(model)
    users = [5, 0, 17]
    private = [init_private(model, rng=np.random.default_rng(u)) for u in users]
    batched = local_update_batched(
        shared=shared,
        user_gmf=torch.from_numpy(np.stack([p.user_gmf for p in private])),
        user_mlp=torch.from_numpy(np.stack([p.user_mlp for p in private])),
        data=[ml100k_split.client(u) for u in users], model=model, train=TrainConfig(),
        rngs=[client_rng(seed=0, round_=1, client=u) for u in users],
    )
    for k in range(len(users)):
        dense, lazy = batched.client_update(k, spec), CompactUpload(batched, k, spec)
        assert list(lazy) == list(dense) and len(lazy) == len(dense)
        assert check_update(lazy, spec) == "" and payload_bytes(lazy) == payload_bytes(dense)
        for name, value in dense.items():
            assert lazy[name].dtype == np.float32 and np.array_equal(lazy[name], value)
            with pytest.raises(ValueError, match="read-only"):  # every read gives the same values
                lazy[name].reshape(-1)[0] = 1.0
        assert np.count_nonzero(lazy["item_gmf.weight"].any(axis=1)) <= batched.n_used[k]
        # reading another client's upload in between changes nothing
        other = CompactUpload(batched, (k + 1) % len(users), spec)
        assert not np.array_equal(other["item_gmf.weight"], dense["item_gmf.weight"])
        assert np.array_equal(lazy["item_gmf.weight"], dense["item_gmf.weight"])
        with pytest.raises(KeyError):
            lazy["user_gmf"]
        # the server's clipping and sum give what they give on the dense arrays
        assert global_norm(lazy) == global_norm(dense)
        assert all(np.array_equal(a, b) for a, b in zip(clip_update(lazy, max_norm=0.01)[0].values(),
                                                         clip_update(dense, max_norm=0.01)[0].values()))
