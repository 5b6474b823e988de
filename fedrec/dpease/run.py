"""One DP-EASE run, written against a small transport contract (like the DP-FedAvg loop
in :mod:`fedrec.federation.rounds`): every device is asked (q = 1), each reply is clipped to C
again by the server, the sum is noised, recorded in the ledger, and only then used.

Phase 1 releases item counts; the noisy counts choose the top items (post-processing).
Phase 2 releases the co-occurrence over them. The run stops before a release that would
exceed the budget: without phase 2 it releases the popularity prior alone.

On real devices with DP on (a transport whose ``private_evaluation`` is true) the
devices' validation and test metrics are two more releases, through the Gaussian sum
of :mod:`fedrec.privacy.eval_release` as in DP-FedAvg runs; simulations evaluate
exactly and their ledger says so.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.split import ClientData, LeaveOneOutSplit
from fedrec.dpease.fit import EaseRelease, catalogue_content, fit_release, release_top_items
from fedrec.dpease.statistics import COUNTS, GRAM, count_statistic, gram_statistic, packed_size, unpack_symmetric
from fedrec.errors import FedrecError, PrivacyError
from fedrec.evaluation.metrics import METRIC_NAMES, mean_metrics
from fedrec.evaluation.scoring import metrics_from_scores
from fedrec.models import Arrays
from fedrec.privacy.accountant import Accountant, History, calibrate_releases, epsilon
from fedrec.privacy.device_odometers import announce_job, dp_ease_releases
from fedrec.privacy.dp_fedavg import Part
from fedrec.privacy.eval_release import NOT_PRIVATE, PRIVATE, evaluation_generator, release_metrics, sensitivity
from fedrec.privacy.noise import noise_generator
from fedrec.privacy.release import noisy_sum
from fedrec.privacy.session import PrivacySession, open_session

if TYPE_CHECKING:
    from fedrec.deploy.catalog import Catalog

logger = logging.getLogger(__name__)

PHASES = ("counts", "gram")
MECHANISMS = {"counts": "gaussian-sum/item-counts", "gram": "gaussian-sum/item-cooccurrence-upper"}
PURPOSES = {
    "counts": "DP-EASE phase 1: item counts (top items and popularity prior)",
    "gram": "DP-EASE phase 2: co-occurrence over the top items (EASE weights)",
}
TOP_ITEMS_REQUEST, PAIR_DECAY_REQUEST = "top_items", "pair_decay"
STATISTIC_NAMES = {"counts": COUNTS, "gram": GRAM}  # the array each phase's reply carries
REQUEST_NAMES = {"counts": (), "gram": (TOP_ITEMS_REQUEST, PAIR_DECAY_REQUEST)}  # the arrays each phase's request carries
EVALUATIONS = ("val", "test")  # after the fit, each a release of its own when evaluation is private


class StatisticsTransport(Protocol):
    """How the server reaches the devices for DP-EASE."""

    n_items: int  # the catalogue size (public)

    def clients(self) -> list[int]: ...

    def statistics(self, clients: Sequence[int], phase: str, request: Arrays) -> Iterable[Arrays | Part | None]:
        """Each client's phase statistic (None where a client failed), or secure sums of
        several (a :class:`~fedrec.privacy.dp_fedavg.Part` with its contributors), read once."""
        ...

    def evaluate(self, clients: Sequence[int], release: Arrays, which: str) -> list[dict[str, float]]: ...


def device_statistic(data: ClientData, *, phase: str, request: Arrays, clipping_norm: float) -> Arrays:
    """What one device uploads in ``phase``, from its own training items only."""
    if phase == "counts":
        return count_statistic(data.train_items, n_items=data.n_items, clipping_norm=clipping_norm)
    if phase == "gram":
        return gram_statistic(
            data.train_items, top_items=request[TOP_ITEMS_REQUEST], clipping_norm=clipping_norm,
            pair_decay=float(np.asarray(request.get(PAIR_DECAY_REQUEST, 1.0)).reshape(-1)[0]),  # absent: plain co-occurrence
        )
    raise FedrecError(f"unknown DP-EASE phase {phase!r}; use one of {', '.join(PHASES)}")


def device_evaluate(data: ClientData, *, release: Arrays, which: str, release_type: type = EaseRelease) -> dict[str, float]:
    """One device's metrics with the released model (read as ``release_type``), scored on the device."""
    scores = release_type.from_arrays(release).score_items(data.train_items)[None, :]
    return mean_metrics(metrics_from_scores(scores, [data], which))


