"""What a run will do, before it runs (``fedrec plan``): the population, the budget, the
calibrated noise, each release's noise against the largest signal it can carry, and the
regime to expect.

Nothing here spends privacy or writes anything: the noise multipliers come from the same
functions a run calls (:func:`fedrec.dpease.run.phase_noise`,
:func:`fedrec.privacy.accountant.calibrate_noise`) and epsilon from the accountant of the
planned history, so the plan's epsilon is the one the run's ledger will record.

Two modes. With ``users`` and ``items`` only, every quantity is a function of public
numbers (N, the catalogue size, the settings): the signal is bounded by ``n C`` (each of
the n contributing users adds at most C in L2 norm to a sum). With the data set, the plan
also reads every user's history to compute the sums' actual norms, the expected number of
top items K and the co-occurrence's directions above the noise: a non-private preview for
the operator, which must not be published as if it were a DP result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy.stats import norm

from fedrec.config import RunConfig
from fedrec.data.split import LeaveOneOutSplit
from fedrec.dpease.central import population_sums
from fedrec.dpease.fit import noise_edge, signal_limited
from fedrec.dpease.run import phase_noise
from fedrec.dpease.statistics import packed_size, unpack_symmetric
from fedrec.errors import FedrecError
from fedrec.evaluation.metrics import METRIC_NAMES
from fedrec.families import family_of
from fedrec.models import shared_spec
from fedrec.privacy.accountant import History, calibrate_noise, compress, epsilon
from fedrec.privacy.eval_release import planned_evaluations, sensitivity
from fedrec.privacy.readable import TARGET_NOISE_STD, devices_for_noise_std, informative, metric_noise_std
from fedrec.privacy.sampling import PoissonSampler

PUBLIC = "public: N, the catalogue size and the settings only (no user data read)"
PREVIEW = "non-private preview for the operator: every user's history was read; do not publish it as a DP result"


@dataclass(frozen=True)
class PlannedRelease:
    """One Gaussian sum the run will release, ``steps`` times."""

    name: str
    noise_multiplier: float  # z
    sample_rate: float  # q
    steps: int
    values: int  # d, values released per step
    contributors: float  # expected users in the sum (q N)
    clipping_norm: float  # C
    signal_norm: float | None = None  # the sum's actual L2 norm (with the data only)

    @property
    def noise_std(self) -> float:
        """Noise std on each released value of the sum: z C."""
        return self.noise_multiplier * self.clipping_norm

    @property
    def noise_norm(self) -> float:
        """Expected L2 norm of the noise vector: sqrt(d) z C."""
        return math.sqrt(self.values) * self.noise_std

    @property
    def signal_bound(self) -> float:
        """The sum's L2 norm is at most n C (each user adds at most C)."""
        return self.contributors * self.clipping_norm

    @property
    def noise_to_signal_bound(self) -> float:
        """Noise norm over the largest possible signal: the noise-to-signal ratio is at least this."""
        return self.noise_norm / self.signal_bound if self.signal_bound > 0 else math.inf

    @property
    def noise_to_signal(self) -> float | None:
        if self.signal_norm is None:
            return None
        return self.noise_norm / self.signal_norm if self.signal_norm > 0 else math.inf

    @property
    def entry_snr(self) -> float:
        """Root-mean-square signal per released value over the noise std: with the data
        from the actual sum, else from the bound n C (an upper bound)."""
        signal = self.signal_bound if self.signal_norm is None else self.signal_norm
        if self.noise_std == 0:
            return math.inf
        return signal / math.sqrt(self.values) / self.noise_std

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self), "noise_std": self.noise_std, "noise_norm": self.noise_norm, "signal_bound": self.signal_bound,
            "noise_to_signal_bound": self.noise_to_signal_bound, "noise_to_signal": self.noise_to_signal,
            "entry_snr": self.entry_snr,
        }


