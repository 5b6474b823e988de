"""NeuMF (He et al., 2017, "Neural Collaborative Filtering", Sec. 3.4), split for FL.

The model is two modules with no parameter in common:

* :class:`SharedTower` holds everything clients share: item embeddings of the GMF and
  MLP branches, the MLP tower and the output layer. Only its tensors are ever uploaded.
* :class:`UserEmbeddings` holds the private user vectors. On a device it has one row
  and it never leaves the device; centrally it has one row per user.

``kind="gmf"`` drops the MLP branch (plain matrix factorisation with a learned
output weight, He et al. Sec. 3.2).
"""

from __future__ import annotations

import torch
from torch import nn

from fedrec.models.spec import ModelConfig, ModelKind


class SharedTower(nn.Module):
    """Shared parameters: item embeddings, MLP tower, output layer."""

    def __init__(self, config: ModelConfig, *, generator: torch.Generator | None) -> None:
        super().__init__()
        self.config = config
        self.item_gmf = nn.Embedding(config.n_items, config.gmf_dim)
        predictive = config.gmf_dim
        if config.kind == ModelKind.NEUMF:
            self.item_mlp = nn.Embedding(config.n_items, config.mlp_dim)
            layers: list[nn.Module] = []
            for d_in, d_out in zip(config.mlp_layers[:-1], config.mlp_layers[1:]):
                layers += [nn.Linear(d_in, d_out), nn.ReLU()]
            self.mlp = nn.Sequential(*layers)
            predictive += config.mlp_layers[-1]
        self.output = nn.Linear(predictive, 1)
        if generator is not None:  # None: shapes only (meta device) or weights loaded next
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator) -> None:
        g = generator
        nn.init.normal_(self.item_gmf.weight, std=self.config.init_std, generator=g)
        if self.config.kind == ModelKind.NEUMF:
            nn.init.normal_(self.item_mlp.weight, std=self.config.init_std, generator=g)
            for layer in self.mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight, generator=g)
                    nn.init.zeros_(layer.bias)
        nn.init.kaiming_uniform_(self.output.weight, a=1, nonlinearity="sigmoid", generator=g)
        nn.init.zeros_(self.output.bias)

    def forward(self, user_gmf: torch.Tensor, user_mlp: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits for (user vector, item) pairs.

        ``user_gmf`` (B, g), ``user_mlp`` (B, m), ``items`` (B,) -> (B,).
        """
        parts = [user_gmf * self.item_gmf(items)]  # (B, g)
        if self.config.kind == ModelKind.NEUMF:
            parts.append(self.mlp(torch.cat([user_mlp, self.item_mlp(items)], dim=-1)))  # (B, last)
        return self.output(torch.cat(parts, dim=-1)).squeeze(-1)

    def score_all(self, user_gmf: torch.Tensor, user_mlp: torch.Tensor) -> torch.Tensor:
        """Logits of every item for one user: ``(g,), (m,) -> (n_items,)``."""
        return self.score_users(user_gmf.unsqueeze(0), user_mlp.unsqueeze(0))[0]

    def score_users(self, user_gmf: torch.Tensor, user_mlp: torch.Tensor) -> torch.Tensor:
        """Logits of every item for U users: ``(U, g), (U, m) -> (U, n_items)``.

        :meth:`forward` for all (user, item) pairs, factored: the GMF part is one matrix
        product, and the first MLP layer is split into its user and item halves, each
        computed once, so only the layers after it run per pair.
        """
        g = self.config.gmf_dim
        w = self.output.weight[0]  # (g + last,)
        scores = torch.addmm(self.output.bias, user_gmf * w[:g], self.item_gmf.weight.T)  # (U, n)
        if self.config.kind == ModelKind.NEUMF:
            m = self.config.mlp_dim
            first = self.mlp[0]
            assert isinstance(first, nn.Linear)
            user = torch.addmm(first.bias, user_mlp, first.weight[:, :m].T)  # (U, h1)
            item = self.item_mlp.weight @ first.weight[:, m:].T  # (n, h1)
            h = self.mlp[2:](torch.relu(user.unsqueeze(1) + item.unsqueeze(0)))  # (U, n, last)
            scores = scores + h @ w[g:]
        return scores


def stacked_logits(
    config: ModelConfig, p: dict[str, torch.Tensor], rows: dict[str, torch.Tensor], *, linear_names: list[str]
) -> torch.Tensor:
    """:meth:`SharedTower.forward` for ``a`` clients' own copies of the model at once.

    ``p``: each client's dense tensors stacked, (a, *shape), named as in
    :class:`SharedTower` plus ``user_gmf`` / ``user_mlp``; ``rows``: each item embedding's
    rows for the clients' mini-batches, (a, B, d); ``linear_names``: the MLP's linear
    layers in order. Returns logits (a, B).

    The concatenations are split into sums: the first MLP layer's user half is computed
    once per client, not once per example, and the output layer takes the GMF and MLP
    parts separately (fewer, smaller kernels). Change it together with ``forward``.
    """
    g = config.gmf_dim
    gmf = p["user_gmf"].unsqueeze(1) * rows["item_gmf.weight"]  # (a, B, g)
    out_w = p["output.weight"]  # (a, 1, g + last)
    logits = torch.baddbmm(p["output.bias"].unsqueeze(1), gmf, out_w[:, :, :g].transpose(1, 2))  # (a, B, 1)
    if config.kind == ModelKind.NEUMF:
        m = config.mlp_dim
        first, *rest = linear_names
        w1 = p[f"{first}.weight"]  # (a, h1, 2m): user columns first, as torch.cat([user, item])
        user = torch.baddbmm(p[f"{first}.bias"].unsqueeze(1), p["user_mlp"].unsqueeze(1), w1[:, :, :m].transpose(1, 2))
        h = torch.relu(torch.baddbmm(user, rows["item_mlp.weight"], w1[:, :, m:].transpose(1, 2)))
        for name in rest:
            h = torch.relu(torch.baddbmm(p[f"{name}.bias"].unsqueeze(1), h, p[f"{name}.weight"].transpose(1, 2)))
        logits = torch.baddbmm(logits, h, out_w[:, :, g:].transpose(1, 2))
    return logits.squeeze(-1)


class UserEmbeddings(nn.Module):
    """Private user vectors; one row on a device, one per user centrally."""

    def __init__(self, config: ModelConfig, n_users: int, *, generator: torch.Generator) -> None:
        super().__init__()
        self.gmf = nn.Embedding(n_users, config.gmf_dim)
        self.mlp = nn.Embedding(n_users, config.mlp_dim)
        nn.init.normal_(self.gmf.weight, std=config.init_std, generator=generator)
        nn.init.normal_(self.mlp.weight, std=config.init_std, generator=generator)

    def forward(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gmf(users), self.mlp(users)