class InProcessStatistics:
    """Calls each simulated device's functions directly (statistics are yielded one at a
    time, so the server never holds every device's upload at once)."""

    def __init__(self, split: LeaveOneOutSplit, *, clipping_norm: float, release_type: type = EaseRelease) -> None:
        self.split, self.clipping_norm, self.n_items = split, clipping_norm, split.n_items
        self.release_type = release_type  # what each device scores with (a family may post-process the release)

    def clients(self) -> list[int]:
        return list(range(self.split.n_users))

    def statistics(self, clients: Sequence[int], phase: str, request: Arrays) -> Iterable[Arrays | None]:
        for c in clients:
            yield device_statistic(self.split.client(c), phase=phase, request=request, clipping_norm=self.clipping_norm)

    def evaluate(self, clients: Sequence[int], release: Arrays, which: str) -> list[dict[str, float]]:
        # the same per-device arithmetic, a chunk of devices at a time
        model = self.release_type.from_arrays(release)
        out: list[dict[str, float]] = []
        for start in range(0, len(clients), 256):
            chunk = [self.split.client(c) for c in clients[start : start + 256]]
            history = np.stack([model.history(data.train_items) for data in chunk])  # (chunk, n_items)
            per_user = metrics_from_scores(model.score(history), chunk, which)
            out += [{name: float(values[k]) for name, values in per_user.items()} for k in range(len(chunk))]
        return out


@dataclass
class EaseHistory:
    phases: list[dict[str, float]] = field(default_factory=list)
    rejected: int = 0
    stopped_by_budget: bool = False
    noise_multipliers: tuple[float, ...] = ()
    top_items: int = 0
    privacy: dict[str, object] = field(default_factory=dict)
    test_per_client: list[dict[str, float]] = field(default_factory=list)  # exact (simulated) evaluation only
    evaluated: list[int] = field(default_factory=list)  # the clients test_per_client belongs to, in that order
    arrays: Arrays = field(default_factory=dict)  # what the devices scored with (the release, or what derive made of it)


def time_order_settings(config: RunConfig, *, time_ordered: bool) -> RunConfig:
    """``config`` for devices whose histories are in time order, else with
    ``ease-pair-decay`` and ``ease-score-decay`` set to 1: without a time order (a file with
    no time column, split at random) a history's order is arbitrary, and weighting
    pairs and items by their distance in it only adds noise."""
    if time_ordered or (config.ease.pair_decay == 1.0 and config.ease.score_decay == 1.0):
        return config
    return replace(config, ease=replace(config.ease, pair_decay=1.0, score_decay=1.0))


def count_share(config: RunConfig, n_items: int | None) -> float:
    """Phase 1's part of the budget for a catalogue of ``n_items`` (public: every device
    knows the catalogue): ``ease-count-share`` plus ``ease-count-share-tail`` times
    ``max(0, 1 - 2 max_items / n_items)``, at most 0.9. Past the co-occurrence cap the
    released counts alone rank most of the catalogue, so they get more of the budget;
    a catalogue within twice the cap keeps ``ease-count-share``. None: the base share."""
    e = config.ease
    if n_items is None or n_items <= 0:
        return e.count_share
    beyond = max(0.0, 1.0 - 2.0 * e.max_items / n_items)
    return e.count_share + min(e.count_share_tail * beyond, max(0.0, 0.9 - e.count_share))


