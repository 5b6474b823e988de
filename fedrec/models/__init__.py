"""Recommender models, split into shared and private parameters: NeuMF / GMF (one
forward, and its stacked twin for the engine, in ``neumf``), EASE's closed form
(``ease``), parameter arrays (``params``), the architecture as settings (``spec``: no torch,
so the run config loads without it). Pure model code: imports only torch, numpy
and ``fedrec.errors``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedrec.models.neumf import SharedTower, UserEmbeddings
    from fedrec.models.params import Arrays, init_shared, load_shared, shared_arrays, shared_spec
    from fedrec.models.spec import ModelConfig, ModelKind

_WHERE = {
    "ModelConfig": "spec", "ModelKind": "spec", "SharedTower": "neumf", "UserEmbeddings": "neumf", "Arrays": "params",
    "init_shared": "params", "load_shared": "params", "shared_arrays": "params", "shared_spec": "params",
}


def __getattr__(name: str) -> Any:
    """The package's names, each imported from its module when first asked for: the
    settings types (``spec``) load without torch."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)

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
