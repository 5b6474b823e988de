"""DP-EASE as a model family (:mod:`fedrec.dpease`).

Every device uploads two clipped statistics of its own history (item counts, then the
co-occurrence of the top items); the server releases each noisy sum through the ledger
(:func:`fedrec.dpease.run.run_dp_ease`) and solves EASE on them. A device scores from the
release and its own history, and explains an item by the history items that add most
to its score (``B[j, i]`` times the history item's recency weight).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.dpease.statistics import COUNTS, GRAM
from fedrec.errors import FedrecError
from fedrec.families.contract import Channels, Reason, RunOutcome, StepCallback

if TYPE_CHECKING:
    from fedrec.config import RunConfig
    from fedrec.data.split import ClientData, LeaveOneOutSplit
    from fedrec.dpease.fit import EaseRelease
    from fedrec.experiments.plan import Plan
    from fedrec.privacy.canaries import AuditSettings
    from fedrec.training.local import PrivateState

RELEASES = 2  # item counts, then co-occurrence (fedrec.dpease.run.PHASES)


def time_ordered(config: RunConfig) -> bool:
    """Whether a simulated population's training histories are in time order: the data
    set has a time column, or the split follows the file's row order (``split=order``).
    A file without a time column split at random has none."""
    from fedrec.data.split import SplitMode
    from fedrec.federation.device import simulated_population

    prepared = simulated_population(config)
    return prepared.interactions.timed or prepared.split_mode is SplitMode.ORDER


@dataclass(frozen=True)
class DpEaseFamily:
    name: str = "dp-ease"
    label: str = "DP-EASE"
    step: str = "release"
    noise_label: str = "z gram"  # results.json's noise_multiplier: the co-occurrence release's
    uploads: frozenset[str] = frozenset({COUNTS, GRAM})  # one statistic per reply, of either release
    private_state: bool = False
    neural: bool = False

    def planned_steps(self, config: RunConfig) -> int:
        return RELEASES

    def run(
        self, config: RunConfig, channels: Channels, *, run_dir: Path, on_step: StepCallback | None, resume: bool,
    ) -> RunOutcome:
        from fedrec.dpease.run import run_dp_ease

        if resume:
            raise FedrecError(f"a {self.label} run has no rounds to resume: start it again with a new --out")
        config, ordered = self.in_time_order(config, channels)
        transport = channels.statistics()
        _, history, val, test = run_dp_ease(config, transport, run_dir=run_dir, catalog=channels.catalog,
                                            on_phase=on_step, derive=self.derive(config))
        clients = len(transport.clients())
        detail, fields = self.described(history.arrays, top_items=history.top_items)
        return RunOutcome(
            release=history.arrays, test=test, steps=len(history.phases), steps_planned=RELEASES, clients=clients,
            clients_per_step=float(clients), sample_rate=1.0, privacy=dict(history.privacy), rejected=history.rejected,
            curve=[{"round": float(len(history.phases)), **val}], step_log=history.phases,
            title=f"{self.name} on {config.data.dataset}: {clients} clients, K={history.top_items}, {detail}"
            f"epsilon {history.privacy['epsilon']:.3g}",
            fields={"validation": val, "top_items": history.top_items, "time_ordered": ordered, **fields},
            test_per_client=history.test_per_client, evaluated=history.evaluated, one_shot=True,
        )

    def release_type(self) -> type:
        """The class the devices read the release as (``from_arrays``, ``score_items``,
        ``history``, ``item_item``, ``top_items``)."""
        from fedrec.dpease.fit import EaseRelease

        return EaseRelease

    def derive(self, config: RunConfig) -> Callable[[EaseRelease, np.ndarray | None, float], dict[str, np.ndarray]] | None:
        """What the server makes of the fitted release and the noisy Gram before the
        devices score (post-processing, :func:`fedrec.dpease.run.run_dp_ease`); None: the
        DP-EASE release as it is."""
        return None

    def described(self, release: dict[str, np.ndarray], *, top_items: int) -> tuple[str, dict[str, Any]]:
        """What the run's title adds after K (``"name=value, "``) and its results' own fields."""
        return "", {}

    def in_time_order(self, config: RunConfig, channels: Channels) -> tuple[RunConfig, bool]:
        """``config`` as the devices use it, and whether their histories are in time order
        (simulated populations: :func:`time_ordered`; real devices keep their config)."""
        from fedrec.dpease.run import time_order_settings

        ordered = time_ordered(config) if channels.simulated else True
        return time_order_settings(config, time_ordered=ordered), ordered

    def simulated_devices(self, split: LeaveOneOutSplit, config: RunConfig) -> Any:
        from fedrec.dpease.population import PopulationStatistics

        # simulated honest devices: their uploads summed in vectorised chunks, the same floats
        return PopulationStatistics(split, clipping_norm=config.privacy.clipping_norm, release_type=self.release_type())

    def device_statistic(self, data: ClientData, *, phase: str, request: dict[str, np.ndarray], config: RunConfig) -> dict[str, np.ndarray]:
        from fedrec.dpease.run import device_statistic

        return device_statistic(data, phase=phase, request=request, clipping_norm=config.privacy.clipping_norm)

    def device_evaluate(self, data: ClientData, *, release: dict[str, np.ndarray], which: str, config: RunConfig) -> dict[str, float]:
        from fedrec.dpease.run import device_evaluate

        return device_evaluate(data, release=release, which=which, release_type=self.release_type())

    def scores(
        self, release: dict[str, np.ndarray], history: np.ndarray, *, config: RunConfig, private: PrivateState | None,
    ) -> np.ndarray:
        return self.release_type().from_arrays(release).score_items(history)

    def explain(
        self, release: dict[str, np.ndarray], history: np.ndarray, items: np.ndarray, *, config: RunConfig,
        private: PrivateState | None, top: int = 3,
    ) -> list[Reason]:
        """The history items whose ``x_j M[j, i]`` adds most to each item's score (positive
        parts only), ``x_j`` the history item's recency weight on the device and ``M`` the
        release's item-item map (:meth:`release_type`'s ``item_item``); the prior
        (popularity) is the rest of the score."""
        model = self.release_type().from_arrays(release)
        position = {int(t): k for k, t in enumerate(model.top_items)}
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
        return f"DP-EASE release received in round {round_}, scored from {history} positive interactions"

    def plan(self, config: RunConfig, *, users: int, items: int, split: LeaveOneOutSplit | None) -> Plan:
        from fedrec.experiments.plan import plan_dp_ease

        return plan_dp_ease(config, users=users, items=items, split=split)

    def empirical_audit(
        self, config: RunConfig, *, out_dir: Path, settings: AuditSettings, on_step: StepCallback | None,
    ) -> dict[str, Any]:
        """Canaries with rare items of their own; the attack reads the released item
        counts back from the released popularity prior (:func:`released_counts`)."""
        from fedrec.privacy.release_audit import audit_statistics_release

        def read(release: dict[str, np.ndarray], results: dict[str, Any], known: np.ndarray, untouched: np.ndarray) -> np.ndarray:
            z_counts = float(results["noise_multipliers"][0])
            return released_counts(release, config, z_counts=z_counts, known=known, untouched=untouched)

        return audit_statistics_release(config, out_dir=out_dir, settings=settings, on_step=on_step, phase="counts",
                                        released_counts=read)


def released_counts(
    release: dict[str, np.ndarray], config: RunConfig, *, z_counts: float, known: np.ndarray, untouched: np.ndarray,
) -> np.ndarray:
    """The noisy item counts of the first release, read back from the released prior
    ``w asinh(count / s)`` (:func:`fedrec.dpease.fit.popularity_prior`): ``s`` is the
    count noise's std ``z C``; without noise it is the smallest positive count, which the
    attacker recovers from items whose counts it knows (``known`` on ``untouched`` items)."""
    from fedrec.errors import PrivacyError

    weight = config.ease.prior_weight
    if weight == 0:
        raise PrivacyError("ease-prior-weight = 0 releases no item counts to attack: audit with a positive prior weight")
    shape = np.sinh(np.asarray(release["prior"], dtype=np.float64) / weight)  # count / s
    if z_counts > 0:
        return shape * z_counts * config.privacy.clipping_norm
    usable = untouched & (known > 0) & (shape > 0)
    if not usable.any():
        raise PrivacyError("no item outside the canaries' pool has a known positive count: the prior's scale is unknown")
    return shape * float(np.median(known[usable] / shape[usable]))


DP_EASE = DpEaseFamily()
