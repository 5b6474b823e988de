"""DP-FedAvg over a neural model (NeuMF or GMF) as a model family.

Devices train the shared parameters on their own interactions and upload clipped
updates in rounds (:func:`fedrec.federation.rounds.run_federated`); the server releases
each round's noisy mean through :class:`fedrec.privacy.aggregator.DPAggregator` and the
ledger. A device scores with the released parameters and its private user vectors, and
explains an item by the history items nearest to it in the released item space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.errors import FedrecError
from fedrec.families.contract import Channels, DeviceStatistics, Reason, RunOutcome, StepCallback

if TYPE_CHECKING:
    from fedrec.config import RunConfig
    from fedrec.data.split import ClientData, LeaveOneOutSplit
    from fedrec.experiments.plan import Plan
    from fedrec.privacy.canaries import AuditSettings
    from fedrec.training.local import PrivateState

ITEM_TABLES = ("item_gmf.weight", "item_mlp.weight")  # the released item embeddings


def item_space(release: dict[str, np.ndarray]) -> np.ndarray:
    """(n_items, d) the released item embeddings, each table scaled to unit rows and
    side by side (NeuMF: GMF and MLP tables; GMF: one)."""
    tables = [np.asarray(release[name], dtype=np.float64) for name in ITEM_TABLES if name in release]
    unit = [t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12) for t in tables]
    return np.concatenate(unit, axis=1) / np.sqrt(len(unit))


@dataclass(frozen=True)
class NeuralFamily:
    name: str
    label: str
    step: str = "round"
    noise_label: str = "z"
    uploads: frozenset[str] = frozenset()  # a training reply carries the shared update only (clients/device.py)
    private_state: bool = True
    neural: bool = True

    def planned_steps(self, config: RunConfig) -> int:
        return config.federation.num_rounds

    def run(
        self, config: RunConfig, channels: Channels, *, run_dir: Path, on_step: StepCallback | None, resume: bool,
    ) -> RunOutcome:
        from fedrec.experiments.run import upload_summary
        from fedrec.federation.rounds import run_federated

        transport = channels.rounds()
        model = config.model.build(channels.n_items)
        n_clients = len(transport.clients())
        shared, history, test = run_federated(config, transport, model=model, run_dir=run_dir, on_round=on_step, resume=resume)
        return RunOutcome(
            release=shared, test=test, steps=history.rounds_run, steps_planned=config.federation.num_rounds,
            clients=n_clients, clients_per_step=history.expected_clients, sample_rate=history.sample_rate,
            privacy=dict(history.privacy), rejected=history.rejected, curve=history.evals, step_log=history.rounds,
            title=f"federated {config.model.model} on {config.data.dataset}: {n_clients} clients, "
            f"{history.expected_clients:.0f}/round, epsilon {history.privacy['epsilon']:.3g}",
            fields={
                "local_epochs": config.train.local_epochs, "resumes": history.resumes,
                **upload_summary(config, model, history.rounds),
            },
            losses=True,
        )

    def simulated_devices(self, split: LeaveOneOutSplit, config: RunConfig) -> DeviceStatistics:
        return DeviceStatistics(split, self, config)

    def device_statistic(self, data: ClientData, *, phase: str, request: dict[str, np.ndarray], config: RunConfig) -> dict[str, np.ndarray]:
        raise FedrecError(f"model {self.name} trains in rounds: its devices answer train messages, not statistics queries")

    def device_evaluate(self, data: ClientData, *, release: dict[str, np.ndarray], which: str, config: RunConfig) -> dict[str, float]:
        from fedrec.federation.device import Device

        device = Device(client_id=-1, data=data, model=config.model.build(data.n_items))
        return device.evaluate(shared=release, private=None, config=config, which=which)

    def scores(
        self, release: dict[str, np.ndarray], history: np.ndarray, *, config: RunConfig, private: PrivateState | None,
    ) -> np.ndarray:
        import torch

        from fedrec.models import SharedTower, load_shared

        if private is None:
            raise FedrecError(f"model {self.name} scores with the device's private vectors: train the device first")
        n_items = int(np.asarray(release[ITEM_TABLES[0]]).shape[0])
        tower = SharedTower(config.model.build(n_items), generator=None)
        load_shared(tower, release)
        tower.eval()
        with torch.no_grad():
            return tower.score_all(torch.from_numpy(private.user_gmf), torch.from_numpy(private.user_mlp)).numpy()  # type: ignore[no-any-return]

    def explain(
        self, release: dict[str, np.ndarray], history: np.ndarray, items: np.ndarray, *, config: RunConfig,
        private: PrivateState | None, top: int = 3,
    ) -> list[Reason]:
        """The history items nearest each recommended item in the released item space (cosine)."""
        space = item_space(release)
        seen = np.unique(np.asarray(history, dtype=np.int64))
        out = []
        for item in np.asarray(items, dtype=np.int64):
            similarity = space[seen] @ space[item] if seen.shape[0] else np.empty(0)
            order = np.lexsort((seen, -similarity))[:top]
            out.append(Reason(int(item), tuple(int(seen[k]) for k in order), tuple(float(similarity[k]) for k in order),
                              "cosine similarity in the released item space"))
        return out

    def source(self, *, round_: int, private: PrivateState | None, history: int) -> str:
        trained = private.rounds_trained if private is not None else 0
        return f"shared parameters of round {round_}, private vectors trained {trained} rounds"

    def plan(self, config: RunConfig, *, users: int, items: int, split: LeaveOneOutSplit | None) -> Plan:
        from fedrec.experiments.plan import plan_rounds

        return plan_rounds(config, users=users, items=items, data=split is not None)

    def empirical_audit(
        self, config: RunConfig, *, out_dir: Path, settings: AuditSettings, on_step: StepCallback | None,
    ) -> dict[str, Any]:
        from fedrec.privacy.canaries import run_empirical_audit

        return run_empirical_audit(config, out_dir=out_dir, settings=settings, on_round=on_step)


NEUMF = NeuralFamily(name="neumf", label="DP-FedAvg (neumf)")
GMF = NeuralFamily(name="gmf", label="DP-FedAvg (gmf)")