def phase_noise(config: RunConfig, *, evaluations: int = 0, n_items: int | None = None) -> tuple[float, float]:
    """(z_counts, z_gram): given, or calibrated so that the two releases, followed by
    ``evaluations`` metric releases at ``eval-noise-multiplier`` (private evaluation on
    real devices), spend the budget: the history calibrated is the ledger's, in its order.
    The budget is split by :func:`count_share` for a catalogue of ``n_items``."""
    p = config.privacy
    if not p.enabled:
        return 0.0, 0.0
    fixed = p.fixed_noise
    if fixed is not None:  # > 0: the config refuses 0 for DP-EASE
        return fixed, fixed
    after: History = ((p.eval_noise_multiplier, 1.0, evaluations),) if evaluations else ()
    if after and epsilon(after, delta=p.delta, accountant=p.accountant) >= p.epsilon:
        raise PrivacyError(
            f"{evaluations} evaluation releases at eval-noise-multiplier {p.eval_noise_multiplier} alone spend epsilon "
            f">= {p.epsilon:.3g}: raise eval-noise-multiplier or epsilon"
        )
    share = count_share(config, n_items)
    z1, z2 = calibrate_releases(
        target_epsilon=p.epsilon, delta=p.delta, shares=(share, 1 - share), accountant=p.accountant,
        after=after,
    )
    return z1, z2


def _noisy_sum(
    replies: Iterable[Arrays | Part | None], *, name: str, size: int, clipping_norm: float, std: float,
    rng: np.random.Generator | None, history: EaseHistory,
) -> tuple[np.ndarray, int]:
    """:func:`fedrec.privacy.release.noisy_sum`, its rejected replies counted in ``history``."""
    summed = noisy_sum(replies, name=name, size=size, clipping_norm=clipping_norm, std=std, rng=rng)
    history.rejected += summed.rejected
    return summed.total, summed.contributors


def run_dp_ease(
    config: RunConfig, transport: StatisticsTransport, *, run_dir: Path, catalog: Catalog | None,
    on_phase: Callable[[int, dict[str, float]], None] | None = None,
    derive: Callable[[EaseRelease, np.ndarray | None, float], Arrays] | None = None,
) -> tuple[EaseRelease, EaseHistory, dict[str, float], dict[str, float]]:
    """Both releases, the fit, and the devices' validation and test metrics.

    ``derive`` (post-processing, no privacy cost) turns the fitted release, the noisy
    Gram over its top items (unpacked; None without the second release) and the Gram
    noise's std into the arrays the devices score with (``history.arrays``, evaluated
    through ``transport``); without it they are the DP-EASE release.

    ``catalog`` is the public item catalogue, all the server reads of the data set: the
    content target of the fit comes from it (:func:`fedrec.dpease.fit.catalogue_content`;
    None is a server without one, fine where ``ease-content-weight`` is 0).

    With private evaluation each metric set is a ledger release checked against the
    budget before the devices are asked; one that would exceed it is not asked for, the
    run stops there (``stopped_by_budget``) and its metrics are NaN.

    Returns (release, history, validation metrics, test metrics).
    """
    content = catalogue_content(catalog, config)  # before any device is asked: a missing catalogue costs nothing
    clients = transport.clients()
    # real devices' metrics leave only through a DP release; simulations evaluate exactly
    private_eval = config.privacy.enabled and bool(getattr(transport, "private_evaluation", False))
    z_counts, z_gram = phase_noise(
        config, evaluations=len(EVALUATIONS) if private_eval else 0, n_items=int(transport.n_items),
    )
    history = EaseHistory(noise_multipliers=(z_counts, z_gram))
    session, rng = _open_session(config, run_dir, population=len(clients), z_gram=z_gram, private_eval=private_eval)
    clients, refused = announce_job(session, transport, clients, dp_ease_releases(
        z_counts=z_counts, z_gram=z_gram, clipping_norm=config.privacy.clipping_norm,
        evaluations=len(EVALUATIONS) if private_eval else 0, eval_noise_multiplier=config.privacy.eval_noise_multiplier,
        eval_sensitivity=sensitivity(len(METRIC_NAMES))))
    sums = _release_statistics(config, transport, clients, session=session, rng=rng, history=history, on_phase=on_phase)
    release = _fit(config, sums, z_counts=z_counts, z_gram=z_gram, content=content)
    history.top_items = int(release.top_items.shape[0])
    arrays = release.to_arrays()
    if derive is not None:
        noisy = None if sums.gram is None else unpack_symmetric(sums.gram, int(sums.top.shape[0]))
        arrays = derive(release, noisy, z_gram * config.privacy.clipping_norm)
    history.arrays = arrays
    metrics = _released_metrics(config, transport, clients, arrays, session=session, history=history) if private_eval else {}
    history.privacy = _privacy_summary(config, session, z_counts=z_counts, z_gram=z_gram, stopped=history.stopped_by_budget)
    if session is not None:
        history.privacy["devices_refused"] = refused  # refused the job's plan (their own budgets): dropouts
    if not private_eval:
        history.evaluated = evaluation_clients(config, clients)
        rows = {which: transport.evaluate(history.evaluated, arrays, which) for which in EVALUATIONS}
        metrics = {which: _mean(per_client) for which, per_client in rows.items()}
        history.test_per_client = rows["test"]
    unreleased = {name: math.nan for name in METRIC_NAMES}
    return release, history, metrics.get("val", unreleased), metrics.get("test", unreleased)


