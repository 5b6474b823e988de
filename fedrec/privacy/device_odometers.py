"""Device odometers in a run: announce the job's plan, let each device accept or refuse.

Every family's server announces the job's signed plan (:func:`announce_job`, through
:func:`fedrec.privacy.job_plan.announce_plan`) before its first request: DP-EASE its
releases (:func:`dp_ease_releases`), DP-FedAvg its rounds (:func:`dp_fedavg_releases`),
each with the metric releases of a private evaluation. Every device checks it against
its own odometer (:mod:`fedrec.privacy.odometer`). A device that refuses is a dropout:
the server never asks it anything, which costs signal, never privacy (the mechanisms
are calibrated on the population and scaled by the expected number of devices, not by
who replied). A job that no device accepts stops before its first release and says so.

:class:`SimulatedOdometers` gives each simulated device an odometer, in memory or in a
folder (one file per device, named by its position in the population, kept across runs
so that a population's successive jobs compose); :class:`OdometerTransport` (statistics
releases) and :class:`OdometerRounds` (training rounds) wrap a simulated transport with
them, and :class:`OdometerChannels` wraps an engine's channels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrec.errors import FedrecError, LedgerError
from fedrec.privacy.accountant import epsilon
from fedrec.privacy.job_plan import JobPlan, PlannedRelease, announce_plan, ledger_plan
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


def dp_fedavg_releases(
    *, noise_multiplier: float, sample_rate: float, clipping_norm: float, rounds: int, evaluations: int,
    eval_noise_multiplier: float, eval_sensitivity: float, budget: float, delta: float, accountant: str,
) -> list[PlannedRelease]:
    """A DP-FedAvg job's plan: its rounds (Poisson rate ``sample_rate``, noise
    ``noise_multiplier`` times ``clipping_norm``), then ``evaluations`` metric releases
    (private evaluation on real devices) at q = 1.

    With a fixed z the run stops before the round that would exceed ``budget``: the plan
    announces only the rounds that fit it alone (never fewer than the run can spend, so
    a device is never charged less than the ledger will hold)."""
    if noise_multiplier > 0 and math.isfinite(budget):
        rounds = _rounds_within(noise_multiplier, sample_rate, rounds, budget=budget, delta=delta, accountant=accountant)
    releases = [PlannedRelease("DP-FedAvg rounds", noise_multiplier, sample_rate, clipping_norm, rounds)] if rounds else []
    if evaluations:
        releases.append(PlannedRelease("evaluation metrics", eval_noise_multiplier, 1.0, eval_sensitivity, evaluations))
    return releases


def _rounds_within(z: float, q: float, rounds: int, *, budget: float, delta: float, accountant: str) -> int:
    """The most rounds, at most ``rounds``, whose epsilon alone stays within ``budget``."""
    def fits(n: int) -> bool:
        return epsilon(((z, q, n),), delta=delta, accountant=accountant) <= budget

    if fits(rounds):
        return rounds
    lo, hi = 0, rounds  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


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
    them in memory (for one run), else ``folder/device-N/privacy_odometer.jsonl``, N the
    device's position in the population (its user index), whatever the engine calls it."""

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
        """The clients (positions) that accept ``plan`` (each charged in its own odometer)
        and how many refused. Devices whose budgets and histories are equal decide alike,
        but each one decides for itself."""
        accepted = [c for c in clients if self.odometer(c).admit(plan).accepted]
        return accepted, len(clients) - len(accepted)

    def took_part(self, plan: JobPlan, clients: Iterable[int], release: str) -> None:
        for c in clients:
            self.odometer(c).took_part(plan.run_id, release)


class _WithOdometers:
    """What both wrappers share: the inner transport's handles mapped to positions, the
    announcement (the odometers decide; an inner transport that reaches devices hears
    the plan too) and the record of what each device took part in."""

    def __init__(self, inner: Any, odometers: SimulatedOdometers) -> None:
        self.inner, self.odometers = inner, odometers
        self.private_evaluation = bool(getattr(inner, "private_evaluation", False))
        self.plan: JobPlan | None = None
        self.refused = 0
        self._positions: dict[int, int] | None = None

    def clients(self) -> list[int]:
        return list(self.inner.clients())

    def _position(self, clients: Iterable[int]) -> list[int]:
        if self._positions is None:
            self._positions = {c: k for k, c in enumerate(self.inner.clients())}
        return [self._positions[c] for c in clients]

    def announce(self, plan: JobPlan, clients: Sequence[int]) -> list[int]:
        self.plan = plan
        accepted = [c for c, k in zip(clients, self._position(clients)) if self.odometers.odometer(k).admit(plan).accepted]
        inner = getattr(self.inner, "announce", None)
        if inner is not None and accepted:  # the devices behind the transport hear the plan as well
            accepted = list(inner(plan, accepted))
        self.refused = len(clients) - len(accepted)
        return accepted

    def _took_part(self, clients: Sequence[int], release: str) -> None:
        if self.plan is not None:
            self.odometers.took_part(self.plan, self._position(clients), release)


