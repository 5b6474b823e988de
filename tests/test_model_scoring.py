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


@pytest.mark.parametrize("kind", ["neumf", "gmf"])
def test_stacked_logits_equal_each_clients_own_forward(kind: str) -> None:
    """The engine's stacked forward: a clients, each with its own copy of the tower."""
    from fedrec.models.neumf import stacked_logits

    config = ModelConfig(n_items=23, kind=kind, gmf_dim=6, mlp_layers=(10, 8, 4), init_std=0.5)
    gen = torch.Generator().manual_seed(1)
    towers = [SharedTower(config, generator=gen) for _ in range(3)]
    users_gmf = torch.randn(3, config.gmf_dim, generator=gen)
    users_mlp = torch.randn(3, config.mlp_dim, generator=gen)
    items = torch.randint(0, config.n_items, (3, 7), generator=gen)  # (a, B)
    with torch.no_grad():
        for tower in towers:
            for p in tower.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
        named = [dict(t.named_parameters()) for t in towers]
        dense = {n: torch.stack([d[n] for d in named]) for n in named[0] if not n.startswith("item_")}
        rows = {n: torch.stack([d[n][items[k]] for k, d in enumerate(named)]) for n in named[0] if n.startswith("item_")}
        linear = [n[: -len(".weight")] for n in named[0] if n.startswith("mlp.") and n.endswith(".weight")]
        got = stacked_logits(config, {**dense, "user_gmf": users_gmf, "user_mlp": users_mlp}, rows, linear_names=linear)
        for k, tower in enumerate(towers):
            want = tower(users_gmf[k].expand(7, -1), users_mlp[k].expand(7, -1), items[k])
            torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-5)