def evaluation_clients(config: RunConfig, clients: list[int]) -> list[int]:
    """The clients a simulation evaluates exactly: all, or ``eval-users`` of them drawn
    from the run's seed as a DP-FedAvg run draws them (in client order)."""
    if 0 < config.federation.eval_users < len(clients):
        chosen = np.sort(np.random.default_rng([config.seed, 5]).choice(len(clients), size=config.federation.eval_users, replace=False))
        return [clients[i] for i in chosen]
    return list(clients)


@dataclass
class _Sums:
    """The noisy sums released so far and the top items chosen from the counts."""

    counts: np.ndarray | None = None
    gram: np.ndarray | None = None
    top: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def _open_session(
    config: RunConfig, run_dir: Path, *, population: int, z_gram: float, private_eval: bool,
) -> tuple[PrivacySession | None, np.random.Generator | None]:
    """The run's ledger session and noise generator (both None without DP)."""
    p = config.privacy
    if not p.enabled:
        return None, None
    session = open_session(
        config, run_dir, population=population, sample_rate=1.0, noise_multiplier=z_gram,
        evaluation=PRIVATE if private_eval else NOT_PRIVATE,
    )
    return session, noise_generator(seed=config.seed, secure=p.secure_noise)


def _release_statistics(
    config: RunConfig, transport: StatisticsTransport, clients: Sequence[int], *, session: PrivacySession | None,
    rng: np.random.Generator | None, history: EaseHistory, on_phase: Callable[[int, dict[str, float]], None] | None,
) -> _Sums:
    """Phase 1 (counts, which choose the top items), then phase 2 (co-occurrence over
    them), each recorded in the ledger before it is used; stops before a release the
    budget does not allow. Without even the counts there is nothing to fit: an error."""
    p, e = config.privacy, config.ease
    sums = _Sums()
    for number, (phase, z) in enumerate(zip(PHASES, history.noise_multipliers), start=1):
        if session is not None and not session.allows_release(noise_multiplier=z, sample_rate=1.0):
            history.stopped_by_budget = True
            break
        started = time.perf_counter()
        request: Arrays = {} if phase == "counts" else {TOP_ITEMS_REQUEST: sums.top, PAIR_DECAY_REQUEST: np.array([e.pair_decay])}
        size = transport.n_items if phase == "counts" else packed_size(int(sums.top.shape[0]))
        total, good = _noisy_sum(
            transport.statistics(clients, phase, request), name=STATISTIC_NAMES[phase], size=size,
            clipping_norm=p.clipping_norm, std=z * p.clipping_norm, rng=rng, history=history,
        )
        if session is not None:  # on disk before the release is used
            session.record_release(
                mechanism=MECHANISMS[phase], purpose=PURPOSES[phase], noise_multiplier=z, sample_rate=1.0,
                clipping_norm=p.clipping_norm, clients=good,
            )
        if phase == "counts":
            sums.counts = total
            sums.top = release_top_items(total, config, users=len(clients), z_counts=z, z_gram=history.noise_multipliers[1])
        else:
            sums.gram = total
        info = {"round": float(number), "aggregated": float(good), "values": float(size), "seconds": time.perf_counter() - started}
        if session is not None:
            info["epsilon"] = session.spent
        history.phases.append(info)
        if on_phase is not None:
            on_phase(number, info)
    if sums.counts is None:
        if session is not None:
            session.close(stopped_by_budget=True)
        raise FedrecError(
            f"the budget epsilon {p.epsilon} does not allow even the item counts at z={history.noise_multipliers[0]}: "
            "raise epsilon or lower noise-multiplier"
        )
    return sums


