"""Recommender models, split into shared and private parameters: NeuMF / GMF (one
forward, and its stacked twin for the engine, in ``neumf``), EASE's closed form
(``ease``), parameter arrays (``params``). Pure model code: imports only torch, numpy
and ``fedrec.errors``.
"""

from fedrec.models.neumf import ModelConfig, ModelKind, SharedTower, UserEmbeddings
from fedrec.models.params import Arrays, init_shared, load_shared, shared_arrays, shared_spec

__all__ = [
    "Arrays",
    "ModelConfig",
    "ModelKind",
    "SharedTower",
    "UserEmbeddings",
    "init_shared",
    "load_shared",
    "shared_arrays",
    "shared_spec",
]
