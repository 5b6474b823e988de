"""DP-Recon as a model family (:mod:`fedrec.dpease.factors`).

The devices answer the two DP-EASE releases (item counts, then the co-occurrence of the
top items; the same uploads, noise, ledger entries and budget split as ``dp-ease``); the
server post-processes them into the DP-EASE weights and item factors from the noisy
Gram's leading eigenvectors. Each device rebuilds its own user vector from its history
against the released factors whenever it scores (Federated Reconstruction): the vector
is never stored and never uploaded, so it costs no privacy and needs no per-user state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.dpease.factors import ReconRelease
from fedrec.dpease.population import PopulationStatistics
from fedrec.families.contract import Channels, Reason, RunOutcome, StepCallback
from fedrec.families.ease import RELEASES, DpEaseFamily

if TYPE_CHECKING:
    from fedrec.config import RunConfig
    from fedrec.data.split import ClientData, LeaveOneOutSplit
    from fedrec.dpease.fit import EaseRelease
    from fedrec.training.local import PrivateState


class ReconStatistics(PopulationStatistics):
    """DP-EASE's simulated devices (the same uploads, summed in vectorised chunks), each
    scoring with the DP-Recon release: its user vector rebuilt from its own history."""

    release_type = ReconRelease


@dataclass(frozen=True)
class DpReconFamily(DpEaseFamily):
    name: str = "dp-recon"
    label: str = "DP-Recon"

    def run(
        self, config: RunConfig, channels: Channels, *, run_dir: Path, on_step: StepCallback | None, resume: bool,
    ) -> RunOutcome:
        from fedrec.dpease.factors import fit_recon
        from fedrec.dpease.run import run_dp_ease
        from fedrec.errors import FedrecError

        if resume:
            raise FedrecError("a DP-Recon run has no rounds to resume: start it again with a new --out")
        config, ordered = self.in_time_order(config, channels)
        r = config.recon

        def derive(release: EaseRelease, noisy: np.ndarray | None, noise_std: float) -> dict[str, np.ndarray]:
            return fit_recon(release, noisy, noise_std=noise_std, eigen_floor=config.ease.eigen_floor, dim=r.dim,
                             shrink=r.shrink, weight=r.weight).to_arrays()

        transport = channels.statistics()
        _, history, val, test = run_dp_ease(config, transport, run_dir=run_dir, catalog=channels.catalog,
                                            on_phase=on_step, derive=derive)
        clients = len(transport.clients())
        dim = int(np.asarray(history.arrays["item_factors"]).shape[1]) if history.top_items else 0
        return RunOutcome(
            release=history.arrays, test=test, steps=len(history.phases), steps_planned=RELEASES, clients=clients,
            clients_per_step=float(clients), sample_rate=1.0, privacy=dict(history.privacy), rejected=history.rejected,
            curve=[{"round": float(len(history.phases)), **val}], step_log=history.phases,
            title=f"dp-recon on {config.data.dataset}: {clients} clients, K={history.top_items}, d={dim}, "
            f"epsilon {history.privacy['epsilon']:.3g}",
            fields={"validation": val, "top_items": history.top_items, "time_ordered": ordered, "factor_dim": dim,
                    "factor_mix": float(np.asarray(history.arrays["recon_mix"]).reshape(-1)[0])},
            test_per_client=history.test_per_client, evaluated=history.evaluated, one_shot=True,
        )

    def simulated_devices(self, split: LeaveOneOutSplit, config: RunConfig) -> Any:
        return ReconStatistics(split, clipping_norm=config.privacy.clipping_norm)

    def device_evaluate(self, data: ClientData, *, release: dict[str, np.ndarray], which: str, config: RunConfig) -> dict[str, float]:
        from fedrec.dpease.run import device_evaluate

        return device_evaluate(data, release=release, which=which, release_type=ReconRelease)

    def scores(
        self, release: dict[str, np.ndarray], history: np.ndarray, *, config: RunConfig, private: PrivateState | None,
    ) -> np.ndarray:
        return ReconRelease.from_arrays(release).score_items(history)

    def explain(
        self, release: dict[str, np.ndarray], history: np.ndarray, items: np.ndarray, *, config: RunConfig,
        private: PrivateState | None, top: int = 3,
    ) -> list[Reason]:
        """The history items whose ``x_j M[j, i]`` adds most to each item's score, ``M``
        the release's item-item map (EASE weights plus the reconstruction's)."""
        model = ReconRelease.from_arrays(release)
        position = {int(t): k for k, t in enumerate(model.ease.top_items)}
        x = model.history(np.asarray(history, dtype=np.int64))
        rows = np.array([j for j in np.flatnonzero(x) if int(j) in position], dtype=np.int64)
        operator = model.item_item() if rows.shape[0] else np.zeros((0, 0))
        out = []
        for item in np.asarray(items, dtype=np.int64):
            if int(item) not in position or rows.shape[0] == 0:
                out.append(Reason(int(item), (), (), "score contribution"))
                continue
            parts = x[rows] * operator[[position[int(j)] for j in rows], position[int(item)]]
            order = [k for k in np.lexsort((rows, -parts)) if parts[k] > 0][:top]
            out.append(Reason(int(item), tuple(int(rows[k]) for k in order), tuple(float(parts[k]) for k in order),
                              "score contribution"))
        return out

    def source(self, *, round_: int, private: PrivateState | None, history: int) -> str:
        return (f"DP-Recon release received in round {round_}, user vector rebuilt on the device from "
                f"{history} positive interactions")


DP_RECON = DpReconFamily()
