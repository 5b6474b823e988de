"""The model contract: what every model family implements.

A family says what a device computes and uploads, what the server releases (through
the DP aggregator and the ledger), how a device scores and explains from the release
and its own data, and how the family reports itself. Commands, engines and the Flower
apps talk to this contract and never to a family by name (:mod:`fedrec.families.registry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from fedrec.config import RunConfig
    from fedrec.data.split import ClientData, LeaveOneOutSplit
    from fedrec.deploy.catalog import Catalog
    from fedrec.experiments.plan import Plan
    from fedrec.federation.rounds import Transport
    from fedrec.privacy.canaries import AuditSettings
    from fedrec.training.local import PrivateState

Arrays = dict[str, np.ndarray]
StepCallback = Callable[[int, dict[str, float]], None]


class StatisticsTransport(Protocol):
    """How the server reaches the devices for a release of per-device statistics: each
    device answers a request with one clipped statistic, the server sums them (its own
    clip, Gaussian noise, a ledger entry) before anything uses the sum."""

    n_items: int  # the catalogue size (public)

    def clients(self) -> list[int]: ...

    def statistics(self, clients: Any, phase: str, request: Arrays) -> Any:
        """Each client's statistic for ``phase`` (None where a client failed), or secure
        sums of several (a :class:`~fedrec.privacy.dp_fedavg.Part`), read once."""
        ...

    def evaluate(self, clients: Any, release: Arrays, which: str) -> list[dict[str, float]]: ...


class DeviceStatistics:
    """The simulated devices of a split, each answering through its family's device
    functions, one device at a time (a family may offer a faster equivalent)."""

    def __init__(self, split: LeaveOneOutSplit, family: ModelFamily, config: RunConfig) -> None:
        self.split, self.family, self.config, self.n_items = split, family, config, split.n_items

    def clients(self) -> list[int]:
        return list(range(self.split.n_users))

    def statistics(self, clients: Any, phase: str, request: Arrays) -> Any:
        for c in clients:
            yield self.family.device_statistic(self.split.client(c), phase=phase, request=request, config=self.config)

    def evaluate(self, clients: Any, release: Arrays, which: str) -> list[dict[str, float]]:
        return [
            self.family.device_evaluate(self.split.client(c), release=release, which=which, config=self.config)
            for c in clients
        ]


class Channels(Protocol):
    """What an engine offers a family: every kind of exchange with the devices, opened
    on demand (a family opens the one it needs), and what the server may know."""

    n_items: int  # the catalogue size
    catalog: Catalog | None  # the public item catalogue (ids, titles, content): all a deployment server reads of the data
    simulated: bool  # the population is simulated from a data set (references, own-id maps)

    def rounds(self) -> Transport:
        """Training rounds: devices train on the shared parameters and upload clipped updates."""
        ...

    def statistics(self) -> StatisticsTransport:
        """Releases of statistics: devices upload one clipped statistic per request."""
        ...


@dataclass
class RunOutcome:
    """What a family's server side hands the one results writer."""

    release: Arrays  # what the server released, post-processed: model.npz
    test: dict[str, float]
    steps: int  # rounds or releases run
    steps_planned: int
    clients: int
    clients_per_step: float
    sample_rate: float
    privacy: dict[str, Any]  # epsilon, delta, accountant, noise, ledger head: results.json as is
    rejected: int
    curve: list[dict[str, float]]  # validation metrics by step
    step_log: list[dict[str, float]]  # what each round or release did
    title: str  # of curves.png
    fields: dict[str, Any] = field(default_factory=dict)  # the family's own results keys
    test_per_client: list[dict[str, float]] = field(default_factory=list)  # exact (simulated) evaluation only
    evaluated: list[int] = field(default_factory=list)  # the clients test_per_client belongs to (empty: every client)
    losses: bool = False  # the step log holds training losses (curves.png draws them)
    one_shot: bool = False  # no rounds: curves.png shows the release beside the references, not a curve


@dataclass(frozen=True)
class Reason:
    """Why a device recommends an item: the device's own history items that weigh most
    for it under the release, with how much each weighs (the family says in what)."""

    item: int
    because: tuple[int, ...]  # history items (indices), most weight first
    weights: tuple[float, ...]
    measure: str  # what a weight is, e.g. "score contribution" or "cosine similarity"


class ModelFamily(Protocol):
    """One model family: implemented once, used by every command, engine and app."""

    name: str  # the config's ``model`` value
    label: str  # how tables and plots name the private model
    step: str  # one unit of progress: "round" or "release"
    noise_label: str  # the noise multiplier results.json's ``noise_multiplier`` holds
    uploads: frozenset[str]  # the arrays a device's statistic may carry (the outbox guard's list)
    private_state: bool  # a device keeps private parameters besides the release (scoring needs them)
    neural: bool  # trains a neural model by rounds (the cold-start reference can be this model)

    def planned_steps(self, config: RunConfig) -> int:
        """How many rounds or releases a run plans."""
        ...

    def run(
        self, config: RunConfig, channels: Channels, *, run_dir: Path, on_step: StepCallback | None, resume: bool,
    ) -> RunOutcome:
        """The server side: plan, request, collect, release through the DP aggregator and
        the ledger in ``run_dir``, post-process; the devices' validation and test metrics."""
        ...

    def simulated_devices(self, split: LeaveOneOutSplit, config: RunConfig) -> StatisticsTransport:
        """The simulated devices of ``split`` answering statistics requests in this process
        (:class:`DeviceStatistics`, or the family's faster equivalent)."""
        ...

    def device_statistic(self, data: ClientData, *, phase: str, request: Arrays, config: RunConfig) -> Arrays:
        """What one device uploads for a statistics request, from its own data only."""
        ...

    def device_evaluate(self, data: ClientData, *, release: Arrays, which: str, config: RunConfig) -> dict[str, float]:
        """One device's metrics with the release, scored on the device."""
        ...

    def scores(
        self, release: Arrays, history: np.ndarray, *, config: RunConfig, private: PrivateState | None,
    ) -> np.ndarray:
        """(n_items,) scores of every item on a device: the release, its own positives
        ``history`` (item indices in time order) and its private state."""
        ...

    def explain(
        self, release: Arrays, history: np.ndarray, items: np.ndarray, *, config: RunConfig,
        private: PrivateState | None, top: int = 3,
    ) -> list[Reason]:
        """Why each of ``items`` is recommended, from the release and ``history`` only."""
        ...

    def source(self, *, round_: int, private: PrivateState | None, history: int) -> str:
        """One line: what a device's recommendations came from."""
        ...

    def plan(self, config: RunConfig, *, users: int, items: int, split: LeaveOneOutSplit | None) -> Plan:
        """Before a run: the noise of each release or round and the signal it must beat."""
        ...

    def empirical_audit(
        self, config: RunConfig, *, out_dir: Path, settings: AuditSettings, on_step: StepCallback | None,
    ) -> dict[str, Any]:
        """Train once with canary users, attack what is released, bound epsilon from below."""
        ...
