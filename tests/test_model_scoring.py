"""The factored all-items scoring equals the model's forward pass on every pair."""

from __future__ import annotations

import pytest
import torch

from fedrec.models import ModelConfig, SharedTower


@pytest.mark.parametrize("kind", ["neumf", "gmf"])
def test_score_users_equals_forward_on_every_pair(kind: str) -> None:
    config = ModelConfig(n_items=37, kind=kind, gmf_dim=6, mlp_layers=(10, 8, 4), init_std=0.5)
    gen = torch.Generator().manual_seed(0)
    tower = SharedTower(config, generator=gen)
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)  # biases too: nothing is zero
        users_gmf = torch.randn(5, config.gmf_dim, generator=gen)
        users_mlp = torch.randn(5, config.mlp_dim, generator=gen)
        scores = tower.score_users(users_gmf, users_mlp)
        items = torch.arange(config.n_items)
        for u in range(5):
            pairs = tower(users_gmf[u].expand(config.n_items, -1), users_mlp[u].expand(config.n_items, -1), items)
            torch.testing.assert_close(scores[u], pairs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tower.score_all(users_gmf[2], users_mlp[2]), scores[2])
