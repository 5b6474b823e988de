"""The recommender's architecture as settings (no torch): which network and its sizes.
Saved with every checkpoint; :mod:`fedrec.models.neumf` builds the modules from it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ModelKind(StrEnum):
    """The neural architecture: NeuMF, or GMF alone (no MLP branch)."""

    NEUMF = "neumf"
    GMF = "gmf"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the recommender; saved with every checkpoint."""

    n_items: int
    kind: ModelKind = ModelKind.NEUMF
    gmf_dim: int = 32
    mlp_layers: tuple[int, ...] = (64, 32, 16, 8)  # first = concat of user + item MLP embeddings
    init_std: float = 0.01

    @property
    def mlp_dim(self) -> int:
        """Size of the user (and item) embedding of the MLP branch."""
        return self.mlp_layers[0] // 2 if self.kind == ModelKind.NEUMF else 0
