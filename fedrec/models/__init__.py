"""Recommender models, split into shared and private parameters."""

from fedrec.models.neumf import ModelConfig, SharedTower, UserEmbeddings
from fedrec.models.params import Arrays, init_shared, load_shared, shared_arrays, shared_spec

__all__ = [
    "Arrays",
    "ModelConfig",
    "SharedTower",
    "UserEmbeddings",
    "init_shared",
    "load_shared",
    "shared_arrays",
    "shared_spec",
]
