"""DP-Recon as a model family (:mod:`fedrec.dpease.factors`).

The devices answer the two DP-EASE releases (item counts, then the co-occurrence of the
top items; the same uploads, noise, ledger entries and budget split as ``dp-ease``); the
server post-processes them into the DP-EASE weights and item factors from the noisy
Gram's leading eigenvectors. Each device rebuilds its own user vector from its history
against the released factors whenever it scores (Federated Reconstruction): the vector
is never stored and never uploaded, so it costs no privacy and needs no per-user state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.dpease.factors import ReconRelease
from fedrec.families.ease import DpEaseFamily

if TYPE_CHECKING:
    from fedrec.config import RunConfig
    from fedrec.dpease.fit import EaseRelease
    from fedrec.training.local import PrivateState


@dataclass(frozen=True)
class DpReconFamily(DpEaseFamily):
    name: str = "dp-recon"
    label: str = "DP-Recon"

    def release_type(self) -> type:
        return ReconRelease

    def derive(self, config: RunConfig) -> Callable[[EaseRelease, np.ndarray | None, float], dict[str, np.ndarray]]:
        """The item factors from the noisy Gram's leading eigenvectors, beside the DP-EASE release."""
        from fedrec.dpease.factors import fit_recon

        r = config.recon

        def derive(release: EaseRelease, noisy: np.ndarray | None, noise_std: float) -> dict[str, np.ndarray]:
            return fit_recon(release, noisy, noise_std=noise_std, eigen_floor=config.ease.eigen_floor, dim=r.dim,
                             shrink=r.shrink, weight=r.weight).to_arrays()

        return derive

    def described(self, release: dict[str, np.ndarray], *, top_items: int) -> tuple[str, dict[str, Any]]:
        dim = int(np.asarray(release["item_factors"]).shape[1]) if top_items else 0
        return f"d={dim}, ", {"factor_dim": dim, "factor_mix": float(np.asarray(release["recon_mix"]).reshape(-1)[0])}

    def source(self, *, round_: int, private: PrivateState | None, history: int) -> str:
        return (f"DP-Recon release received in round {round_}, user vector rebuilt on the device from "
                f"{history} positive interactions")


DP_RECON = DpReconFamily()