@dataclass(frozen=True)
class PlannedEvaluation:
    """The evaluation metrics a deployment on real devices releases (simulations evaluate
    exactly): ``releases`` Gaussian sums of d metrics at ``eval-noise-multiplier``, each
    divided by the devices asked (:mod:`fedrec.privacy.eval_release`)."""

    releases: int
    metrics: int  # d
    noise_multiplier: float  # z of each release
    devices: int  # devices asked per release (eval-users, or every device)
    epsilon_alone: float  # the evaluation releases alone (headline accountant)
    budget: float

    @property
    def noise_std(self) -> float:
        """Noise sigma in each released mean metric: z sqrt(d) / n."""
        return metric_noise_std(noise_multiplier=self.noise_multiplier, sensitivity=sensitivity(self.metrics),
                                devices_asked=self.devices)

    @property
    def informative(self) -> bool:
        return informative(self.noise_std)

    @property
    def devices_for_target(self) -> int:
        """Devices asked for a noise sigma of TARGET_NOISE_STD at this z (the same budget share)."""
        return devices_for_noise_std(noise_multiplier=self.noise_multiplier, n_metrics=self.metrics)

    def note(self) -> str:
        share = f", {self.epsilon_alone / self.budget:.0%} of the budget" if math.isfinite(self.budget) and self.budget > 0 else ""
        label = " — not informative (sigma > a quarter of the range [0, 1])" if not self.informative else ""
        return (f"on real devices, the evaluation is {self.releases} releases of {self.metrics} metrics at "
                f"eval-noise-multiplier {self.noise_multiplier:g} (epsilon {self.epsilon_alone:.3g} alone{share}): "
                f"noise sigma {self.noise_std:.3g} per released metric at {self.devices} devices asked{label}; "
                f"sigma {TARGET_NOISE_STD:g} needs at least {self.devices_for_target} devices at this budget share")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "noise_std": self.noise_std, "informative": self.informative,
                "target_noise_std": TARGET_NOISE_STD, "devices_for_target": self.devices_for_target}


def planned_evaluation(config: RunConfig, *, users: int) -> PlannedEvaluation | None:
    """The evaluation releases a deployment of ``config`` on ``users`` devices makes (None without DP)."""
    p, fed = config.privacy, config.federation
    if not p.enabled:
        return None
    if family_of(config).step == "release":
        count = 2  # validation and test of the release
    else:
        count = planned_evaluations(rounds=fed.num_rounds, eval_every=fed.eval_every)
    devices = fed.eval_users if 0 < fed.eval_users < users else users
    alone = epsilon(((p.eval_noise_multiplier, 1.0, count),), delta=p.delta, accountant=p.accountant)
    return PlannedEvaluation(releases=count, metrics=len(METRIC_NAMES), noise_multiplier=p.eval_noise_multiplier,
                             devices=devices, epsilon_alone=alone, budget=p.epsilon)