class OdometerTransport(_WithOdometers):
    """A statistics transport (DP-EASE) whose devices keep odometers: ``announce`` returns
    the devices that accepted the job's plan; only they are asked anything after it."""

    def __init__(self, inner: Any, odometers: SimulatedOdometers) -> None:
        super().__init__(inner, odometers)
        self.n_items = inner.n_items

    def statistics(self, clients: Sequence[int], phase: str, request: Any) -> Iterable[Any]:
        self._took_part(clients, phase)
        return self.inner.statistics(clients, phase, request)

    def evaluate(self, clients: Sequence[int], release: Any, which: str) -> list[dict[str, float]]:
        if self.private_evaluation:
            self._took_part(clients, f"evaluation: {which}")
        return self.inner.evaluate(clients, release, which)


class OdometerRounds(_WithOdometers):
    """A round transport (DP-FedAvg) whose devices keep odometers; the round loop asks
    only the sampled devices that accepted the plan (:func:`fedrec.federation.rounds.run_federated`)."""

    def train(self, clients: Sequence[int], shared: Any, round_: int) -> Any:
        self._took_part(clients, f"round {round_}")
        return self.inner.train(clients, shared, round_)

    def evaluate(self, clients: Sequence[int], shared: Any, which: str, round_: int) -> list[dict[str, float]]:
        if self.private_evaluation:
            self._took_part(clients, f"evaluation: {which} after round {round_}")
        return self.inner.evaluate(clients, shared, which, round_)  # type: ignore[no-any-return]

    # a simulated population's private state lives with the inner transport (checkpoints)
    def client_state(self) -> Any:
        state = getattr(self.inner, "client_state", None)
        return state() if state is not None else {}

    def restore_client_state(self, state: Any) -> None:
        restore = getattr(self.inner, "restore_client_state", None)
        if restore is not None:
            restore(state)


class OdometerChannels:
    """An engine's channels (:class:`fedrec.families.contract.Channels`) whose simulated
    devices keep odometers: whatever the family opens is wrapped; the rest is the engine's."""

    def __init__(self, inner: Any, odometers: SimulatedOdometers) -> None:
        self.inner, self.odometers = inner, odometers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def rounds(self) -> OdometerRounds:
        return OdometerRounds(self.inner.rounds(), self.odometers)

    def statistics(self) -> OdometerTransport:
        return OdometerTransport(self.inner.statistics(), self.odometers)


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
    plan = _the_plan(session, releases)
    announce = getattr(transport, "announce", None)
    if plan is None or announce is None:
        return list(clients), 0
    accepted = list(announce(plan, clients))
    refused = len(clients) - len(accepted)
    if not accepted:
        if not session.closed:
            session.close(stopped_by_budget=True)
        raise no_contributor(plan, refused)
    return accepted, refused


def _the_plan(session: Any, releases: Sequence[PlannedRelease]) -> JobPlan | None:
    """The plan the ledger announced (a resumed job: the same signed plan again, which a
    device charges once), else the job's plan announced now; None where there is nothing
    to announce (no release planned, or a ledger from before plans were announced). A
    resumed job whose plan differs from the ledger's is an error: its devices accepted
    the recorded one."""
    recorded = ledger_plan(session.writer.entries)
    if recorded is None:
        if not releases or any(e.get("kind") in ("round", "release") for e in session.writer.entries):
            return None
        return announce_plan(session, releases)
    wanted = tuple((r.noise_multiplier, r.sample_rate, r.steps) for r in releases)
    if recorded.history() != wanted:
        raise LedgerError("the job's ledger announced another plan than this run would: resume with the run's own config")
    return recorded
