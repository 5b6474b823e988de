"""Device odometers in a run: announce the job's plan, let each device accept or refuse.

The server announces the job's signed plan (:func:`fedrec.privacy.job_plan.announce_plan`)
before its first request; every device checks it against its own odometer
(:mod:`fedrec.privacy.odometer`). A device that refuses is a dropout: the server never
asks it anything, which costs signal, never privacy (the mechanisms are calibrated on
the population and scaled by the expected number of devices, not by who replied). A
job that no device accepts stops before its first release and says so.

:class:`SimulatedOdometers` gives each simulated device an odometer, in memory or in a
folder (one file per device, kept across runs so that a population's successive jobs
compose); :class:`OdometerTransport` wraps a DP-EASE statistics transport with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrec.errors import FedrecError
from fedrec.privacy.job_plan import JobPlan, PlannedRelease, announce_plan
from fedrec.privacy.odometer import Odometer, OdometerSettings


def dp_ease_releases(
    *, z_counts: float, z_gram: float, clipping_norm: float, evaluations: int, eval_noise_multiplier: float,
    eval_sensitivity: float,
) -> list[PlannedRelease]:
    """A DP-EASE job's plan: the item counts, the co-occurrence, then ``evaluations``
    metric releases (private evaluation on real devices), each one Gaussian sum at q = 1."""
    releases = [
        PlannedRelease("DP-EASE phase 1: item counts", z_counts, 1.0, clipping_norm, 1),
        PlannedRelease("DP-EASE phase 2: co-occurrence", z_gram, 1.0, clipping_norm, 1),
    ]
    releases += [PlannedRelease(f"evaluation {n}", eval_noise_multiplier, 1.0, eval_sensitivity, 1)
                 for n in range(1, evaluations + 1)]
    return releases


NO_CONTRIBUTOR = "no_contributor.json"  # written by a deployment's server when every device refused the job


class NoContributor(FedrecError):
    """Every device refused the job's plan: nothing was asked, nothing released."""

    def __init__(self, plan: JobPlan, refused: int) -> None:
        self.run_id, self.refused = plan.run_id, refused
        super().__init__(
            f"job {plan.run_id}: no device took part: all {refused} device(s) refused its plan (it would take their "
            "privacy budget, device-epsilon, above its limit); nothing was released"
        )

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "devices_refused": self.refused, "contributors": 0, "message": str(self)}


def no_contributor(plan: JobPlan, refused: int) -> NoContributor:
    return NoContributor(plan, refused)


@dataclass
class SimulatedOdometers:
    """One odometer per simulated device, created on first use; ``folder`` None keeps
    them in memory (for one run), else ``folder/device-N/privacy_odometer.jsonl``."""

    settings: OdometerSettings
    folder: Path | None = None
    _odometers: dict[int, Odometer] = field(default_factory=dict)

    def odometer(self, client: int) -> Odometer:
        if client not in self._odometers:
            if self.folder is None:
                self._odometers[client] = Odometer(self.settings)
            else:
                self._odometers[client] = Odometer.beside(self.folder / f"device-{client}", self.settings)
        return self._odometers[client]

    def admit(self, plan: JobPlan, clients: Sequence[int]) -> tuple[list[int], int]:
        """The clients that accept ``plan`` (each charged in its own odometer) and how many
        refused. Devices whose budgets and histories are equal decide alike, but each one
        decides for itself."""
        accepted = [c for c in clients if self.odometer(c).admit(plan).accepted]
        return accepted, len(clients) - len(accepted)

    def took_part(self, plan: JobPlan, clients: Iterable[int], release: str) -> None:
        for c in clients:
            self.odometer(c).took_part(plan.run_id, release)


class OdometerTransport:
    """A DP-EASE statistics transport whose devices keep odometers: ``announce`` returns
    the devices that accepted the job's plan; only they are asked anything after it."""

    def __init__(self, inner: Any, odometers: SimulatedOdometers) -> None:
        self.inner, self.odometers = inner, odometers
        self.n_items = inner.n_items
        self.private_evaluation = bool(getattr(inner, "private_evaluation", False))
        self.plan: JobPlan | None = None
        self.refused = 0

    def clients(self) -> list[int]:
        return list(self.inner.clients())

    def announce(self, plan: JobPlan, clients: Sequence[int]) -> list[int]:
        self.plan = plan
        accepted, self.refused = self.odometers.admit(plan, clients)
        return accepted

    def statistics(self, clients: Sequence[int], phase: str, request: Any) -> Iterable[Any]:
        if self.plan is not None:
            self.odometers.took_part(self.plan, clients, phase)
        return self.inner.statistics(clients, phase, request)

    def evaluate(self, clients: Sequence[int], release: Any, which: str) -> list[dict[str, float]]:
        if self.plan is not None and self.private_evaluation:
            self.odometers.took_part(self.plan, clients, f"evaluation: {which}")
        return self.inner.evaluate(clients, release, which)


def announce_job(
    session: Any, transport: Any, clients: Sequence[int], releases: Sequence[PlannedRelease],
) -> tuple[list[int], int]:
    """Record the job's signed plan in ``session``'s ledger before anything is asked and,
    when ``transport`` has devices with odometers (an ``announce`` method), keep only
    the devices that accept it. Returns (the devices to ask, how many refused); raises
    when every device refused (the ledger is closed first, with nothing spent). Without
    DP (``session`` None) there is no plan and every device is asked."""
    if session is None:
        return list(clients), 0
    plan = announce_plan(session, releases)
    announce = getattr(transport, "announce", None)
    if announce is None:
        return list(clients), 0
    accepted = list(announce(plan, clients))
    refused = len(clients) - len(accepted)
    if not accepted:
        session.close(stopped_by_budget=True)
        raise no_contributor(plan, refused)
    return accepted, refused
