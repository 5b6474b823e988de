"""A tiny model family for the test suite: DP popularity.

Each device uploads its clipped 0/1 vector of training items; the server releases the
noisy sum once (one Gaussian release in the ledger) and every device ranks items by
it. It implements the whole contract (:class:`fedrec.families.contract.ModelFamily`)
with no command, engine or app touched: the registry finds it through
``$FEDREC_FAMILIES`` (``popularity-test=tests.families.popularity:POPULARITY``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.split import ClientData, LeaveOneOutSplit
from fedrec.dpease.statistics import count_statistic
from fedrec.errors import FedrecError
from fedrec.evaluation.metrics import METRIC_NAMES, mean_metrics
from fedrec.evaluation.scoring import metrics_from_scores
from fedrec.experiments.plan import Plan
from fedrec.families.contract import Channels, DeviceStatistics, Reason, RunOutcome, StepCallback
from fedrec.privacy.accountant import calibrate_releases
from fedrec.privacy.canaries import AuditSettings
from fedrec.privacy.eval_release import NOT_PRIVATE
from fedrec.privacy.noise import noise_generator
from fedrec.privacy.release import noisy_sum
from fedrec.privacy.session import open_session
from fedrec.training.local import PrivateState

NAME = "popularity-test"
COUNTS = "popularity"  # the one array a device uploads
PHASE = "popularity"
ENTRY = f"{NAME}=tests.families.popularity:POPULARITY"  # the $FEDREC_FAMILIES entry


@dataclass(frozen=True)
class PopularityFamily:
    name: str = NAME
    label: str = "DP popularity"
    step: str = "release"
    noise_label: str = "z"
    uploads: frozenset[str] = frozenset({COUNTS})
    private_state: bool = False
    neural: bool = False

    def planned_steps(self, config: RunConfig) -> int:
        return 1

    def run(
        self, config: RunConfig, channels: Channels, *, run_dir: Path, on_step: StepCallback | None, resume: bool,
    ) -> RunOutcome:
        if resume:
            raise FedrecError("one release: nothing to resume")
        p = config.privacy
        transport = channels.statistics()
        clients = transport.clients()
        z = 0.0
        session = rng = None
        if p.enabled:
            z = p.fixed_noise or calibrate_releases(
                target_epsilon=p.epsilon, delta=p.delta, shares=(1.0,), accountant=p.accountant
            )[0]
            session = open_session(config, run_dir, population=len(clients), sample_rate=1.0, noise_multiplier=z,
                                   evaluation=NOT_PRIVATE)
            rng = noise_generator(seed=config.seed, secure=p.secure_noise)
        summed = noisy_sum(transport.statistics(clients, PHASE, {}), name=COUNTS, size=transport.n_items,
                           clipping_norm=p.clipping_norm, std=z * p.clipping_norm, rng=rng)
        info = {"round": 1.0, "aggregated": float(summed.contributors)}
        privacy: dict[str, Any] = {"epsilon": float("inf"), "noise_multiplier": 0.0, "accountant": None}
        if session is not None:  # in the ledger before the sum is used
            session.record_release(mechanism="gaussian-sum/item-counts", purpose="test family: item counts",
                                   noise_multiplier=z, sample_rate=1.0, clipping_norm=p.clipping_norm,
                                   clients=summed.contributors)
            session.close(stopped_by_budget=False)
            info["epsilon"] = session.spent
            privacy = {"epsilon": session.spent, "delta": p.delta, "accountant": p.accountant, "noise_multiplier": z,
                       "clipping_norm": p.clipping_norm, "budget": p.epsilon, "stopped_by_budget": False,
                       "ledger_head": session.head}
        if on_step is not None:
            on_step(1, info)
        release = {COUNTS: summed.total.astype(np.float32)}
        rows = {which: transport.evaluate(clients, release, which) for which in ("val", "test")}
        mean = {which: {m: float(np.mean([r[m] for r in per])) for m in METRIC_NAMES} for which, per in rows.items()}
        return RunOutcome(
            release=release, test=mean["test"], steps=1, steps_planned=1, clients=len(clients),
            clients_per_step=float(len(clients)), sample_rate=1.0, privacy=privacy, rejected=summed.rejected,
            curve=[{"round": 1.0, **mean["val"]}], step_log=[info], title=f"{NAME}: {len(clients)} clients",
            fields={"validation": mean["val"]}, test_per_client=rows["test"],
        )

    def simulated_devices(self, split: LeaveOneOutSplit, config: RunConfig) -> DeviceStatistics:
        return DeviceStatistics(split, self, config)

    def device_statistic(self, data: ClientData, *, phase: str, request: dict[str, np.ndarray], config: RunConfig) -> dict[str, np.ndarray]:
        counts = count_statistic(data.train_items, n_items=data.n_items, clipping_norm=config.privacy.clipping_norm)
        return {COUNTS: next(iter(counts.values()))}

    def device_evaluate(self, data: ClientData, *, release: dict[str, np.ndarray], which: str, config: RunConfig) -> dict[str, float]:
        return mean_metrics(metrics_from_scores(np.asarray(release[COUNTS], dtype=np.float64)[None, :], [data], which))

    def scores(self, release: dict[str, np.ndarray], history: np.ndarray, *, config: RunConfig,
               private: PrivateState | None) -> np.ndarray:
        return np.asarray(release[COUNTS], dtype=np.float64)

    def explain(self, release: dict[str, np.ndarray], history: np.ndarray, items: np.ndarray, *, config: RunConfig,
                private: PrivateState | None, top: int = 3) -> list[Reason]:
        return [Reason(int(i), (), (), "released item count") for i in items]

    def source(self, *, round_: int, private: PrivateState | None, history: int) -> str:
        return f"DP item counts released in round {round_}"

    def plan(self, config: RunConfig, *, users: int, items: int, split: LeaveOneOutSplit | None) -> Plan:
        raise FedrecError(f"{NAME} has no plan")

    def empirical_audit(self, config: RunConfig, *, out_dir: Path, settings: AuditSettings,
                        on_step: StepCallback | None) -> dict[str, Any]:
        from fedrec.privacy.release_audit import audit_statistics_release

        def read(release: dict[str, np.ndarray], results: dict[str, Any], known: np.ndarray, untouched: np.ndarray) -> np.ndarray:
            return np.asarray(release[COUNTS], dtype=np.float64)  # the release is the noisy counts themselves

        return audit_statistics_release(config, out_dir=out_dir, settings=settings, on_step=on_step, phase=PHASE,
                                        released_counts=read)


POPULARITY = PopularityFamily()
