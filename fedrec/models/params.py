"""Moving parameters between torch modules and named numpy arrays.

The upload of a client is built only from :class:`SharedTower`; private tensors
live in a different module and cannot be named here by accident.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache

import numpy as np
import torch

from fedrec.errors import FedrecError
from fedrec.models.neumf import ModelConfig, SharedTower

Arrays = dict[str, np.ndarray]


def shared_arrays(tower: SharedTower) -> Arrays:
    """The shared parameters as float32 numpy arrays, in a fixed order."""
    return OrderedDict((name, p.detach().cpu().numpy().astype(np.float32, copy=True)) for name, p in tower.named_parameters())


def shared_spec(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every shared tensor: what a valid upload must contain."""
    return dict(_shared_spec(config))


@lru_cache(maxsize=64)
def _shared_spec(config: ModelConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Building even a meta-device tower is not free (torch's init functions run through
    # a dispatch mode), and the engine asks for the spec several times per round.
    with torch.device("meta"):
        tower = SharedTower(config, generator=None)
    return tuple((name, tuple(p.shape)) for name, p in tower.named_parameters())


def load_shared(tower: SharedTower, arrays: Arrays) -> None:
    """Copy ``arrays`` into ``tower`` in place, checking names and shapes."""
    params = dict(tower.named_parameters())
    if set(params) != set(arrays):
        raise FedrecError(
            f"shared parameters do not match the model: missing {sorted(set(params) - set(arrays))}, "
            f"unexpected {sorted(set(arrays) - set(params))}"
        )
    with torch.no_grad():
        for name, p in params.items():
            value = arrays[name]
            if tuple(value.shape) != tuple(p.shape):
                raise FedrecError(f"shared parameter {name}: shape {value.shape}, expected {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def init_shared(config: ModelConfig, *, seed: int) -> Arrays:
    """Initial shared parameters, deterministic in ``seed``."""
    return shared_arrays(SharedTower(config, generator=torch.Generator().manual_seed(seed)))
