"""Per-client update clipping (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models", Alg. 1, ClipFn with flat clipping).

The L2 norm is taken over *all* tensors of the update together, 0-d tensors
included, and every tensor is scaled by the same factor min(1, C / norm). A zero
update stays zero (no division by zero); ``max_norm = inf`` leaves the update as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from fedrec.models import Arrays


def global_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of the concatenation of every tensor (float64 accumulation)."""
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values()))


def clip_update(update: Mapping[str, np.ndarray], *, max_norm: float) -> tuple[Arrays, float]:
    """Return (clipped copy of ``update``, its norm before clipping)."""
    if not max_norm > 0:
        raise ValueError(f"clipping norm must be > 0, got {max_norm}")
    norm = global_norm(update)
    if norm <= max_norm and all(np.asarray(v).dtype == np.float32 for v in update.values()):
        # Within the bound already (an honest device clipped it): the float64 round trip
        # below would give back the very same float32 values, so copy them as they are.
        return {name: np.array(value, dtype=np.float32) for name, value in update.items()}, norm
    scale = 1.0 if norm <= max_norm else max_norm / norm
    clipped = {name: (np.asarray(value, dtype=np.float64) * scale).astype(np.float32) for name, value in update.items()}
    # float32 rounding can push the norm a hair above C; shrink once more if so.
    after = global_norm(clipped)
    if after > max_norm:
        clipped = {name: (value * np.float32(max_norm / after * (1 - 1e-6))).astype(np.float32) for name, value in clipped.items()}
    return clipped, norm


def clip_stacked(update: dict[str, torch.Tensor], *, max_norm: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`clip_update` for K clients at once: every tensor is (K, *shape), row k is
    client k's update. Each client is clipped on its own global norm with the same
    arithmetic: norms accumulated in float64, the clipping product in float64, the final
    shrink (where float32 rounding left a norm a hair above C) in float32. Returns
    (clipped float32 tensors, (K,) norms before clipping).
    """
    if not max_norm > 0:
        raise ValueError(f"clipping norm must be > 0, got {max_norm}")

    def norms(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        squares = [
            torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1, dtype=torch.float64).square() for t in tensors.values()
        ]
        return torch.sqrt(torch.stack(squares).sum(dim=0))

    def scaled(tensors: dict[str, torch.Tensor], by: torch.Tensor) -> dict[str, torch.Tensor]:
        # float32 values times a float64 factor: the product is taken in float64 (type
        # promotion), then rounded once to float32; a float32 factor keeps it in float32
        return {name: (t * by.view(-1, *([1] * (t.dim() - 1)))).float() for name, t in tensors.items()}

    before = norms(update)
    clipped = scaled(update, torch.where(before <= max_norm, torch.ones_like(before), max_norm / before))
    after = norms(clipped)
    # float32 rounding can push a norm a hair above C; shrink those once more.
    shrink = torch.where(after > max_norm, max_norm / after * (1 - 1e-6), torch.ones_like(after))
    if bool((shrink < 1).any()):
        clipped = scaled(clipped, shrink.float())
    return clipped, before
