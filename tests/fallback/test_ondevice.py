"""The hooks between the fallback and the on-device model: profile init and fold-in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.fallback.ondevice import fold_in, load_tower, profile_init
from fedrec.models import ModelConfig, init_shared
from fedrec.training.local import PrivateState, TrainConfig, init_private

MODEL = ModelConfig(n_items=30, gmf_dim=4, mlp_layers=(8, 4))


def test_profile_init_is_the_mean_embedding_of_the_profile_items() -> None:
    shared = init_shared(MODEL, seed=0)
    content = np.zeros(30)
    content[[5, 6]] = [0.9, 0.8]
    state = profile_init(shared=shared, model=MODEL, content_scores=content, given=np.array([1]), top=2)
    np.testing.assert_allclose(state.user_gmf, shared["item_gmf.weight"][[1, 5, 6]].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(state.user_mlp, shared["item_mlp.weight"][[1, 5, 6]].mean(axis=0), rtol=1e-6)
    empty = profile_init(shared=shared, model=MODEL, content_scores=np.zeros(30), given=np.empty(0, np.int64))
    np.testing.assert_allclose(empty.user_gmf, shared["item_gmf.weight"].mean(axis=0), rtol=1e-6)


def test_fold_in_moves_only_the_private_vectors_towards_the_items() -> None:
    shared = init_shared(MODEL, seed=0)
    before = {k: v.copy() for k, v in shared.items()}
    start = init_private(MODEL, rng=np.random.default_rng(0))
    items = np.array([3, 7])
    same = fold_in(shared=shared, model=MODEL, private=start, items=np.empty(0, np.int64), train=TrainConfig(), epochs=5, rng=np.random.default_rng(0))
    assert same is start
    fitted = fold_in(shared=shared, model=MODEL, private=start, items=items, train=TrainConfig(lr=0.05), epochs=30, rng=np.random.default_rng(0))
    for name, value in before.items():
        np.testing.assert_array_equal(shared[name], value)
    tower = load_tower(shared, MODEL)

    def mean_logit(state: PrivateState) -> float:
        with torch.no_grad():
            s = tower.score_all(torch.from_numpy(state.user_gmf), torch.from_numpy(state.user_mlp)).numpy()
        return float(s[items].mean() - np.delete(s, items).mean())

    assert mean_logit(fitted) > mean_logit(start)


def test_profile_init_can_take_the_length_of_a_trained_user() -> None:
    shared = init_shared(MODEL, seed=0)
    content = np.linspace(0, 1, 30)
    plain = profile_init(shared=shared, model=MODEL, content_scores=content, given=np.array([0]))
    scaled = profile_init(shared=shared, model=MODEL, content_scores=content, given=np.array([0]), norms=(2.0, 3.0))
    assert np.linalg.norm(scaled.user_gmf) == pytest.approx(2.0, rel=1e-5)
    assert np.linalg.norm(scaled.user_mlp) == pytest.approx(3.0, rel=1e-5)
    cosine = scaled.user_gmf @ plain.user_gmf / (np.linalg.norm(scaled.user_gmf) * np.linalg.norm(plain.user_gmf))
    assert cosine == pytest.approx(1.0, rel=1e-5)