@dataclass(frozen=True)
class Plan:
    model: str
    population: int
    items: int
    dp: bool
    epsilon_target: float  # inf without DP
    delta: float
    accountant: str
    epsilon: float  # the planned history's epsilon (headline accountant): what the ledger will record
    epsilon_rdp: float
    releases: tuple[PlannedRelease, ...]
    source: str  # PUBLIC or PREVIEW
    verdict: str
    notes: tuple[str, ...] = ()
    top_items: float | None = None  # DP-EASE with data: expected K (noisy counts above the threshold)
    top_items_bound: int | None = None  # DP-EASE without data: the largest K whose Gram can hold a direction
    signal_directions: int | None = None  # DP-EASE with data: Gram directions expected above the noise edge
    evaluation: PlannedEvaluation | None = None  # the evaluation releases of a deployment (None without DP)
    retained_structure: float | None = None  # DP-EASE with data: share of the Gram's structure beyond popularity kept

    @property
    def history(self) -> History:
        """The (z, q, steps) history the run's ledger will hold."""
        return _history(self.releases)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: a non-finite number (no DP: epsilon, noise/signal) becomes null."""
        out = {k: v for k, v in asdict(self).items() if k not in ("releases", "evaluation")}
        out["releases"] = [r.to_json() for r in self.releases]
        out["evaluation"] = self.evaluation.to_json() if self.evaluation is not None else None
        return _finite(out)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def plan_run(config: RunConfig, *, users: int = 0, items: int = 0, split: LeaveOneOutSplit | None = None) -> Plan:
    """The plan for ``config`` on ``split`` (a preview that reads the data) or on a
    population of ``users`` with a catalogue of ``items`` (public numbers only)."""
    if split is not None:
        users, items = split.n_users, split.n_items
    if users < 1 or items < 1:
        raise FedrecError("plan needs the data set, or --users N and --items M (both >= 1)")
    plan = family_of(config).plan(config, users=users, items=items, split=split)
    evaluation = planned_evaluation(config, users=users)
    if evaluation is None:
        return plan
    return replace(plan, evaluation=evaluation, notes=(*plan.notes, evaluation.note()))


def _history(releases: tuple[PlannedRelease, ...]) -> History:
    return compress(step for r in releases for step in [(r.noise_multiplier, r.sample_rate)] * r.steps)


def _epsilons(config: RunConfig, releases: tuple[PlannedRelease, ...]) -> tuple[float, float]:
    p = config.privacy
    if not p.enabled:
        return math.inf, math.inf
    history = _history(releases)
    return (epsilon(history, delta=p.delta, accountant=p.accountant), epsilon(history, delta=p.delta, accountant="rdp"))


def _budget_notes(config: RunConfig, planned: float, what: str) -> list[str]:
    p = config.privacy
    if not p.enabled:
        return ["dp = off: no noise, no ledger; the run is not private"]
    if planned > p.epsilon:
        return [(f"the planned history spends epsilon {planned:.4g} > budget {p.epsilon:g} (noise-multiplier is fixed): "
                 f"the run stops before {what}")]
    return []


def plan_rounds(config: RunConfig, *, users: int, items: int, data: bool) -> Plan:
    """DP-FedAvg rounds (NeuMF, GMF): z for (q, rounds) from the accountant."""
    p, fed = config.privacy, config.federation
    q = PoissonSampler(expected_clients=fed.clients_per_round, population=users).rate
    if not p.enabled:
        z = 0.0
    elif p.fixed_noise is not None:
        z = p.fixed_noise
    else:
        z = calibrate_noise(target_epsilon=p.epsilon, delta=p.delta, sample_rate=q, rounds=fed.num_rounds, accountant=p.accountant)
    d = sum(int(np.prod(shape, dtype=np.int64)) for shape in shared_spec(config.model.build(items)).values())
    rounds = PlannedRelease(
        name="round: clipped model updates", noise_multiplier=z, sample_rate=q, steps=fed.num_rounds, values=d,
        contributors=q * users, clipping_norm=p.clipping_norm,
    )
    releases = (rounds,)
    eps, eps_rdp = _epsilons(config, releases)
    ratio = rounds.noise_to_signal_bound
    over_run = ratio / math.sqrt(fed.num_rounds)
    if not p.enabled:
        verdict = "no DP: no noise on the updates"
    elif ratio >= 1:
        verdict = (f"per round the noise norm is {ratio:.2f}x the largest possible signal q N C = {rounds.signal_bound:.4g}: "
                   "each aggregate is mostly noise -> expect near or below popularity; use model = dp-ease")
    else:
        verdict = (f"per round the noise norm is {ratio:.2f}x the largest possible signal q N C: "
                   "the aggregate can carry signal if the clipped updates agree")
    notes = [
        (f"{d} shared values per update (the noise norm grows with sqrt(d)); over {fed.num_rounds} rounds, aligned "
         f"updates add up linearly and noise as sqrt(rounds): noise/signal >= {over_run:.3g} for the whole run"),
        ("the signal of a round is bounded, not measured: it depends on training (the run logs the actual per-round "
         "signal/noise)" + (" even with the data" if data else "")),
        *_budget_notes(config, eps, "the planned rounds end"),
    ]
    return Plan(
        model=str(config.model.model), population=users, items=items, dp=p.enabled, epsilon_target=p.epsilon if p.enabled else math.inf,
        delta=p.delta, accountant=str(p.accountant), epsilon=eps, epsilon_rdp=eps_rdp, releases=releases,
        source=PREVIEW if data else PUBLIC, verdict=verdict, notes=tuple(notes),
    )


def spike_detectable(eigenvalues: np.ndarray, *, noise_std: float, k: int) -> np.ndarray:
    """Which eigenvalues ``theta`` of the true Gram are expected to stand above
    :func:`fedrec.dpease.fit.noise_edge` once symmetric Gaussian noise of std ``noise_std``
    is added: a spike above ``noise_std sqrt(k)`` moves to ``theta + noise_std^2 k / theta``
    (Féral and Péché 2007, rank-one deformations of Wigner matrices), below it it is lost
    in the semicircle."""
    theta = np.asarray(eigenvalues, dtype=np.float64)
    if noise_std == 0:
        return theta > 0
    bar = noise_std * math.sqrt(k)
    safe = np.where(theta > 0, theta, 1.0)
    return (theta > bar) & (safe + noise_std**2 * k / safe > noise_edge(noise_std, k))


def retained_structure(eigenvalues: np.ndarray, *, noise_std: float, k: int) -> float:
    """The share of the Gram's structure beyond popularity that the noisy release keeps.

    The largest eigenvalue is the popularity direction (every user's items overlap on
    the popular ones) and is left out: popularity is the floor of
    :func:`predicted_ratio`. Of the others (their squared eigenvalues), a spike ``theta``
    above ``noise_std sqrt(k)`` keeps ``theta^2 - noise_std^2 k`` of its ``theta^2`` (its
    noisy eigenvector's squared overlap with the true one is ``1 - noise_std^2 k /
    theta^2``; Féral and Péché 2007, Benaych-Georges and Nadakuditi 2011), one below it
    keeps nothing. 1 without noise; 0 for a Gram without structure."""
    theta = np.sort(np.abs(np.asarray(eigenvalues, dtype=np.float64)))[:-1]
    energy = float(np.sum(theta**2))
    if energy == 0:
        return 0.0
    if noise_std == 0:
        return 1.0
    bar = noise_std**2 * k
    return float(np.sum(np.where(theta**2 > bar, theta**2 - bar, 0.0)) / energy)


def predicted_ratio(eigenvalues: np.ndarray, *, noise_std: float, k: int, floor: float) -> float:
    """Expected quality of the private model as a share of the noiseless one's:
    ``floor + (1 - floor) * retained``, with ``floor`` the share the popularity ranking
    alone reaches (what is left when no structure clears the noise) and ``retained``
    from :func:`retained_structure`."""
    return floor + (1.0 - floor) * retained_structure(eigenvalues, noise_std=noise_std, k=k)


def plan_dp_ease(config: RunConfig, *, users: int, items: int, split: LeaveOneOutSplit | None) -> Plan:
    """The two DP-EASE releases: z from :func:`phase_noise`, K and the Gram's directions
    from the data's own sums (preview) or bounded from N and C (public)."""
    p, e = config.privacy, config.ease
    c = p.clipping_norm
    z1, z2 = phase_noise(config, n_items=items)
    sigma1, sigma2 = z1 * c, z2 * c
    cap = min(e.max_items, items)
    notes: list[str] = []
    counts_norm: float | None = None
    gram_norm: float | None = None
    top_expected: float | None = None
    k_bound: int | None = None
    directions: int | None = None
    retained: float | None = None
    if split is not None:
        counts = population_sums(split, clipping_norm=c, top_items=None)
        counts_norm = float(np.linalg.norm(counts))
        if sigma1 > 0:  # each item's chance that count + N(0, sigma1^2) clears the bar
            top_expected = float(min(norm.cdf((counts - e.item_threshold * sigma1) / sigma1).sum(), cap))
        else:
            top_expected = float(min(int(np.sum(counts > 0)), cap))
        k = round(top_expected)
        top = np.argsort(-counts, kind="stable")[:k].astype(np.int64)
        limited = signal_limited(counts, top, users=users, clipping_norm=c, gram_noise_std=sigma2, ratio=e.signal_ratio)
        if limited.shape[0] < k:
            notes.append(f"the signal limit (ease-signal-ratio {e.signal_ratio:g}) cuts K from {k} to {limited.shape[0]}")
            k, top = int(limited.shape[0]), limited
            top_expected = float(k)
        gram = population_sums(split, clipping_norm=c, top_items=top, pair_decay=e.pair_decay)
        gram_norm = float(np.linalg.norm(gram))
        if k:
            theta = np.linalg.eigvalsh(unpack_symmetric(gram, k))
            directions = int(spike_detectable(theta, noise_std=sigma2, k=k).sum())
            retained = retained_structure(theta, noise_std=sigma2, k=k)
            notes.append(f"the noisy Gram keeps {retained:.0%} of the co-occurrence structure beyond popularity: expected "
                         f"quality ratio to the noiseless model f + (1 - f) x {retained:.2f}, f the share popularity "
                         "reaches (predicted_ratio; docs/dp-ease.md#large-populations)")
        else:
            directions = 0
        notes.append(f"K is the expected number of items whose noisy count clears {e.item_threshold:g} noise std "
                     f"(the data's own counts); the Gram row is planned over the top {k} items by exact count")
    else:
        k = cap
        # a user's symmetric co-occurrence matrix has spectral norm <= sqrt(2) C, so the Gram's <= sqrt(2) N C
        best = np.array([math.sqrt(2) * users * c])
        sizes = np.arange(1, cap + 1)
        ok = np.array([bool(spike_detectable(best, noise_std=sigma2, k=int(size))[0]) for size in sizes])
        k_bound = int(sizes[ok][-1]) if ok.any() else 0
        notes.append(f"without the data K is unknown: the Gram row is planned at its cap K = {cap} "
                     "(ease-max-items or the catalogue); its signal is bounded by N C")
    releases = (
        PlannedRelease(name="item counts", noise_multiplier=z1, sample_rate=1.0, steps=1, values=items,
                       contributors=float(users), clipping_norm=c, signal_norm=counts_norm),
        PlannedRelease(name=f"co-occurrence over K = {k} (upper triangle)", noise_multiplier=z2, sample_rate=1.0, steps=1,
                       values=packed_size(k), contributors=float(users), clipping_norm=c, signal_norm=gram_norm),
    )
    eps, eps_rdp = _epsilons(config, releases)
    if not p.enabled:
        verdict = "no DP: exact counts and co-occurrence, EASE weights"
    elif split is not None and directions:
        verdict = (f"co-occurrence above noise: EASE weights expected ({directions} direction(s) of the Gram above "
                   f"the noise edge at K = {k})")
    elif split is not None:
        verdict = "below the noise edge: the release falls back to the DP popularity prior"
    elif k_bound == 0:
        verdict = "below the noise edge at any K: the release falls back to the DP popularity prior"
    else:
        verdict = (f"the co-occurrence can clear the noise edge only over at most K = {k_bound} items (a bound from N and "
                   "C); plan with the data for the expected regime")
    notes += _budget_notes(config, eps, "the co-occurrence release (it publishes the popularity prior alone)")
    return Plan(
        model=str(config.model.model), population=users, items=items, dp=p.enabled, epsilon_target=p.epsilon if p.enabled else math.inf,
        delta=p.delta, accountant=str(p.accountant), epsilon=eps, epsilon_rdp=eps_rdp, releases=releases,
        source=PREVIEW if split is not None else PUBLIC, verdict=verdict, notes=tuple(notes),
        top_items=top_expected, top_items_bound=k_bound, signal_directions=directions, retained_structure=retained,
    )