def _fit(config: RunConfig, sums: _Sums, *, z_counts: float, z_gram: float, content: np.ndarray | None) -> EaseRelease:
    """The released model from the noisy sums (post-processing)."""
    p, e = config.privacy, config.ease
    assert sums.counts is not None  # _release_statistics raises otherwise
    return fit_release(
        counts=sums.counts, top_items=sums.top, gram_packed=sums.gram, count_noise_std=z_counts * p.clipping_norm,
        gram_noise_std=z_gram * p.clipping_norm, noise_scale=e.lambda_noise, base_scale=e.lambda_base,
        eigen_floor=e.eigen_floor, prior_weight=e.prior_weight,
        content=content, content_weight=e.content_weight, score_decay=e.score_decay,
        top_first=e.top_first,
    )


def _released_metrics(
    config: RunConfig, transport: StatisticsTransport, clients: Sequence[int], arrays: Arrays, *,
    session: PrivacySession | None, history: EaseHistory,
) -> dict[str, dict[str, float]]:
    """Real devices' validation and test metrics, each a DP release in the ledger; stops
    before one the budget does not allow."""
    p = config.privacy
    metrics: dict[str, dict[str, float]] = {}
    if session is None:
        return metrics
    eval_rng = evaluation_generator(seed=config.seed, secure=p.secure_noise, resumes=0)
    for which in EVALUATIONS:
        released = release_metrics(
            session, partial(transport.evaluate, clients, arrays, which), names=METRIC_NAMES,
            purpose=f"evaluation: {which} metrics of the DP-EASE release", noise_multiplier=p.eval_noise_multiplier,
            expected_users=len(clients), rng=eval_rng,
        )
        if released is None:  # it would exceed the budget: nothing asked, nothing released
            history.stopped_by_budget = True
            break
        metrics[which] = released
    return metrics


def _privacy_summary(
    config: RunConfig, session: PrivacySession | None, *, z_counts: float, z_gram: float, stopped: bool,
) -> dict[str, object]:
    """Close the ledger (with DP) and say what the run spent."""
    p = config.privacy
    if session is None:
        return {
            "epsilon": float("inf"), "delta": None, "accountant": None, "noise_multiplier": 0.0,
            "noise_multipliers": [0.0, 0.0], "clipping_norm": None, "budget": None, "stopped_by_budget": False,
        }
    session.close(stopped_by_budget=stopped)
    return {
        "epsilon": session.spent, "epsilon_rdp": session.epsilon_with(Accountant.RDP), "delta": p.delta,
        "accountant": p.accountant, "noise_multiplier": z_gram, "noise_multipliers": [z_counts, z_gram],
        "clipping_norm": p.clipping_norm, "budget": p.epsilon, "stopped_by_budget": stopped, "ledger_head": session.head,
    }


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {name: float("nan") for name in METRIC_NAMES}
    return {name: float(np.mean([r[name] for r in rows])) for name in METRIC_NAMES}
